"""Run steps of the declared pipeline in this process, in a project folder: what tests and benchmarks use.

The same arguments as the dvc stages (pipelines/graph.py `argv`), so a test's tiny project is built by the
real steps through the one declaration, not by a copy of the wiring.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from pipelines.graph import argv, build
from tlpipe.config import load_params


def run_steps(root: Path, names: list[str] | None = None, params_file: Path | None = None) -> list[str]:
    """Run the named steps (default: all) in order, in `root` with `root/params.yaml`; returns what ran."""
    from tlpipe.cli import run_main

    params_file = params_file or root / "params.yaml"
    steps = build(load_params(params_file))
    ran = []
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for step in steps:
            if names is None or step.name in names:
                module = importlib.import_module(f"components.{step.name}")
                run_main(
                    module.main,
                    [
                        *argv(step, steps)[: 1 if step.command else 0],
                        "--params",
                        str(params_file),
                        *argv(step, steps)[1 if step.command else 0 :],
                    ],
                )
                ran.append(step.name)
    finally:
        os.chdir(cwd)
    return ran
