"""Tracking: MLflow step runs and lineage, the model registry."""
