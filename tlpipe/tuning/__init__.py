"""Tuning: the Optuna study, cached-activation trials, workers, the transferability sweep."""
