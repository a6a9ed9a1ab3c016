"""summary: the lines a pipeline run ends on, and the command to run next (`make run`'s last command).

    python -m operators.summary [--params params.yaml]

Reads what the last run wrote: register's registration, evaluate's metrics and fine_tune's run (their
folders come from the pipeline declaration, pipelines/graph.py), and prints the test accuracy with its CI,
the baselines, the chosen regime, the registry version and alias, then `make review` / `make promote`.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.graph import build, path_of
from pipelines.step import Ref
from tlpipe.cli import params_from, parser, run_main
from tlpipe.contracts import Registration, TrainedModel
from tlpipe.reports.summary import read_evaluation, run_summary


def summary_lines(params, root: Path = Path()) -> list[str]:
    """The run summary of the outputs under `root`, found where the pipeline declaration puts them."""
    steps = build(params)

    def folder(step: str, output: str) -> Path:
        return root / path_of(steps, Ref(step, output))

    return run_summary(
        Registration.read(folder("register", "registration")),
        read_evaluation(folder("evaluate", "evaluation")),
        TrainedModel.read(folder("fine_tune", "model")),
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m operators.summary [--params params.yaml]`."""
    args = parser("summary", __doc__, package="operators").parse_args(argv)
    print("\n".join(summary_lines(params_from(args))))


if __name__ == "__main__":
    run_main(main)
