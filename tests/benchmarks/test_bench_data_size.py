"""The data-size x similarity grid: the far target's look, the cell summary, the report, and one tiny cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.data_size import FIELDS, main, markdown, plot, summarize
from benchmarks.data_size_far import far_images, write_far
from tests.benchmarks.test_bench_regimes import TINY


def test_far_target_is_inverted_outlines_of_the_same_digits(tmp_path):
    from components.make_digits import digits_images

    images, labels = digits_images(16)
    far = far_images(images[:50])
    assert far.shape == images[:50].shape and far.dtype == np.uint8
    assert far[:, :, 0].mean() > 250 and images[:50, :, 0].mean() < 5  # white ground where the source is black
    assert far.mean() > 150 > 100 > images[:50].mean()
    assert far.min() == 0  # the strongest edge of each image is black
    folder = write_far(tmp_path / "far", 16, [5, 6])
    assert sorted(p.name for p in folder.iterdir()) == ["5", "6"]
    assert len(list((folder / "5").glob("*.png"))) == int(np.sum(labels == 5))


def row(size, sim, seed, final, frozen, scratch, delta=0.0, p=1.0):
    return {
        "train_per_class": size,
        "similarity": sim,
        "seed": seed,
        "final": final,
        "frozen": frozen,
        "scratch": scratch,
        "test_images": 200,
        "regime": "transfer",
        "freeze_ratio": 0.5,
        "label": "",
        "vs_best_baseline": {"name": "scratch", "delta": delta, "mcnemar_p": p},
    }


def test_summary_goal_and_report(tmp_path):
    rows = [
        row(5, "near", 42, 0.90, 0.85, 0.60),
        row(5, "near", 43, 0.92, 0.86, 0.62),
        row(100, "far", 42, 0.90, 0.70, 0.96, delta=-0.06, p=0.001),
    ]
    summary = summarize(rows)
    near = next(s for s in summary if s["similarity"] == "near")
    far = next(s for s in summary if s["similarity"] == "far")
    assert near["seeds"] == 2 and near["final"] == pytest.approx(0.91) and near["goal_met"]
    assert not far["goal_met"] and far["significantly_worse_seeds"] == [42]
    rows[0]["seconds"] = 73.30000000000001  # the two projects' step times summed: whole seconds in the table
    text = markdown({"summary": summary, "note": "n", "rows": rows})
    assert "| near | 5 | 2 | 0.910 | 0.855 | 0.610 | met |" in text and "**missed**" in text
    assert text.count("| 73 |") == 1 and "73.3" not in text
    plot(summary, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000


@pytest.mark.slow
def test_one_tiny_cell_runs_the_pipeline_and_the_tuned_scratch_arm(tmp_path):
    out = tmp_path / "data_size.json"
    sets = [s for s in TINY if not s.startswith("make_subset.train_per_class")]
    main(
        [
            "--sizes",
            "4",
            "--similarities",
            "far",
            "--seeds",
            "5",
            "--image-size",
            "16",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
            *(x for s in sets for x in ("--set", s)),
        ]
    )
    result = json.loads(out.read_text())
    (only,) = result["rows"]
    assert set(FIELDS) <= set(only) and only["train_per_class"] == 4 and only["similarity"] == "far"
    assert only["scratch_arm"].startswith("tuned scratch") and 0 <= only["scratch"] <= 1
    assert set(only["vs_best_baseline"]) >= {"name", "delta", "mcnemar_p"}
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()


def test_report_merges_a_split_grid_and_keeps_its_own_rows(tmp_path):
    mine, other = tmp_path / "data_size.json", tmp_path / "b.json"
    mine.write_text(json.dumps({"note": "n", "rows": [row(5, "near", 42, 0.9, 0.8, 0.6)]}))
    other.write_text(json.dumps({"rows": [row(5, "near", 42, 0.1, 0.1, 0.1), row(5, "near", 43, 0.8, 0.8, 0.6)]}))
    result = main(["--report", "--out", str(mine), "--merge", str(other)])
    assert sorted((r["seed"], r["final"]) for r in result["rows"]) == [(42, 0.9), (43, 0.8)]
    assert json.loads(mine.read_text())["summary"][0]["final"] == pytest.approx(0.85)
    assert "| near | 5 | 43 | 0.800 |" in mine.with_suffix(".md").read_text()
    assert mine.with_suffix(".png").exists()


def test_a_seed_significantly_worse_than_the_tuned_scratch_arm_counts():
    worse = {**row(5, "near", 43, 0.5, 0.5, 0.7), "vs_tuned_scratch": {"delta": -0.2, "mcnemar_p": 1e-7}}
    (summary,) = summarize([row(5, "near", 42, 0.5, 0.5, 0.5), worse])
    assert summary["significantly_worse_seeds"] == [43] and not summary["goal_met"]


def test_large_cells_test_on_what_fits_beside_their_training_images(tmp_path):
    import yaml

    from benchmarks.data_size import REPO, test_per_class
    from components.make_digits import digits_images

    _, labels = digits_images(8)
    fewest = min(int((labels == d).sum()) for d in (5, 6, 7, 8, 9))  # 174 (digit 8)
    shared = fewest - len(range(0, fewest, 3))  # 116: a third of a shared class goes to the source
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    committed["make_subset"].update(val_per_class=30, test_per_class=130)  # known numbers, whatever the default
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(committed))
    near = ["make_digits.source_classes=[0, 1, 2, 3, 4]", "make_digits.target_classes=[5, 6, 7, 8, 9]"]
    seen = ["make_digits.source_classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", near[1]]
    assert test_per_class(10, near, params) == []  # 130 a class fit beside 10 + 30
    assert test_per_class(100, near, params) == [f"make_subset.test_per_class={fewest - 100 - 30}"]
    assert test_per_class(50, [*near, "make_subset.val_per_class=10"], params) == [
        f"make_subset.test_per_class={fewest - 50 - 10}"
    ]
    assert test_per_class(10, seen, params) == [f"make_subset.test_per_class={shared - 10 - 30}"]
    assert test_per_class(100, ["make_subset.test_per_class=20"], params) == []  # the user's choice stands
