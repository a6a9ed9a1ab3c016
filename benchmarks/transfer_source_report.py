"""The transfer-source benchmark's summary and markdown (benchmarks/transfer_source.py)."""

from __future__ import annotations

import numpy as np


def summary(rows: list[dict]) -> list[dict]:
    """Per recipe and size: mean accuracies, seeds where transfer is significantly better / worse."""
    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for size in sorted({r["train_per_class"] for r in rows if r["recipe"] == recipe}):
            cell_rows = [r for r in rows if r["recipe"] == recipe and r["train_per_class"] == size]
            sig = [r for r in cell_rows if r["transfer_vs_scratch"]["mcnemar_p"] < 0.05]
            out.append(
                {
                    "recipe": recipe,
                    "train_per_class": size,
                    "seeds": [r["seed"] for r in cell_rows],
                    **{
                        k: round(float(np.mean([r[k] for r in cell_rows])), 4)
                        for k in ("frozen", "transfer", "scratch")
                    },
                    "transfer_significantly_better": [
                        r["seed"] for r in sig if r["transfer_vs_scratch"]["delta_images"] > 0
                    ],  # fmt: skip
                    "transfer_significantly_worse": [
                        r["seed"] for r in sig if r["transfer_vs_scratch"]["delta_images"] < 0
                    ],  # fmt: skip
                }
            )
    return out


def markdown(result: dict) -> str:
    from tabulate import tabulate

    cells = [
        [s["recipe"], s["train_per_class"], len(s["seeds"]), s["frozen"], s["transfer"], s["scratch"],
         s["transfer_significantly_better"] or "-", s["transfer_significantly_worse"] or "-"]
        for s in result["summary"]
    ]  # fmt: skip
    rows = [
        [r["recipe"], r["train_per_class"], r["seed"], r["test_images"], f"{r['frozen']:.3f}", f"{r['transfer']:.3f}",
         f"{r['scratch']:.3f}", f"{r['transfer_vs_scratch']['delta_images']:+d} (p {r['transfer_vs_scratch']['mcnemar_p']:.3g})",  # noqa: E501
         r["transfer_lr"], r["scratch_lr"]]
        for r in result["rows"]
    ]  # fmt: skip
    return "\n".join(
        [
            "# Our own backbone as a transfer source on the digits (0-4 -> 5-9)",
            "",
            f"{result['note']} Code at {result['commit']}; {result['machine']}; {result['seconds']} s.",
            "",
            tabulate(
                cells,
                [
                    "recipe",
                    "images/class",
                    "seeds",
                    "frozen",
                    "transfer",
                    "scratch",
                    "transfer sig. better",
                    "transfer sig. worse",
                ],
                "github",
            ),  # noqa: E501
            "",
            "## Rows",
            "",
            tabulate(
                rows,
                [
                    "recipe",
                    "images/class",
                    "seed",
                    "test images",
                    "frozen",
                    "transfer",
                    "scratch",
                    "transfer - scratch (images, McNemar p)",
                    "transfer lr",
                    "scratch lr",
                ],
                "github",
            ),  # noqa: E501
            "",
        ]
    )
