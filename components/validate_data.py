"""validate_data: Great Expectations (1.x) checks on the subset before any training.

Checks the manifest plus facts recomputed from every file: expected classes present, no class below its
requested count, every file decodes, sizes within bounds, no identical file in two splits or classes
(leakage), and class balance within a stated bound. Always writes a JSON + HTML report; writes the
validation result that later steps and MLflow read only when every expectation holds. GX's own artifacts
are kept next to the report (`<report>/gx`): a file data context with the suites, checkpoints, their
results and Data Docs (`<report>/gx/gx/uncommitted/data_docs/local_site/index.html`), so a GX user can
reopen them with `gx.get_context(project_root_dir="<report>/gx")`.
"""

from __future__ import annotations

# GX 1.x documents `gx.expectations.Expect...` and `gx.checkpoint.UpdateDataDocsAction` as its API, but its
# packages re-export them without `__all__`, which pyright reads as private.
# pyright: reportPrivateImportUsage=false
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import (
    QUARANTINE,
    SHARDS_DIR,
    VALIDATION_PAGE,
    SubsetSummary,
    ValidationReport,
    ValidationResult,
)
from tlpipe.data.datasets import read_manifest
from tlpipe.data.images import BadImage, normalise
from tlpipe.data.records import records
from tlpipe.errors import DataError
from tlpipe.fs import atomic_dir
from tlpipe.reports.html import render
from tlpipe.sections import ValidateDataConfig

PARAMS = ("validate_data", "make_subset.max_pixels")
GX_DIR = "gx"  # GX's file data context inside the report folder


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
    df = read_manifest(subset)
    facts_of: dict[str, tuple[int, int]] = {}  # manifest path -> (width, height) of the stored image
    shards = sorted({s for s in df.get("shard", []) if (subset / SHARDS_DIR / s).is_file()})
    for rel, data in records([subset / SHARDS_DIR / s for s in shards]):
        try:
            _, facts = normalise(data, max_pixels)
            facts_of[rel] = (facts.width, facts.height)
        except BadImage:
            pass
    # An image that is missing from the shards or no longer decodes fails the `decodes` expectation.
    df["decodes"] = [rel in facts_of for rel in df["path"]]
    df["width"] = [facts_of.get(rel, (0, 0))[0] for rel in df["path"]]
    df["height"] = [facts_of.get(rel, (0, 0))[1] for rel in df["path"]]
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
            rows.append(
                {"split": split, "class": cls, "count": count, "requested": want, "share_of_largest": count / largest}
            )
    return pd.DataFrame(rows)


def _suite(cfg: ValidateDataConfig, classes: list[str]):
    import great_expectations.expectations as gxe

    images = [
        ("every file decodes as an image", gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True])),
        (
            f"width within [{cfg.min_width}, {cfg.max_width}]",
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_width, max_value=cfg.max_width),
        ),
        (
            f"height within [{cfg.min_height}, {cfg.max_height}]",
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_height, max_value=cfg.max_height),
        ),
        ("channels are 1 (grey) or 3 (RGB)", gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[1, 3])),
        (
            "no identical file in two splits (leakage)",
            gxe.ExpectColumnValuesToBeInSet(column="splits_with_same_file", value_set=[1]),
        ),
        (
            "no identical file in two classes",
            gxe.ExpectColumnValuesToBeInSet(column="classes_with_same_file", value_set=[1]),
        ),
        ("every file appears once", gxe.ExpectColumnValuesToBeUnique(column="sha256")),
    ]
    counts = [
        (
            f"expected classes present: {', '.join(classes)}",
            gxe.ExpectColumnDistinctValuesToContainSet(column="class", value_set=classes),
        ),
        (
            "no class below its requested count",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="count", column_B="requested", or_equal=True),
        ),
        (
            f"balanced: every class has >= {cfg.min_class_ratio:g} x the largest class of its split",
            gxe.ExpectColumnValuesToBeBetween(column="share_of_largest", min_value=cfg.min_class_ratio),
        ),
    ]
    return {"images": images, "class_counts": counts}


def run_expectations(
    tables: dict[str, pd.DataFrame], cfg: ValidateDataConfig, classes: list[str], gx_dir: Path | None = None
) -> list[Check]:
    """Run one GX checkpoint per table and return each expectation's outcome.

    With `gx_dir`, GX's own file data context lives there (suites, validation definitions, checkpoints,
    the checkpoint results and Data Docs): `gx.get_context(project_root_dir=gx_dir)` reopens it.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if gx_dir is None:
        context = gx.get_context(mode="ephemeral")
    else:
        shutil.rmtree(gx_dir, ignore_errors=True)  # one run's context: suites from an earlier run would clash
        context = gx.get_context(mode="file", project_root_dir=str(gx_dir))
    # GX's "Calculating Metrics" tqdm bar passes disable=False itself (TQDM_DISABLE cannot reach it) and writes
    # carriage-return frames into log files; GX's own setting turns it off. The step prints its result.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("subset")
    checks: list[Check] = []
    for table, expectations in _suite(cfg, classes).items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=table))
        names = {}
        for name, expectation in expectations:
            names[suite.add_expectation(expectation).id] = name
        definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name=table))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"validate_data_{table}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if gx_dir else [],
                result_format={"result_format": "SUMMARY"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": tables[table]})
        for run in result.run_results.values():
            for item in run.results:
                assert item.expectation_config is not None  # GX fills it for every result of a suite
                res = item.result or {}
                examples = [str(v) for v in (res.get("partial_unexpected_list") or [])[:5]]
                if not examples and "observed_value" in res and not item.success:
                    examples = [f"observed {res['observed_value']}"]
                checks.append(
                    Check(
                        table,
                        names[item.expectation_config.id],
                        bool(item.success),
                        int(res.get("unexpected_count") or (0 if item.success else 1)),
                        examples,
                    )
                )
    return checks


def validate(subset: Path, cfg: ValidateDataConfig, max_pixels: int, gx_dir: Path | None = None) -> dict:
    """Validate a subset folder; return the report (success flag included); GX's context goes to `gx_dir`."""
    summary = SubsetSummary.read(subset)
    classes = list(cfg.expected_classes) or list(summary.classes)
    images = image_table(subset, max_pixels)
    counts = class_table(images, summary.requested, classes)
    checks = run_expectations({"images": images, "class_counts": counts}, cfg, classes, gx_dir)
    quarantine = pd.read_csv(subset / QUARANTINE, dtype=str, keep_default_na=False).to_dict("records")
    return {
        "success": all(c.success for c in checks),
        "subset": str(subset),
        "images": len(images),
        "classes": classes,
        "checks": [c.__dict__ for c in checks],
        "quarantine": quarantine,
        "class_counts": counts.to_dict("records"),
    }


def write_report(report: dict, folder: Path) -> None:
    """report.json and report.html (rendered from templates/validation.html.j2)."""
    folder.mkdir(parents=True, exist_ok=True)
    ValidationReport.model_validate(report).write(folder)
    html = render("validation.html.j2", report=report, verdict="PASSED" if report["success"] else "FAILED")
    (folder / VALIDATION_PAGE).write_text(html, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.validate_data --subset data/subset --validation ... --report ...`."""
    p = parser("validate_data", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--validation", required=True, help="folder for validation.json, written only on success")
    p.add_argument("--report", required=True, help="folder for report.json and report.html (always written)")
    args = p.parse_args(argv)
    params = step_params(args, "validate_data", PARAMS)
    from tlpipe.tracking.runs import step_run

    with step_run(params, "validate_data", {"subset": args.subset}) as _:
        import mlflow

        report = validate(
            Path(args.subset), params.validate_data, params.make_subset.max_pixels, Path(args.report) / GX_DIR
        )
        write_report(report, Path(args.report))
        mlflow.log_artifact(str(Path(args.report) / VALIDATION_PAGE))
        failed = [c for c in report["checks"] if not c["success"]]
        mlflow.log_metrics({"expectations": len(report["checks"]), "failed": len(failed)})
        for c in failed:
            print(f"validate_data: FAILED {c['name']} ({c['unexpected']} unexpected; e.g. {', '.join(c['examples'])})")
        if failed:
            shutil.rmtree(args.validation, ignore_errors=True)
            raise DataError(
                f"{len(failed)} of {len(report['checks'])} data expectations failed; "
                f"see {Path(args.report) / VALIDATION_PAGE}"
            )
        result = ValidationResult(
            success=True,
            images=report["images"],
            classes=report["classes"],
            expectations=len(report["checks"]),
            quarantined=len(report["quarantine"]),
        )
        with atomic_dir(args.validation) as staged:
            result.write(staged)
    print(
        f"validate_data: all {result.expectations} expectations passed on {result.images} images "
        f"({result.quarantined} quarantined) -> {args.validation}"
    )


if __name__ == "__main__":
    run_main(main)
