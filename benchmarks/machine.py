"""What machine a benchmark ran on, how busy it was, and where its report goes: what every benchmark report carries."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def commit() -> str:
    """`git rev-parse --short HEAD`, with "-dirty" when tracked files differ from it.

    benchmarks/results/ does not count: benchmarks rewrite it as they run, and it is not code.
    """
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def machine_facts() -> dict:
    """Cores, CPU, library versions: what the numbers depend on."""
    import keras
    import tensorflow as tf

    try:
        import tf_keras

        tf_keras_version = tf_keras.__version__
    except ImportError:
        tf_keras_version = None
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    quota = None
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            quota = round(int(text[0]) / int(text[1]), 2)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os_cpu_count": os.cpu_count(),
        "cgroup_cpu_quota": quota,
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf_keras": tf_keras_version,
        "numpy": np.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def machine() -> str:
    """CPU model and core count, as the other benchmarks record it."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{cpu}, {os.cpu_count()} cores"


def write_report(out: Path, result: dict, markdown: Callable[[dict], str]) -> None:
    """`out` (JSON) and the markdown report beside it (`out` with .md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
