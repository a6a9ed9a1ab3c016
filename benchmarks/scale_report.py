"""The scale benchmark's verdict (largest size vs smallest, per step) and its markdown (scale.md)."""

from __future__ import annotations

from pathlib import Path

STEPS = ("make_subset", "augment", "extract_features", "tune_trial", "fine_tune_epoch")
RSS_GOAL, SPEED_GOAL = 1.5, 0.8  # largest size vs smallest: peak RSS <= 1.5x, img/s >= 0.8x


def verdict(rows: list[dict]) -> dict:
    """Largest size vs smallest, per step: RSS and throughput ratios against the goals."""
    out = {}
    for step in STEPS:
        mine = sorted((r for r in rows if r["step"] == step), key=lambda r: r["images"])
        if len(mine) < 2:
            continue
        small, large = mine[0], mine[-1]
        rss, speed = large["peak_rss_mb"] / small["peak_rss_mb"], large["img_per_s"] / small["img_per_s"]
        out[step] = {
            "compared": f"{large['images']} vs {small['images']}",
            "rss_ratio": round(rss, 3),
            "speed_ratio": round(speed, 3),
            "rss_ok": rss <= RSS_GOAL,
            "speed_ok": speed >= SPEED_GOAL,
        }
    return out


def write_md(result: dict, path: Path) -> None:
    """A table of the rows and the verdict."""
    lines = [
        "| images | step | peak RSS MB | img/s (net of start-up) | img/s (wall) | wall s | disk MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['images']} | {r['step']} | {r.get('peak_rss_mb', '')} | {r.get('img_per_s', '')} | "
        f"{r.get('img_per_s_wall', '')} | {r.get('wall_s', '')} | {r['disk_mb']} |"
        for r in result["rows"]
    ]
    lines += [
        "",
        f"Goals: peak RSS <= {RSS_GOAL}x and img/s >= {SPEED_GOAL}x of the smallest size.",
        "",
        "| step | compared | RSS ratio | speed ratio | RSS ok | speed ok |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s} | {v['compared']} | {v['rss_ratio']} | {v['speed_ratio']} | {v['rss_ok']} | {v['speed_ok']} |"
        for s, v in result["verdict"].items()
    ]
    trials = [r for r in result["rows"] if r["step"] == "tune_trial" and "cache" in r]
    if trials:
        lines += [
            "",
            "Cached tuning trial at 96 px (tune_trial; the full-model trial timed beside it, same process):",
            "",
            "| images | cache | activations GiB | cached img/s | speed-up vs full | FLOPs limit | "
            "speed-up / limit | peak RSS MB | RSS added by the cached trial MB (per activation byte) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['images']} | {r['cache']} | {r['activation_bytes'] / 2**30:.2f} | {r['img_per_s']} | "
            f"{r['speedup_vs_full']} | {r['flops_limit']} | {r['speedup_of_limit']} | {r['peak_rss_mb']} | "
            f"{r['cached_rss_delta_mb']} ({r['cached_rss_delta_per_activation_byte']}) |"
            for r in trials
        ]
    path.write_text("\n".join(lines) + "\n")
