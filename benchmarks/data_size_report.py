"""The grid's report: per-cell means over seeds, the markdown table and the plot (benchmarks/data_size.py).

Split from data_size.py (which runs the cells) to keep both modules small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIMILARITIES = ("near", "far", "seen")  # the panels' order


def significantly_worse(vs: dict | None) -> bool:
    """The final model trails this arm on the test images and McNemar's exact test says p < 0.05."""
    return bool(vs) and vs["delta"] < 0 and vs["mcnemar_p"] < 0.05


def summarize(rows: list[dict]) -> list[dict]:
    """Per (similarity, size): mean of each arm, seeds, and the goal mean final >= max(frozen, scratch) - 1 image.

    A seed counts as significantly worse against evaluate's best baseline or against the tuned scratch arm.
    """
    out = []
    for key in sorted({(r["similarity"], r["train_per_class"]) for r in rows}):
        mine = [r for r in rows if (r["similarity"], r["train_per_class"]) == key]
        mean = {arm: float(np.mean([r[arm] for r in mine])) for arm in ("final", "frozen", "scratch")}
        image = 1.0 / min(r["test_images"] for r in mine)
        worse = [
            r["seed"]
            for r in mine
            if any(significantly_worse(r.get(k)) for k in ("vs_best_baseline", "vs_tuned_scratch"))
        ]
        out.append(
            {
                "similarity": key[0],
                "train_per_class": key[1],
                "seeds": len(mine),
                **mean,
                "goal_met": mean["final"] >= max(mean["frozen"], mean["scratch"]) - image - 1e-9,
                "significantly_worse_seeds": worse,
                "regimes": sorted({chosen(r) for r in mine}),
            }
        )
    return out


def chosen(row: dict) -> str:
    """The model the pipeline handed on: scratch, frozen features (freeze ratio 1), or transfer with its ratio."""
    ratio = row["freeze_ratio"]
    if row["regime"] == "scratch":
        return "scratch"
    return "frozen features" if ratio is not None and ratio >= 1.0 else f"fine-tuned ({ratio or 0:.2f} frozen)"


def markdown(result: dict) -> str:
    """The table of cell means and what each cell's tuner chose."""
    lines = [
        "# Transfer vs data size and similarity",
        "",
        result["note"],
        "",
        "| similarity | images/class | seeds | final | frozen | scratch | goal | sig. worse seeds | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['similarity']} | {s['train_per_class']} | {s['seeds']} | {s['final']:.3f} | "
            f"{s['frozen']:.3f} | {s['scratch']:.3f} | {'met' if s['goal_met'] else '**missed**'} | "
            f"{s['significantly_worse_seeds'] or '-'} | {', '.join(s['regimes'])} |"
        )
    lines += [
        "",
        "## Rows measured",
        "",
        "| similarity | images/class | seed | final | frozen | scratch | test images | chosen | freeze ratio | "
        "vs best baseline (p) | vs tuned scratch (p) | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result["rows"], key=lambda r: (r["similarity"], r["train_per_class"], r["seed"])):
        ratio = "-" if r["freeze_ratio"] is None else f"{r['freeze_ratio']:.2f}"
        seconds = "-" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        lines.append(
            f"| {r['similarity']} | {r['train_per_class']} | {r['seed']} | {r['final']:.3f} | "
            f"{r['frozen']:.3f} | {r['scratch']:.3f} | {r['test_images']} | {chosen(r)} | "
            f"{ratio} | {versus_text(r.get('vs_best_baseline'))} | {versus_text(r.get('vs_tuned_scratch'))} | "
            f"{seconds} |"
        )
    return "\n".join(lines) + "\n"


def versus_text(vs: dict | None) -> str:
    """`name +0.015 (p 0.031)` for a McNemar comparison, `-` when the row has none."""
    if not vs:
        return "-"
    return f"{vs.get('name', '')} {vs['delta']:+.3f} (p {vs['mcnemar_p']:.3g})".strip()


def plot(summary: list[dict], path: Path) -> None:
    """Accuracy vs images per class, one panel per similarity, one line per arm."""
    from tlpipe.reports.plots import pyplot

    plt = pyplot()
    sims = [s for s in SIMILARITIES if any(r["similarity"] == s for r in summary)]
    fig, axes = plt.subplots(1, len(sims), figsize=(5.2 * len(sims), 3.6), squeeze=False)
    for ax, sim in zip(axes[0], sims, strict=True):
        rows = sorted((r for r in summary if r["similarity"] == sim), key=lambda r: r["train_per_class"])
        for arm, style in (("final", "o-"), ("frozen", "s--"), ("scratch", "^:")):
            ax.plot([r["train_per_class"] for r in rows], [r[arm] for r in rows], style, label=arm)
        ax.set_xscale("log")
        ax.set_xlabel("training images per class")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.set_title(f"{sim} target")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
