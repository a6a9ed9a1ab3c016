"""A deliberately broken step for test_pipeline: it reads whatever path it is handed, declared or not."""

import argparse
from pathlib import Path

from tlpipe.errors import PipelineError


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--params")
    p.add_argument("--path")
    args = p.parse_args(argv)
    found = list(Path(args.path).rglob("secret.txt"))
    if not found:
        raise PipelineError(f"undeclared path {args.path}: not reachable from this task")
    print(f"read {found[0].read_text()} through an undeclared path")


if __name__ == "__main__":
    from tlpipe.cli import run_main

    run_main(main)
