"""Stable splits: an image's split comes from its path in the source and the seed, never from the other files.

make_subset fills each split from the images whose home split it is; adding or removing photos therefore never
moves another photo between train, val and test (a new data version keeps the test set the champion was
judged on, apart from the images it adds).
"""

from __future__ import annotations

from tlpipe.contracts import SPLITS
from tlpipe.fingerprint import unit_interval


def stable_key(seed: int, cls: str, rel: str) -> float:
    """A number in [0, 1) fixed by the image's path in its source and the seed: it decides the image's split.

    Hand-written (a few lines of hashlib) because the split must not depend on which other files exist:
    sklearn's and TFDS's splitters shuffle the list they are given, so one added photo moves others.
    """
    return unit_interval(seed, cls, rel)


def home_splits(candidates: list[str], counts: dict[str, int], seed: int, cls: str) -> dict[str, list[str]]:
    """Each file's own split, from its stable key and the requested proportions; each list in key order.

    Adding or removing files never changes another file's home split.
    """
    need = sum(counts.values())
    bounds, edge = [], 0.0
    for split in SPLITS:
        edge += counts[split] / need
        bounds.append((edge, split))
    homes: dict[str, list[str]] = {split: [] for split in SPLITS}
    for key, rel in sorted((stable_key(seed, cls, rel), rel) for rel in candidates):
        homes[next((split for bound, split in bounds if key < bound), SPLITS[-1])].append(rel)
    return homes
