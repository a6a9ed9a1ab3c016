"""tlpipe runners: the pipeline declared once, dvc.yaml and the Kubeflow pipeline built from it."""

import tlpipe  # noqa: F401 - first: it silences TensorFlow's start-up lines before any module here imports TF
