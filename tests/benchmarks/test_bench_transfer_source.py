"""The transfer-source benchmark: held-out subsets, choices made on validation, the summary counts McNemar right."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.transfer_source import TARGET, best, main, subset
from benchmarks.transfer_source_report import markdown, summary


def test_subsets_are_disjoint_per_seed_and_every_leftover_image_is_a_test_image():
    labels = np.repeat(np.arange(10), 20)
    train, val, test = subset(labels, 1, 5, 3)
    assert len(train) == 5 * len(TARGET) and len(val) == 3 * len(TARGET)
    assert not set(train) & set(val) and not set(test) & (set(train) | set(val))
    assert sorted(train + val + test) == sorted(np.flatnonzero(labels >= TARGET[0]).tolist())
    assert subset(labels, 2, 5, 3)[0] != train  # another seed draws other images


def test_the_learning_rate_is_chosen_on_validation_not_test():
    runs = [
        {"val_loss": 0.5, "ok": np.ones(4, bool), "lr": 1e-3},
        {"val_loss": 0.2, "ok": np.zeros(4, bool), "lr": 3e-3},
    ]
    assert best(runs)["lr"] == 3e-3  # the lower validation loss wins even though its test score is worse


def _row(seed, delta, p):
    pair = {"fixed": max(delta, 0), "broken": max(-delta, 0), "mcnemar_p": p, "delta_images": delta}
    return {"recipe": "pipeline", "train_per_class": 5, "seed": seed, "test_images": 700, "frozen": 0.6,
            "transfer": 0.9, "scratch": 0.9, "transfer_lr": 1e-3, "scratch_lr": 1e-3, "transfer_vs_scratch": pair}  # fmt: skip  # noqa: E501


def test_summary_counts_only_significant_seeds_on_their_side():
    cells = summary([_row(1, 9, 0.004), _row(2, -8, 0.008), _row(3, 3, 0.25)])
    assert cells[0]["transfer_significantly_better"] == [1] and cells[0]["transfer_significantly_worse"] == [2]
    text = markdown({"note": "n", "commit": "c", "machine": "m", "seconds": 1, "rows": [], "summary": cells})
    assert "| pipeline" in text


@pytest.mark.slow
def test_quick_run_writes_rows_for_both_architectures(tmp_path):
    out = tmp_path / "ts.json"
    main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {r["recipe"] for r in result["rows"]} == {"pipeline", "wide_augmented_30"}
    assert all(r["test_images"] > 600 for r in result["rows"]) and "QUICK" in result["note"]
    assert out.with_suffix(".md").is_file()
