"""tlpipe: the library the pipeline steps share (never imports a step)."""

import os

# TensorFlow reads its C++ log level once, when it is first imported. Every step imports tlpipe before it
# imports TensorFlow, so its INFO and WARNING lines are off in every runner (make, DVC, a KFP pod) unless the
# caller chose a level. Errors still show, and a failure still raises a Python exception.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
