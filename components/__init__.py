"""tlpipe steps: one module per pipeline step (PARAMS, a pure core, `python -m components.<step>`)."""
