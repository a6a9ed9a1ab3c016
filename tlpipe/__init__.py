"""tlpipe: the library the pipeline steps share (never imports a step)."""

from tlpipe.console import quiet_tensorflow

# Before anything imports TensorFlow: every step, operator and pipeline entry point imports tlpipe first (the
# `components`, `operators` and `pipelines` packages do it in their __init__), so the TF/absl/oneDNN start-up
# lines are off in every runner (make, DVC, a KFP pod) unless the caller set the log level.
quiet_tensorflow()
