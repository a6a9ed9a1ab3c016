"""study: the Optuna study `tune` stored, by its real name, and how to open it.

    python -m operators.study [--tuning reports/tune] [--storage URL]      (make study)

The stored name is `tune.study_name` plus a fingerprint of the data, backbone and search space (a new
dataset is a new study), so `optuna.load_study(study_name="tlpipe-digits")` finds nothing; this prints the
name tune used (from best_params.json), its trials, and the two ways in: `optuna.load_study` and
optuna-dashboard.
"""

from __future__ import annotations

from pathlib import Path

from tlpipe.cli import params_from, parser, run_main
from tlpipe.errors import PipelineError


def describe(study_name: str, storage_url: str, cfg) -> list[str]:
    """Lines naming the stored study, its trials and best value, and the commands that open it."""
    import optuna

    from tlpipe.redact import redact
    from tlpipe.tuning.study import counts, make_storage

    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(cfg, storage_url))
    except KeyError:
        raise PipelineError(
            f"study {study_name!r} is not in {redact(storage_url)}; run `make run` (tune) first, "
            "or pass --storage with the URL tune used"
        ) from None
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts(study).items())) or "no trials"
    try:
        best = (
            f"; best {study.metric_names[0] if study.metric_names else 'value'} {study.best_value:.4f} "
            f"(trial {study.best_trial.number}: {study.best_trial.params})"
        )
    except ValueError:  # no complete trial
        best = ""
    shown = redact(storage_url)
    return [
        f"study: {study_name} in {shown} ({states}{best})",
        f'  python: optuna.load_study(study_name="{study_name}", storage="{shown}")',
        f"  browser: optuna-dashboard {shown}   (pip install optuna-dashboard; then open http://127.0.0.1:8080)",
    ]


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m operators.study [--tuning reports/tune] [--storage URL]`."""
    from tlpipe.contracts import BestParams

    p = parser("study", __doc__, package="operators")
    p.add_argument("--tuning", type=Path, default=Path("reports/tune"), help="tune's folder (best_params.json)")
    p.add_argument("--storage", default=None, help="the study storage tune used (default: tune.storage)")
    args = p.parse_args(argv)
    params = params_from(args)
    best = BestParams.read(args.tuning)
    if not best.study_name:
        raise PipelineError(f"{args.tuning / BestParams.FILE}: tuning was off (tune.enabled: false); no study")
    print("\n".join(describe(best.study_name, args.storage or params.tune.storage, params.tune)))


if __name__ == "__main__":
    run_main(main)
