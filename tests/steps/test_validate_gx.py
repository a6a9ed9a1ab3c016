"""validate_data keeps GX's own artifacts: a file data context a GX user can reopen, with Data Docs."""

from __future__ import annotations

from components.make_subset import run as make_subset_run
from components.validate_data import GX_DIR, validate, write_report
from tests.conftest import make_tree
from tlpipe.sections import MakeSubsetConfig, StorageConfig, ValidateDataConfig


def test_gx_context_suite_results_and_data_docs_reopen(tmp_path):
    import great_expectations as gx

    raw = make_tree(tmp_path / "raw", classes=("a", "b"), per_class=8)
    subset = tmp_path / "subset"
    make_subset_run(
        str(raw),
        "auto",
        MakeSubsetConfig(train_per_class=4, val_per_class=2, test_per_class=2, seed=1),
        StorageConfig(),
        subset,
    )
    report_dir = tmp_path / "report"
    report = validate(subset, ValidateDataConfig(), 10_000_000, report_dir / GX_DIR)
    write_report(report, report_dir)
    assert report["success"] and (report_dir / "report.html").is_file()  # the friendly page is still there

    context = gx.get_context(project_root_dir=str(report_dir / GX_DIR))
    suite = context.suites.get("images")
    assert len(suite.expectations) == sum(1 for c in report["checks"] if c["table"] == "images")
    assert {c.name for c in context.checkpoints.all()} == {"validate_data_images", "validate_data_class_counts"}
    results = list((report_dir / GX_DIR / "gx/uncommitted/validations").rglob("*.json"))
    assert len(results) == 2  # one checkpoint result per table
    docs = report_dir / GX_DIR / "gx/uncommitted/data_docs/local_site/index.html"
    assert docs.is_file() and "images" in docs.read_text()
