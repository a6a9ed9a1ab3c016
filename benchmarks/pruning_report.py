"""The pruning benchmark's verdict and markdown: judged against its goals, with why each candidate won or lost."""

from __future__ import annotations

WALL_GOAL = 0.6  # issue 22: wall time, which is what a user pays, beside the epochs


EPOCHS_GOAL = 0.6


def judge(results: dict[int, dict]) -> list[dict]:
    rows = []
    for seed, by in sorted(results.items()):
        ref = by["none"]
        for name, res in by.items():
            n = res["final"]["test_images"]
            ratio = res["epochs"] / ref["epochs"]
            short = ref["final"]["test_accuracy"] - res["final"]["test_accuracy"]
            wall = res["seconds"] / ref["seconds"] if ref["seconds"] else 1.0
            # Both studies chose the same params: the two final models are one model, so the seed says nothing
            # about images a pruner loses; it is reported as "same params", not as "0 images lost".
            same = name != "none" and res["params"] == ref["params"]
            rows.append(
                {
                    "seed": seed,
                    "pruner": name,
                    "epochs": res["epochs"],
                    "ref_epochs": ref["epochs"],
                    "epochs_ratio": round(ratio, 3),
                    "wall_ratio": round(wall, 3),
                    "same_params": same,
                    "wall_ok": wall <= WALL_GOAL,
                    "best": round(res["best"], 4),
                    "test": res["final"]["test_accuracy"],
                    "ref_test": ref["final"]["test_accuracy"],
                    "test_short_images": round(short * n, 1),
                    "states": res["states"],
                    "params": res["params"],
                    "seconds": res["seconds"],
                    "ok": ratio <= EPOCHS_GOAL and wall <= WALL_GOAL and short <= 1.0 / n + 1e-9,
                }
            )
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    names = list(dict.fromkeys(r["pruner"] for r in result["rows"]))
    seeds = sorted({r["seed"] for r in result["rows"]})
    lines = [
        "# Pruning judged on the final model",
        "",
        f"{m['cores']} cores ({m['cpu']}), TensorFlow {m['tensorflow']}, Optuna {m['optuna']}. Load average "
        f"at start {result['load']['start']}, at end {result['load']['end']}. {result['parameters']}. "
        f"Run took {result['wall_s']:.0f} s.",
        "",
        f"Goal per seed: epochs <= {EPOCHS_GOAL} x unpruned, final test accuracy >= unpruned - 1 test image. "
        "Cell: epochs (ratio to unpruned, wall-time ratio), best val_loss, final test accuracy (test images "
        'short of the unpruned study\'s final model, negative = better; "same params" when both studies '
        f"chose the same params, so the seed cannot show a loss). Wall-time goal <= {WALL_GOAL}.",
        "",
        "| pruner | " + " | ".join(f"seed {s}" for s in seeds) + " | seeds met | mean epochs ratio |",
        "|---|" + "---|" * len(seeds) + "---|---|",
    ]
    for name in names:
        cells, met, ratios = [], 0, []
        for s in seeds:
            r = next(x for x in result["rows"] if x["pruner"] == name and x["seed"] == s)
            met += r["ok"]
            ratios.append(r["epochs_ratio"])
            short = (
                ""
                if name == "none"
                else " (same params)"
                if r.get("same_params")
                else f" ({r['test_short_images']:.0f} short)"
            )
            wall = f", wall {r['wall_ratio']:.2f}" if "wall_ratio" in r and name != "none" else ""
            cells.append(
                f"{r['epochs']} ({r['epochs_ratio']:.2f}{wall}), {r['best']:.4f}, {r['test']:.3f}{short}"
                f"{' ✓' if r['ok'] and name != 'none' else ''}"
            )
        verdict = "reference" if name == "none" else f"{met}/{len(seeds)}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} | {sum(ratios) / len(ratios):.3f} |")
    lines += ["", f"Decision: {result['decision']}", "", *[f"- {n}" for n in result.get("notes", [])]]
    return "\n".join(lines) + "\n"


def _point(t: dict) -> tuple:
    """The point TPE proposed for a trial (regime, freeze ratio, learning rate, train_bn): two studies' paths."""
    return t["regime"], round(t["freeze_ratio"] or 0.0, 6), float(f"{t['lr']:.6g}"), bool(t["train_bn"])


def _near(a: dict, b: dict) -> bool:
    """Same regime, freeze ratio and train_bn, learning rate within 10%: the same point for the final model."""
    return _point(a)[0:2] == _point(b)[0:2] and _point(a)[3] == _point(b)[3] and abs(a["lr"] / b["lr"] - 1) <= 0.1


def _show(t: dict) -> str:
    return (
        f"{t['regime']}, freeze {t['freeze_ratio'] or 0.0:.2f}, lr {t['lr']:.2g}{', train_bn' if t['train_bn'] else ''}"
    )


def why(by: dict, name: str, row: dict, cap: int) -> str:
    """Why a candidate misses the goal on one seed, from the trials of its study and the unpruned one."""
    ref, res = by["none"], by[name]
    rt, pt = ref["trials"], res["trials"]
    pruned = [t for t in pt if t["state"] == "PRUNED"]
    first_pruned = pruned[0]["n"] if pruned else None
    diverge = next((i for i, (a, b) in enumerate(zip(rt, pt, strict=False)) if _point(a) != _point(b)), None)
    path = (
        "the same points as the unpruned study in every trial"
        if diverge is None
        else f"the TPE path leaves the unpruned study's at trial {diverge}"
        + (
            f" (first pruned trial {first_pruned}: TPE then sees a pruned trial's last value)"
            if first_pruned is not None and first_pruned < diverge
            else " before any trial was pruned (trial values are not bit-reproducible: TF op determinism is off)"
            if first_pruned is None or first_pruned >= diverge
            else ""
        )
    )
    parts = []
    if row["epochs_ratio"] > EPOCHS_GOAL:
        done = [t for t in pt if t["state"] == "COMPLETE"]
        parts.append(
            f"epochs {row['epochs']} of {row['ref_epochs']} ({row['epochs_ratio']:.2f} > {EPOCHS_GOAL}; "
            f"the goal allows {int(EPOCHS_GOAL * row['ref_epochs'] + 1e-9)}): "
            f"pruned {len(pruned)} of {len(pt)} trials; the {len(done)} completed ran "
            f"{sum(t['epochs'] or 0 for t in done)} epochs ({sum((t['epochs'] or 0) >= cap for t in done)} "
            f"of them to the {cap}-epoch cap), the pruned {sum(t['epochs'] or 0 for t in pruned)}"
        )
    if not row.get("wall_ok", True):
        parts.append(
            f"wall time {row['wall_ratio']:.2f} of the unpruned study's (> {WALL_GOAL}; seconds, unlike "
            "epochs, also move with the machine's load)"
        )
    if row.get("same_params"):
        parts.append("both studies chose the same params: one final model, no evidence about lost images")
    elif row["test_short_images"] > 1.0 + 1e-6:
        rb, pb = rt[ref["best_trial"]], pt[res["best_trial"]]
        text = (
            f"final test {row['test']:.3f} vs {row['ref_test']:.3f} ({row['test_short_images']:.0f} images "
            f"short): its best is trial {pb['n']} ({_show(pb)}; val_loss {pb['value']:.4f}), the unpruned "
            f"study's trial {rb['n']} ({_show(rb)}; {rb['value']:.4f} after {rb['epochs']} epochs)"
        )
        same = next((t for t in pt if _near(t, rb)), None)
        if same is None:
            text += f"; that point was never sampled here: {path}"
        elif same["state"] == "PRUNED":
            text += (
                f"; that point (lr {same['lr']:.2g}) was trial {same['n']} here and was pruned after "
                f"{same['epochs']} epochs at {same['value']:.4f}"
            )
        else:
            text += f"; that point ran here as trial {same['n']} ({same['state'].lower()}, {same['value']:.4f})"
        parts.append(text)
    else:
        parts.append(path)
    return "; ".join(parts)


def decide(rows: list[dict], pruners: list[str], n_seeds: int) -> tuple[dict, str]:
    met = {n: all(r["ok"] for r in rows if r["pruner"] == n) for n in pruners if n != "none"}
    winners = [n for n, ok in met.items() if ok]
    mean_ratio = {n: sum(r["epochs_ratio"] for r in rows if r["pruner"] == n) / n_seeds for n in met}
    decision = (
        f"winner {min(winners, key=lambda n: mean_ratio[n])} (meets the goal on every seed run)"
        if winners
        else "no candidate meets the goal on every seed; the default is unchanged"
    )
    return met, decision
