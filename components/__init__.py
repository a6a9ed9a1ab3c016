"""tlpipe steps: each module is one pipeline step (pure core + `python -m components.<step>` CLI)."""
