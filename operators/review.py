"""review: one self-contained HTML report (and a Markdown summary) for a promotion review.

    python -m operators.review [--version N | --version @challenger] --out reports/review

For the given version (default `@challenger`) against the champion it was gated against: metrics with
deltas, per-class precision/recall/F1 side by side, both confusion matrices, the test images the challenger
gets wrong, training curves, the tuning summary and transferability curve, data lineage, and the params that
differ. Everything comes from the registry and the runs `register` logged, so it works from any machine
that can reach the tracking server. The report is logged back to the register run and tagged on the version.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

from tlpipe.cli import atomic_dir, params_from, parser, run_main
from tlpipe.contracts import BestParams
from tlpipe.errors import PipelineError

IMAGES = {"confusion_challenger": "evidence/confusion_challenger.png",
          "confusion_champion": "evidence/confusion_champion.png", "mistakes": "evidence/mistakes.png",
          "tuning_history": "evidence/tune/history.png", "transferability": "evidence/tune/transferability.png",
          "importances": "evidence/tune/importances.png"}
VOLATILE = ("effective.", "tracking.", "registry.", "tune.storage", "tune.timeout")


def params_diff(challenger: dict[str, str], champion: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, champion value, challenger value) for every training param that differs."""
    keys = sorted(set(challenger) | set(champion))
    return [(k, champion.get(k, "-"), challenger.get(k, "-")) for k in keys
            if challenger.get(k) != champion.get(k) and not k.startswith(VOLATILE)]


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p class='missing'>({alt}: not available)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def metric_rows(gate: dict) -> list[list]:
    """Challenger vs champion on the same test set, with deltas."""
    ch, cp = gate["challenger"], gate.get("champion")
    rows = []
    for key in ("accuracy", "macro_f1", "loss"):
        base = cp[key] if cp else None
        rows.append([key, _fmt(ch[key]), _fmt(base), _fmt(ch[key] - base) if base is not None else "-"])
    return rows


def class_rows(gate: dict) -> list[list]:
    """Per-class precision/recall/F1 of both models side by side."""
    ch, cp = gate["challenger"]["per_class"], (gate.get("champion") or {}).get("per_class", {})
    rows = []
    for cls, row in ch.items():
        other = cp.get(cls, {})
        rows.append([cls, row["support"], *(f"{_fmt(other.get(m))} → {_fmt(row[m])}"
                                            for m in ("precision", "recall", "f1"))])
    return rows


def render_html(ctx: dict, files: Path) -> str:
    """The report page; images are embedded, so the one file is the whole report."""
    gate, lineage, version = ctx["gate"], ctx["lineage"], ctx["version"]
    status = gate["validation_status"]
    sizes = [[split, cls, n] for split, per in lineage["subset_sizes"].items() for cls, n in per.items()]
    sections = [
        ("summary", "Summary", f"<p class='{status}'>Gate: <b>{status}</b> — "
         f"{html.escape('; '.join(gate['reasons']) or 'all thresholds met')}</p>"
         f"<p>{html.escape(ctx['description'])}</p>"
         + _table(["alias", "version"], [[a, v] for a, v in ctx["aliases"].items()])),
        ("metrics", "Metrics on the same test set", _table(
            ["metric", f"challenger v{version}", f"champion v{gate.get('champion_version') or '-'}", "delta"],
            metric_rows(gate)) + f"<p>test set sha256 {gate['test_set_sha256'][:16]}…</p>"),
        ("per-class", "Per class (champion → challenger)",
         _table(["class", "support", "precision", "recall", "F1"], class_rows(gate))),
        ("confusion", "Confusion matrices", _img(files / IMAGES["confusion_challenger"], "challenger confusion")
         + _img(files / IMAGES["confusion_champion"], "champion confusion")),
        ("mistakes", "Test images the challenger gets wrong",
         _img(files / IMAGES["mistakes"], "mistakes") if gate["challenger"]["accuracy"] < 1.0
         else "<p>none: the challenger gets every test image right</p>"),
        ("training", "Training curves", _img(files / "history.png", "fine_tune history")),
        ("tuning", "Tuning", "<pre>" + html.escape(json.dumps(ctx["tuning"], indent=2)) + "</pre>"
         + _img(files / IMAGES["transferability"], "transferability curve")
         + _img(files / IMAGES["tuning_history"], "optimization history")
         + _img(files / IMAGES["importances"], "parameter importances")),
        ("lineage", "Data lineage", _table(["item", "value"], [["git commit", lineage["git_commit"]],
                                                                ["data validation", lineage["validation"]["status"]],
                                                                *[[k, v] for k, v in lineage["dvc_lock"].items()]])
         + _table(["split", "class", "images"], sizes)),
        ("params", "Params that differ (champion → challenger)",
         _table(["param", "champion", "challenger"], ctx["diff"]) if ctx["diff"] else "<p>none</p>"),
    ]
    body = "".join(f"<section id='{sid}'><h2>{title}</h2>{content}</section>" for sid, title, content in sections)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%;margin:4px}"
             ".passed{color:#176317}.failed{color:#a11}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(ctx['title'])}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(ctx['title'])}</h1>{body}</body></html>\n")


def render_markdown(ctx: dict) -> str:
    """A short summary for a pull request or chat."""
    gate = ctx["gate"]
    lines = [f"## {ctx['title']}", "", f"Gate: **{gate['validation_status']}**"
             + (f" ({'; '.join(gate['reasons'])})" if gate["reasons"] else ""), "",
             f"| metric | challenger v{ctx['version']} | champion v{gate.get('champion_version') or '-'} | delta |",
             "|---|---|---|---|", *[f"| {' | '.join(map(str, r))} |" for r in metric_rows(gate)], ""]
    if ctx["diff"]:
        lines += ["| param | champion | challenger |", "|---|---|---|",
                  *[f"| {k} | {a} | {b} |" for k, a, b in ctx["diff"]], ""]
    return "\n".join(lines)


def collect(client, name: str, version_ref: str, work: Path) -> dict:
    """Everything the report shows, downloaded from the registry and the runs into `work`."""
    from tlpipe.tracking.registry import aliases, get_version

    version = get_version(client, name, version_ref)
    register_run = version.tags.get("register_run_id")
    if not register_run:
        raise PipelineError(f"{name} v{version.version} was not registered by `register` (no register_run_id tag)")
    client.download_artifacts(register_run, "evidence", str(work))
    training = client.get_run(version.tags["training_run_id"])
    try:
        client.download_artifacts(training.info.run_id, "history.png", str(work))
    except Exception as exc:  # an older run without curves still gets a report, saying so
        print(f"review: no training curves for {name} v{version.version} ({str(exc).splitlines()[0][:120]})")
    gate = json.loads((work / "evidence/gate.json").read_text(encoding="utf-8"))
    champion_params: dict[str, str] = {}
    if gate.get("champion_version"):
        champ = client.get_model_version(name, gate["champion_version"])
        champion_params = client.get_run(champ.tags["training_run_id"]).data.params
    tuning_file = work / "evidence/tune/best_params.json"
    named = {alias: v for v, names in aliases(client, name).items() for alias in names}
    return {"version": version.version, "gate": gate, "lineage": json.loads((work / "evidence/lineage.json").read_text(encoding="utf-8")),
            "tuning": BestParams.read(tuning_file.parent).model_dump() if tuning_file.is_file() else {"tuning": "not run"},
            "diff": params_diff(training.data.params, champion_params) if champion_params else [],
            "description": version.description or "", "aliases": named, "register_run_id": register_run,
            "title": f"Promotion review: {name} v{version.version}"}


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m operators.review [--version N|@alias] --out reports/review`."""
    from tlpipe.tracking.registry import connect

    p = parser("review", __doc__, package="operators")
    p.add_argument("--version", default="@challenger", help="version number or @alias (default: @challenger)")
    p.add_argument("--out", required=True, help="folder for review.html and review.md")
    args = p.parse_args(argv)
    params = params_from(args)
    name = params.registry.model_name
    client = connect(params)
    with tempfile.TemporaryDirectory(prefix="review-") as tmp, atomic_dir(args.out) as staged:
        ctx = collect(client, name, args.version, Path(tmp))
        (staged / "review.html").write_text(render_html(ctx, Path(tmp)), encoding="utf-8")
        (staged / "review.md").write_text(render_markdown(ctx), encoding="utf-8")
        client.log_artifact(ctx["register_run_id"], str(staged / "review.html"), "review")
        client.log_artifact(ctx["register_run_id"], str(staged / "review.md"), "review")
        client.set_model_version_tag(name, ctx["version"], "review_artifact",
                                     f"runs:/{ctx['register_run_id']}/review/review.html")
    print(f"review: {name} v{ctx['version']} ({ctx['gate']['validation_status']}) -> "
          f"{Path(args.out) / 'review.html'} and review.md")


if __name__ == "__main__":
    run_main(main)
