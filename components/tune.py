"""tune: an Optuna study over the freeze ratio and learning rate (optionally dropout and head width).

The freeze ratio is searched over the backbone's real block boundaries. Many workers (processes here, pods
on a cluster) share one study in PostgreSQL; heartbeats turn a killed worker's trial into a failed one that
is retried. Trials prune on the per-epoch validation metric and train on activations cached at their freeze
boundary (tlpipe/tuning/). The best trial's params go to best_params.json, which `fine_tune` reads.

Subcommands: `create-study` (once, before workers), `worker` (take trials until tune.n_trials in total),
`summarize` (best params + plots), and `run` (all three in one process; the dvc stage).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import TRANSFERABILITY_CSV, BestParams
from tlpipe.errors import PipelineError
from tlpipe.fs import atomic_dir, scratch_default

PARAMS = (
    "tune",
    "model.weights",
    "model.image_size",
    "model.head_units",
    "model.dropout",
    "fine_tune.batch_size",
    "fine_tune.min_steps_per_epoch",
    "seed",
    "deterministic",
    "storage.endpoint_url",
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("tune", __doc__)
    p.add_argument("command", choices=("create-study", "worker", "summarize", "run"))
    p.add_argument("--subset", required=True, help="make_subset's folder")
    p.add_argument("--augmented", required=True, help="augment's folder (pre-augmented training copies)")
    p.add_argument("--head", required=True, help="train_head's folder (warm start)")
    p.add_argument(
        "--backbone", required=True, help="pretrain_backbone's folder, a .keras file/URI or an application name"
    )
    p.add_argument("--tuning", help="folder for best_params.json, trials.csv and plots (summarize, run)")
    p.add_argument("--cache-dir", default=scratch_default("tune_cache"), help="activation cache (worker, run)")
    p.add_argument("--storage", help="override tune.storage (credentials come from PGUSER/PGPASSWORD)")
    p.add_argument("--worker-index", type=int, default=0, help="seeds this worker's sampler")
    args = p.parse_args(argv)
    if args.command in ("summarize", "run") and not args.tuning:
        raise PipelineError(f"tune {args.command} needs --tuning FOLDER")
    return args


def _context(params, args: argparse.Namespace):
    from tlpipe.tuning.context import StudyContext

    return StudyContext(
        params,
        subset=args.subset,
        augmented=args.augmented,
        head=args.head,
        backbone=args.backbone,
        cache_dir=args.cache_dir,
        storage=args.storage,
        worker_index=args.worker_index,
    )


def _work(ctx, args: argparse.Namespace) -> bool:
    from tlpipe.tuning.study import counts, warm_start

    study = ctx.study()
    worker = ctx.worker()
    queued = warm_start(study, ctx.cfg, worker.points, worker.regimes, args.storage)
    if queued:
        print(f"tune: warm start: the first {len(queued)} trials are the previous study's best points")
    ran, timed_out = worker.work(study)
    print(
        f"tune: worker {args.worker_index} ran {ran} trials; study {study.study_name}: {counts(study)}"
        + (f"; stopped by tune.timeout={ctx.cfg.timeout}s" if timed_out else "")
    )
    return timed_out


def _sweep_wanted(worker, study, cfg) -> bool:
    """Print the sweep's estimated cost before it runs; under tune.sweep: auto, run it only if <= the study's."""
    from tlpipe.tuning.budget import sweep_estimate, sweep_runs
    from tlpipe.tuning.sweep import trainings

    estimate = sweep_estimate(study, trainings(worker, cfg))
    runs = sweep_runs(cfg.sweep, estimate)
    print(
        f"tune: transferability sweep: {estimate['trainings']} trainings, about {estimate['seconds']:.0f} s "
        f"(the study took {estimate['study_seconds']:.0f} s)"
        + (
            ""
            if runs
            else "; skipped (tune.sweep: auto runs it only when it costs no more than the study; "
            "set tune.sweep: true to run it)"
        ),
        flush=True,
    )
    return runs


def _summarize(ctx, tuning: str, timed_out: bool) -> BestParams:
    import mlflow

    from tlpipe.tuning.study import finished
    from tlpipe.tuning.worker import summarize

    study = ctx.study()
    stopped_by = "timeout" if timed_out or finished(study) < ctx.cfg.n_trials else "n_trials"
    with atomic_dir(tuning) as staged:
        summary = summarize(study, ctx.cfg, staged, stopped_by, ctx.regimes)
        worker = ctx.worker() if ctx.cfg.sweep else None
        if worker is not None and _sweep_wanted(worker, study, ctx.cfg):
            from tlpipe.tuning.sweep import sweep

            cost = sweep(worker, study, ctx.cfg, staged)
            mlflow.log_metrics({"sweep_seconds": cost["seconds"], "sweep_trainings": cost["trainings"]})
            mlflow.log_artifact(str(staged / TRANSFERABILITY_CSV))
        mlflow.log_dict(summary.model_dump(mode="json"), BestParams.FILE)
        for png in sorted(staged.glob("*.png")):
            mlflow.log_artifact(str(png))
    assert summary.params is not None and summary.value is not None  # a study's summary always has both
    mlflow.log_metric(f"best_{summary.metric}", summary.value)
    mlflow.log_params({f"best.{k}": v for k, v in summary.params.model_dump().items()})
    print(
        f"tune: best {summary.metric} {summary.value:.4f} (trial {summary.trial}): "
        f"{summary.params.model_dump()} -> {tuning}"
    )
    if stopped_by == "timeout":
        print(f"tune: the study was cut short by tune.timeout ({finished(study)} of {ctx.cfg.n_trials} trials)")
    return summary


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.tune {create-study,worker,summarize,run} --subset ... --backbone ...`."""
    args = _args(argv)
    params = step_params(args, "tune", PARAMS)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.command == "run":
        Path(args.cache_dir).mkdir(parents=True, exist_ok=True)  # DVC's persistent output, even when unused
    if args.command == "run" and not params.tune.enabled:
        from tlpipe.tuning.plots import plot_disabled

        with atomic_dir(args.tuning) as staged:
            BestParams(source="params", stopped_by="disabled").write(staged)
            plot_disabled(staged)  # the plots the graph declares exist either way
        print(f"tune: disabled (tune.enabled: false); fine_tune uses its own params -> {args.tuning}")
        return
    from tlpipe.tracking.runs import prepare, step_run

    if args.command == "create-study":
        prepare(params)  # the tracking store and pipeline run exist before the workers race to make them
        ctx = _context(params, args)
        print(f"tune: study {ctx.study_name} ready ({len(ctx.study().trials)} trials so far)")
        return
    ctx = _context(params, args)
    with step_run(params, "tune", {"subset": args.subset, "head": args.head}):
        import mlflow

        mlflow.set_tag("optuna.study", ctx.study_name)
        timed_out = _work(ctx, args) if args.command in ("worker", "run") else False
        if args.command in ("summarize", "run"):
            _summarize(ctx, args.tuning, timed_out)


if __name__ == "__main__":
    run_main(main)
