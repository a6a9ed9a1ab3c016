"""Operator commands (not pipeline steps): registry status/promote/rollback/predict, the promotion review."""
