"""validate_data: Great Expectations (1.x) checks on the subset before any training.

Checks the manifest plus facts recomputed from every file: expected classes present, no class below its
requested count, every file decodes, sizes within bounds, no identical file in two splits or classes
(leakage), and class balance within a stated bound. Always writes a JSON + HTML report; writes the
validation result that later steps and MLflow read only when every expectation holds.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.cli import atomic_file, params_from, parser, run_main
from components.config import Params, ValidateDataConfig
from components.errors import DataError
from components.images import BadImage, normalise


@dataclass(frozen=True)
class Check:
    """One expectation's outcome in plain words."""

    table: str
    name: str
    success: bool
    unexpected: int
    examples: list


def image_table(subset: Path, max_pixels: int) -> pd.DataFrame:
    """The manifest with per-image facts recomputed from the files themselves."""
    manifest = subset / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest}: manifest not found; run make_subset first")
    df = pd.read_csv(manifest, dtype={"class": str}, keep_default_na=False)
    decodes, widths, heights = [], [], []
    for rel in df["path"]:
        try:
            _, facts = normalise((subset / rel).read_bytes(), max_pixels)
            decodes.append(True)
            widths.append(facts.width)
            heights.append(facts.height)
        except (BadImage, FileNotFoundError):
            decodes.append(False)
            widths.append(0)
            heights.append(0)
    df["decodes"], df["width"], df["height"] = decodes, widths, heights
    df["splits_with_same_file"] = df.groupby("sha256")["split"].transform("nunique")
    df["classes_with_same_file"] = df.groupby("sha256")["class"].transform("nunique")
    return df


def class_table(images: pd.DataFrame, requested: dict[str, int], classes: list[str]) -> pd.DataFrame:
    """Counts per (split, class), every expected class included even at zero."""
    rows = []
    for split, want in requested.items():
        have = images[images["split"] == split]["class"].value_counts()
        largest = max(have.max() if len(have) else 0, 1)
        for cls in sorted(set(classes) | set(have.index)):
            count = int(have.get(cls, 0))
            rows.append({"split": split, "class": cls, "count": count, "requested": want,
                         "share_of_largest": count / largest})
    return pd.DataFrame(rows)


def _suite(cfg: ValidateDataConfig, classes: list[str]):
    import great_expectations.expectations as gxe

    images = [
        ("every file decodes as an image", gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True])),
        (f"width within [{cfg.min_width}, {cfg.max_width}]",
         gxe.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_width, max_value=cfg.max_width)),
        (f"height within [{cfg.min_height}, {cfg.max_height}]",
         gxe.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_height, max_value=cfg.max_height)),
        ("channels are 1 (grey) or 3 (RGB)", gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[1, 3])),
        ("no identical file in two splits (leakage)",
         gxe.ExpectColumnValuesToBeInSet(column="splits_with_same_file", value_set=[1])),
        ("no identical file in two classes",
         gxe.ExpectColumnValuesToBeInSet(column="classes_with_same_file", value_set=[1])),
        ("every file appears once", gxe.ExpectColumnValuesToBeUnique(column="sha256")),
    ]
    counts = [
        (f"expected classes present: {', '.join(classes)}",
         gxe.ExpectColumnDistinctValuesToContainSet(column="class", value_set=classes)),
        ("no class below its requested count",
         gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="count", column_B="requested", or_equal=True)),
        (f"balanced: every class has >= {cfg.min_class_ratio:g} x the largest class of its split",
         gxe.ExpectColumnValuesToBeBetween(column="share_of_largest", min_value=cfg.min_class_ratio)),
    ]
    return {"images": images, "class_counts": counts}


def run_expectations(tables: dict[str, pd.DataFrame], cfg: ValidateDataConfig, classes: list[str]) -> list[Check]:
    """Run one GX checkpoint per table and return each expectation's outcome."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas("subset")
    checks: list[Check] = []
    for table, expectations in _suite(cfg, classes).items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=table))
        names = {}
        for name, expectation in expectations:
            names[suite.add_expectation(expectation).id] = name
        definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name=table))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"validate_data_{table}", validation_definitions=[definition],
            result_format={"result_format": "SUMMARY"}))
        result = checkpoint.run(batch_parameters={"dataframe": tables[table]})
        for run in result.run_results.values():
            for item in run.results:
                res = item.result or {}
                examples = [str(v) for v in (res.get("partial_unexpected_list") or [])[:5]]
                if not examples and "observed_value" in res and not item.success:
                    examples = [f"observed {res['observed_value']}"]
                checks.append(Check(table, names[item.expectation_config.id], bool(item.success),
                                    int(res.get("unexpected_count") or (0 if item.success else 1)), examples))
    return checks


def render_html(report: dict) -> str:
    """A self-contained HTML page of the report."""
    rows = "".join(
        f"<tr class={'ok' if c['success'] else 'bad'}><td>{'pass' if c['success'] else 'FAIL'}</td>"
        f"<td>{html.escape(c['table'])}</td><td>{html.escape(c['name'])}</td><td>{c['unexpected']}</td>"
        f"<td>{html.escape(', '.join(c['examples']))}</td></tr>" for c in report["checks"])
    quarantine = "".join(
        f"<tr><td>{html.escape(q['class'])}</td><td>{html.escape(q['source_path'])}</td>"
        f"<td>{html.escape(q['reason'])}</td></tr>" for q in report["quarantine"]) or "<tr><td colspan=3>none</td></tr>"
    counts = "".join(f"<tr><td>{html.escape(r['split'])}</td><td>{html.escape(r['class'])}</td><td>{r['count']}</td>"
                     f"<td>{r['requested']}</td></tr>" for r in report["class_counts"])
    verdict = "PASSED" if report["success"] else "FAILED"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>validate_data: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.ok td:first-child{{color:#080}}
.bad td:first-child{{color:#c00;font-weight:bold}}</style></head><body>
<h1>validate_data: {verdict}</h1><p>{report['images']} images, {len(report['quarantine'])} quarantined,
subset {html.escape(report['subset'])}</p>
<h2>Expectations</h2><table><tr><th>result</th><th>table</th><th>expectation</th><th>unexpected</th>
<th>examples</th></tr>{rows}</table>
<h2>Quarantined files</h2><table><tr><th>class</th><th>file</th><th>reason</th></tr>{quarantine}</table>
<h2>Images per class and split</h2><table><tr><th>split</th><th>class</th><th>count</th><th>requested</th></tr>
{counts}</table></body></html>"""


def validate(subset: Path, params: Params) -> dict:
    """Validate a subset folder; return the report (success flag included)."""
    summary_file = subset / "summary.json"
    if not summary_file.is_file():
        raise DataError(f"{summary_file}: not found; run make_subset first")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    cfg = params.validate_data
    classes = list(cfg.expected_classes) or list(summary["classes"])
    images = image_table(subset, params.make_subset.max_pixels)
    counts = class_table(images, summary["requested"], classes)
    checks = run_expectations({"images": images, "class_counts": counts}, cfg, classes)
    quarantine = pd.read_csv(subset / "quarantine.csv", dtype=str, keep_default_na=False).to_dict("records")
    return {
        "success": all(c.success for c in checks),
        "subset": str(subset),
        "images": len(images),
        "classes": classes,
        "checks": [c.__dict__ for c in checks],
        "quarantine": quarantine,
        "class_counts": counts.to_dict("records"),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.validate_data --subset data/subset --report-dir ... --result ...`."""
    p = parser("validate_data", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--report-dir", required=True, help="where report.json and report.html go (always written)")
    p.add_argument("--result", required=True, help="validation result JSON, written only on success")
    args = p.parse_args(argv)
    report = validate(Path(args.subset), params_from(args))
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (report_dir / "report.html").write_text(render_html(report), encoding="utf-8")
    failed = [c for c in report["checks"] if not c["success"]]
    for c in failed:
        print(f"validate_data: FAILED {c['name']} ({c['unexpected']} unexpected; e.g. {', '.join(c['examples'])})")
    if failed:
        Path(args.result).unlink(missing_ok=True)
        raise DataError(f"{len(failed)} of {len(report['checks'])} data expectations failed; "
                        f"see {report_dir / 'report.html'}")
    result = {k: report[k] for k in ("success", "images", "classes")}
    result.update(expectations=len(report["checks"]), quarantined=len(report["quarantine"]))
    with atomic_file(args.result) as staged:
        staged.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"validate_data: all {len(report['checks'])} expectations passed on {report['images']} images "
          f"({len(report['quarantine'])} quarantined) -> {args.result}")


if __name__ == "__main__":
    run_main(main)
