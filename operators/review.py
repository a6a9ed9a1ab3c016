"""review: one self-contained HTML report (and a Markdown summary) for a promotion review.

    python -m operators.review [--version N | --version @challenger] --out reports/review

For the given version (default `@challenger`) against the champion it was gated against: the gate and the
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

from tlpipe.cli import atomic_dir, params_from, parser, run_main


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m operators.review [--version N|@alias] --out reports/review`."""
    from tlpipe.reports.review import collect, context, render_html, render_markdown
    from tlpipe.tracking.registry import connect

    p = parser("review", __doc__, package="operators")
    p.add_argument("--version", default="@challenger", help="version number or @alias (default: @challenger)")
    p.add_argument("--out", required=True, help="folder for review.html and review.md")
    args = p.parse_args(argv)
    params = params_from(args)
    name = params.registry.model_name
    client = connect(params)
    with tempfile.TemporaryDirectory(prefix="review-") as tmp, atomic_dir(args.out) as staged:
        data = collect(client, name, args.version, Path(tmp))
        ctx = context(data)
        (staged / "review.html").write_text(render_html(ctx), encoding="utf-8")
        (staged / "review.md").write_text(render_markdown(ctx), encoding="utf-8")
        for page in ("review.html", "review.md"):
            client.log_artifact(data["register_run_id"], str(staged / page), "review")
        client.set_model_version_tag(name, data["version"], "review_artifact",
                                     f"runs:/{data['register_run_id']}/review/review.html")
    print(f"review: {name} v{data['version']} ({ctx['status']}) -> {Path(args.out) / 'review.html'} and review.md")


if __name__ == "__main__":
    run_main(main)
