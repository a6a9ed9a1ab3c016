"""readme-numbers: the table it writes from a result, and the README blocks it rewrites (no pipeline run here)."""

from __future__ import annotations

import json

import pytest

from benchmarks.readme_numbers import main, splice, table

RESULT = {
    "commit": "abc1234",
    "when": "2026-12-04",
    "machine": "AMD EPYC, 2 cores",
    "train_per_class": 10,
    "numbers": {
        "final": 0.93,
        "final_ci95": [0.895, 0.96],
        "frozen": 0.86,
        "scratch": 0.8,
        "vs_best_baseline": {"name": "frozen_features", "delta": 0.07, "mcnemar_p": 0.0012},
        "vs_scratch": {"name": "scratch", "delta": 0.13, "mcnemar_p": 1.5e-05, "fixed": 30, "broken": 4},
        "test_images": 200,
        "regime": "transfer",
        "freeze_ratio": 0.4782608695652174,
        "frozen_layers": "11/23",
        "wall_seconds": 291.0,
    },
}
GRID = {
    "settings": {"commit": "def5678"},
    "note": "n",
    "rows": [{"similarity": "near"}],
    "summary": [
        {
            "similarity": "near",
            "train_per_class": 10,
            "seeds": 3,
            "final": 0.9,
            "frozen": 0.85,
            "scratch": 0.7,
            "goal_met": True,
            "significantly_worse_seeds": [],
            "regimes": ["transfer"],
        }
    ],
}


def test_table_states_every_number_with_its_commit():
    text = table(RESULT)
    assert text.startswith("Run at commit `abc1234` (2026-12-04, AMD EPYC, 2 cores); 10 training images per class")
    row = text.strip().splitlines()[-1]
    assert row == (
        "| 0.930 (0.895-0.960) | 0.860 | 0.800 | frozen_features +0.070 (p 0.0012) | +0.130 (p 1.5e-05) | "
        "transfer | 0.48 (11/23) | 4.8 min |"
    )
    assert text.count("|---") == 8


def test_splice_replaces_only_the_named_block_and_says_when_it_is_missing():
    text = "a\n<!-- readme-numbers:default -->\nold\n<!-- /readme-numbers:default -->\nb\n"
    assert splice(text, "default", "new\n") == (
        "a\n<!-- readme-numbers:default -->\nnew\n<!-- /readme-numbers:default -->\nb\n"
    )
    with pytest.raises(SystemExit, match="no <!-- readme-numbers:grid -->"):
        splice(text, "grid", "x")


def test_from_json_rewrites_the_md_and_both_readme_blocks(tmp_path):
    out, grid, readme = tmp_path / "numbers.json", tmp_path / "grid.json", tmp_path / "README.md"
    out.write_text(json.dumps(RESULT))
    grid.write_text(json.dumps(GRID))
    readme.write_text(
        "# x\n<!-- readme-numbers:default -->\n<!-- /readme-numbers:default -->\n"
        "text\n<!-- readme-numbers:grid -->\nstale\n<!-- /readme-numbers:grid -->\n"
    )
    main(["--from-json", "--out", str(out), "--grid", str(grid), "--readme", str(readme)])
    text = readme.read_text()
    assert "| 0.930 (0.895-0.960) |" in text and "stale" not in text
    assert "Grid run at commit `def5678`" in text and "| near | 10 | 3 | 0.900 | 0.850 | 0.700 | met |" in text
    assert out.with_suffix(".md").read_text().startswith("# README numbers\n\nRun at commit `abc1234`")


def test_each_grid_file_fills_its_own_block_and_a_missing_one_none(tmp_path):
    from benchmarks.readme_numbers import grid_block

    assert [grid_block(tmp_path / f"{s}.json") for s in ("data_size", "data_size_seen", "grid")] == [
        "grid",
        "grid-seen",
        "grid",
    ]
    out, seen, readme = tmp_path / "numbers.json", tmp_path / "data_size_seen.json", tmp_path / "README.md"
    out.write_text(json.dumps(RESULT))
    seen.write_text(json.dumps({**GRID, "settings": {"commit": "0a1b2c3"}}))
    readme.write_text(
        "<!-- readme-numbers:default -->\n<!-- /readme-numbers:default -->\n"
        "<!-- readme-numbers:grid-seen -->\nstale\n<!-- /readme-numbers:grid-seen -->\n"
    )
    main(
        [
            "--from-json",
            "--out",
            str(out),
            "--grid",
            str(seen),
            str(tmp_path / "data_size_25.json"),
            "--readme",
            str(readme),
        ]
    )
    text = readme.read_text()
    assert "stale" not in text and "Grid run at commit `0a1b2c3` (`benchmarks/results/data_size_seen.md`" in text


def test_a_block_is_filled_in_whichever_readme_holds_it_and_one_none_holds_is_named(tmp_path):
    out, rule = tmp_path / "numbers.json", tmp_path / "data_size_rule.json"
    front, history = tmp_path / "README.md", tmp_path / "HISTORY.md"
    out.write_text(json.dumps(RESULT))
    rule.write_text(json.dumps(GRID))
    front.write_text("<!-- readme-numbers:default -->\nstale\n<!-- /readme-numbers:default -->\n")
    history.write_text("h\n<!-- readme-numbers:grid-rule -->\nstale\n<!-- /readme-numbers:grid-rule -->\n")
    args = ["--from-json", "--out", str(out), "--grid", str(rule), "--readme", str(front), str(history)]
    main(args)
    assert "| 0.930 (0.895-0.960) |" in front.read_text() and "Grid run" not in front.read_text()
    assert "Grid run at commit `def5678` (`benchmarks/results/data_size_rule.md`" in history.read_text()
    assert "stale" not in front.read_text() + history.read_text()
    # a grid whose block is in neither file: one line naming the block and the files, and nothing rewritten
    before = front.read_text(), history.read_text()
    full = tmp_path / "data_size_full.json"
    full.write_text(json.dumps(GRID))
    with pytest.raises(SystemExit, match=r"no <!-- readme-numbers:grid-full --> .* block in .*README.md, .*HISTORY.md"):
        main([*args[:4], str(rule), str(full), *args[5:]])
    assert (front.read_text(), history.read_text()) == before
