"""Operator commands (not pipeline steps): registry status/promote/rollback/predict, the review, the run summary."""

import tlpipe  # noqa: F401 - first: it silences TensorFlow's start-up lines before any module here imports TF
