"""Deliberately broken steps for the isolation tests: they pass files through paths nobody declared."""

import argparse
import os
from pathlib import Path

from tlpipe.errors import PipelineError


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--params")
    p.add_argument("--mode", choices=("read", "write", "cwd"), default="read")
    p.add_argument("--path", default="")
    p.add_argument("--scratch", default="")
    args = p.parse_args(argv)
    path = Path(os.path.expanduser(args.path.replace("SCRATCH", args.scratch)))
    if args.mode == "write":  # leave a file for a later task, outside any declared output
        path.mkdir(parents=True, exist_ok=True)
        (path / "secret.txt").write_text("upstream output")
        print(f"wrote {path / 'secret.txt'} as UID {os.getuid()}")
        return
    if args.mode == "cwd":  # a step that writes into its working directory (the image's /app)
        try:
            Path("written-into-cwd.txt").write_text("x")
        except OSError as exc:
            raise PipelineError(
                f"cannot write into the working directory {os.getcwd()} as UID {os.getuid()} ({exc.strerror})"
            ) from None
        print(f"wrote into the working directory as UID {os.getuid()}")
        return
    found = list(path.rglob("secret.txt")) if path.is_dir() else []
    if not found:
        raise PipelineError(f"undeclared path {args.path}: not reachable from this task")
    print(f"read {found[0].read_text()} through an undeclared path")


if __name__ == "__main__":
    from tlpipe.cli import run_main

    run_main(main)
