"""The regimes benchmark's verdict per seed and its markdown table (regimes.md)."""

from __future__ import annotations

from pathlib import Path


def met(rows: list[dict]) -> dict[int, bool]:
    """Per seed: final >= max(frozen, scratch) - 1/N_test."""
    out = {}
    for seed in sorted({r["seed"] for r in rows}):
        acc = {r["regime"]: r["accuracy"] for r in rows if r["seed"] == seed}
        n = next(r["test_images"] for r in rows if r["seed"] == seed)
        out[seed] = acc["final"] >= max(acc["frozen_features"], acc["scratch"]) - 1.0 / n - 1e-9
    return out


def write_md(result: dict, path: Path) -> None:
    """regimes.md: the table of every variant's rows and the goal per seed."""
    lines = [
        f"Goal: {result['goal']}. Machine: {result['machine'].get('cpu_model', '')}, "
        f"{result['machine'].get('usable_cores', '')} cores.",
        "",
    ]
    for name, info in sorted(result["variants"].items(), key=lambda item: item[0] != "default"):
        rows = [r for r in result["rows"] if r["variant"] == name]
        lines += [
            f"## {name}",
            "",
            f"Overrides of {info.get('based_on', 'params.yaml')}: "
            f"{' '.join(info['overrides']) or '(none)'}" + (f"; pinned: {info['pin']}" if info.get("pin") else ""),
            f"Goal met per seed: {info['met']}; {info['seconds']:.0f} s for {len(info['met'])} runs"
            + (f"; code at `{info['commit']}`." if info.get("commit") else "."),
            "",
            "| seed | final | frozen | scratch | final - best baseline | final regime | frozen layers | train_bn "
            "| lr | final best epoch | final best val acc / loss | scratch best epoch | tune best (trial) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for seed in sorted({r["seed"] for r in rows}):
            by = {r["regime"]: r for r in rows if r["seed"] == seed}
            f, s = by["final"], by["scratch"]
            margin = f["accuracy"] - max(by["frozen_features"]["accuracy"], s["accuracy"])
            tune = (
                f"{f['tune_metric']} {f['tune_best_value']:.4f} ({f['tune_trial']})"
                if f["tune_best_value"] is not None
                else "pinned"
            )
            lr = f"{f['learning_rate']:.2e}" if f["learning_rate"] is not None else ""
            fv = (
                f"{f['best_val_accuracy']:.3f} / {f['best_val_loss']:.4f}"
                if f["best_val_accuracy"] is not None and f["best_val_loss"] is not None
                else ""
            )
            lines.append(
                f"| {seed} | {f['accuracy']:.3f} | {by['frozen_features']['accuracy']:.3f} | "
                f"{s['accuracy']:.3f} | {margin:+.3f} | {f['final_regime']} | {f['frozen_layers']} "
                f"({f['boundary']}) | {f['train_bn']} | {lr} | {f['best_epoch']} | {fv} | "
                f"{s['best_epoch']} | {tune} |"
            )
        failed = [f"seed {r['seed']}: {r['error']}" for r in rows if r["regime"] == "final" and r.get("error")]
        lines += ["", f"A step after evaluate failed (rows kept): {'; '.join(failed)}"] if failed else []
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
