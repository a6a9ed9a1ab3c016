"""tlpipe: the library the pipeline steps share (never imports a step)."""
