"""review: one self-contained HTML report (and a Markdown summary) for a promotion review.

    python -m operators.review [--version N | --version @challenger] --out reports/review

For the given version (default `@challenger`) against whoever holds `@champion` when the review runs (resolved
now, not at registration; `tlpipe.reports.champion`), on the same test images: the gate re-run and the
paired comparison in plain words (images fixed and broken, McNemar's p, the gain's 95% CI, the smallest
difference this test set can detect), metrics with deltas and the frozen-features baseline, per-class
scores, both confusion matrices, the test images the challenger gets wrong, training curves, the tuning
summary, lineage (data source, backbone, code), the champion's own history, and the params that differ.
Everything comes from the registry and the runs `register` logged, so it works from any machine that can
reach the tracking server. The report is logged back to the register run and tagged on the version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tlpipe.cli import params_from, parser, run_main
from tlpipe.contracts import REVIEW_PAGE
from tlpipe.fs import atomic_dir


def gate_now(client, params, version, work: Path, subset: Path | None) -> dict:
    """The registry gate re-run against the current `@champion` on the same test images.

    Returns:
        tlpipe.reports.champion.versus_current's result with "status" and "reasons" of the gate
        (components.register's rule, the one the pipeline applies at registration).
    """
    import logging

    from tlpipe.reports.champion import versus_current
    from tlpipe.reports.gate import gate

    # MLflow logs an INFO line per validation; an operator's console gets the decision, in one line, instead.
    logging.getLogger("mlflow.models.evaluation.validation").setLevel(logging.WARNING)

    now = versus_current(client, params.registry.model_name, version, work, subset)
    status, reasons = gate(now["challenger"], now["champion"], params.registry, now["comparison"])
    if version.tags.get("chance_level") == "true":
        status, reasons = "failed", [*reasons, "the model is at chance level (fine_tune flagged it)"]
    return {**now, "status": status, "reasons": reasons}


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m operators.review [--version N|@alias] --out reports/review`."""
    from tlpipe.reports.review import collect, context, render_html, render_markdown
    from tlpipe.tracking.registry import connect

    p = parser("review", __doc__, package="operators")
    p.add_argument("--version", default="@challenger", help="version number or @alias (default: @challenger)")
    p.add_argument("--out", required=True, help="folder for review.html and review.md")
    p.add_argument(
        "--subset",
        type=Path,
        default=Path("data/subset"),
        help="the challenger's make_subset folder, used only when the current champion was scored on "
        "another test set (default: data/subset)",
    )
    args = p.parse_args(argv)
    params = params_from(args)
    name = params.registry.model_name
    client = connect(params)
    with tempfile.TemporaryDirectory(prefix="review-") as tmp, atomic_dir(args.out) as staged:
        data = collect(
            client,
            name,
            args.version,
            Path(tmp),
            lambda version, work: gate_now(client, params, version, work, args.subset),
        )
        ctx = context(data)
        (staged / REVIEW_PAGE).write_text(render_html(ctx), encoding="utf-8")
        (staged / "review.md").write_text(render_markdown(ctx), encoding="utf-8")
        for page in (REVIEW_PAGE, "review.md"):
            client.log_artifact(data["register_run_id"], str(staged / page), "review")
        client.set_model_version_tag(
            name, data["version"], "review_artifact", f"runs:/{data['register_run_id']}/review/{REVIEW_PAGE}"
        )
    print(f"review: {name} v{data['version']} ({ctx['status']}) -> {Path(args.out) / REVIEW_PAGE} and review.md")


if __name__ == "__main__":
    run_main(main)
