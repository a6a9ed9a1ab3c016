"""tlpipe steps: one module per pipeline step (PARAMS, a pure core, `python -m components.<step>`)."""

import tlpipe  # noqa: F401 - first: it silences TensorFlow's start-up lines before any module here imports TF
