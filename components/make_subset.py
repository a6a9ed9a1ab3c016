"""make_subset: pick N train / val / test images per class from a raw image source, deterministically.

Splits are stable: an image's split comes from a hash of its path in the source and `make_subset.seed`
(`tlpipe.data.splits`), so adding or removing photos never moves another photo between train, val and test.

Reads a class-folder or Kaggle-flat tree from a folder, a .zip or an s3:// prefix; every chosen file is
decoded in full, odd formats are converted to 8-bit PNG, and unusable or duplicate files are quarantined
(listed with the reason, never silently dropped) and replaced by the next candidate. The chosen images are
written as a few TFRecord shards per split, listed one row per image in manifest.csv.
"""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tlpipe.cli import parser, run_main, step_params
from tlpipe.console import progress
from tlpipe.contracts import MANIFEST, QUARANTINE, SHARDS_DIR, SPLITS, SubsetSummary
from tlpipe.data.images import BadImage, ImageFacts, normalise
from tlpipe.data.records import ShardWriter
from tlpipe.data.sources import Source, classify, open_source
from tlpipe.data.splits import home_splits, stable_key
from tlpipe.errors import DataError
from tlpipe.fs import atomic_dir
from tlpipe.sections import MakeSubsetConfig, StorageConfig

PARAMS = ("data.layout", "make_subset", "storage")
MANIFEST_COLUMNS = (
    "path",
    "class",
    "split",
    "sha256",
    "width",
    "height",
    "channels",
    "bytes",
    "source_path",
    "source_mode",
    "shard",
)


@dataclass(frozen=True)
class Chosen:
    """One accepted image."""

    cls: str
    source_path: str
    facts: ImageFacts
    data: bytes


@dataclass(frozen=True)
class Quarantined:
    """One rejected file and why."""

    cls: str
    source_path: str
    reason: str


def _inspect(source: Source, rel: str, max_pixels: int) -> tuple[bytes, ImageFacts] | str:
    try:
        return normalise(source.read(rel), max_pixels)
    except BadImage as exc:
        return str(exc)


def _accept(
    source: Source,
    cls: str,
    order: list[str],
    need: int,
    max_pixels: int,
    seen: dict[str, str],
    pool: ThreadPoolExecutor,
    bar,
) -> tuple[list[Chosen], list[Quarantined], list[str]]:
    """Walk `order` until `need` usable, unique images are accepted; returns them, the rejects and the rest."""
    chosen: list[Chosen] = []
    rejected: list[Quarantined] = []
    position = 0
    while len(chosen) < need and position < len(order):
        batch = order[position : position + need - len(chosen)]
        position += len(batch)
        for rel, result in zip(batch, pool.map(lambda r: _inspect(source, r, max_pixels), batch), strict=True):
            if isinstance(result, str):
                rejected.append(Quarantined(cls, rel, result))
                continue
            data, facts = result
            if facts.sha256 in seen:
                rejected.append(Quarantined(cls, rel, f"duplicate of {seen[facts.sha256]}"))
                continue
            seen[facts.sha256] = rel
            chosen.append(Chosen(cls, rel, facts, data))
            bar.update(1)
    return chosen, rejected, order[position:]


def choose_class(
    source: Source,
    cls: str,
    candidates: list[str],
    counts: dict[str, int],
    cfg: MakeSubsetConfig,
    seen: dict[str, str],
    workers: int = 8,
) -> tuple[dict[str, list[Chosen]], list[Quarantined], int]:
    """Fill each split from the files whose home split it is (stable keys), test first.

    A split whose home files run short borrows the lowest-keyed unused files of the other splits, so a small
    class still fills; those borrowed images are the only ones a later data version may move (counted and
    reported). Returns the chosen images per split, the quarantined files and the number borrowed.
    """
    homes = home_splits(candidates, counts, cfg.seed, cls)
    chosen: dict[str, list[Chosen]] = {}
    rejected: list[Quarantined] = []
    spare: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, progress(sum(counts.values()), f"make_subset {cls}") as bar:
        for split in ("test", "val", "train"):
            chosen[split], bad, rest = _accept(
                source, cls, homes[split], counts[split], cfg.max_pixels, seen, pool, bar
            )
            rejected += bad
            spare += rest
        spare.sort(key=lambda rel: stable_key(cfg.seed, cls, rel))
        borrowed = 0
        for split in ("test", "val", "train"):
            short = counts[split] - len(chosen[split])
            if short > 0 and spare:
                extra, bad, spare = _accept(source, cls, spare, short, cfg.max_pixels, seen, pool, bar)
                chosen[split] += extra
                rejected += bad
                borrowed += len(extra)
    return chosen, rejected, borrowed


def _target_name(chosen: Chosen, used: set[str]) -> str:
    stem = Path(chosen.source_path).stem
    name = f"{stem}{chosen.facts.suffix}"
    if name in used:
        name = f"{stem}-{chosen.facts.sha256[:10]}{chosen.facts.suffix}"
    used.add(name)
    return name


def make_subset(
    source: Source, layout: str, cfg: MakeSubsetConfig, out_dir: Path
) -> tuple[SubsetSummary, list[Quarantined]]:
    """Write `out_dir/shards/<split>-NNNNN.tfrecord`, `manifest.csv`, `quarantine.csv` and `summary.json`.

    The images of each split go into a few large shards (tlpipe.data.records), in manifest order: classes
    sorted, names sorted within a class. One class's chosen images are in memory at a time.
    """
    listing = classify(source, layout)
    counts = {"train": cfg.train_per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
    need = sum(counts.values())
    rows: list[dict] = []
    quarantine: list[Quarantined] = []
    seen: dict[str, str] = {}
    borrowed = 0
    writers = {split: ShardWriter(out_dir / SHARDS_DIR, split) for split in SPLITS}
    try:
        for cls, candidates in listing.files.items():  # sorted by class (classify)
            chosen, rejected, moved = choose_class(source, cls, candidates, counts, cfg, seen)
            quarantine += rejected
            borrowed += moved
            usable = sum(len(items) for items in chosen.values())
            if usable < need:
                raise DataError(
                    f"class {cls!r} in {source.description} has {usable} usable images "
                    f"({len(candidates)} files, {len(rejected)} quarantined) but make_subset asks {need} "
                    f"({counts['train']} train + {counts['val']} val + {counts['test']} test); "
                    "lower make_subset.*_per_class or add images"
                )
            used: set[str] = set()
            for split in SPLITS:
                named = sorted(
                    ((f"{split}/{cls}/{_target_name(item, used)}", item) for item in chosen[split]),
                    key=lambda pair: pair[0],
                )
                for rel, item in named:
                    shard = writers[split].write(rel, item.data)
                    rows.append(
                        {
                            "path": rel,
                            "class": cls,
                            "split": split,
                            "sha256": item.facts.sha256,
                            "width": item.facts.width,
                            "height": item.facts.height,
                            "channels": item.facts.channels,
                            "bytes": item.facts.bytes,
                            "source_path": item.source_path,
                            "source_mode": item.facts.source_mode,
                            "shard": shard,
                        }
                    )
    finally:
        for writer in writers.values():
            writer.close()
    rows.sort(key=lambda r: SPLITS.index(r["split"]))  # stable: within a split, the records' order
    with open(out_dir / MANIFEST, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _write_quarantine(source, quarantine, out_dir)
    summary = SubsetSummary(
        source=source.description,
        layout=listing.layout,
        classes=list(listing.files),
        requested=counts,
        images=len(rows),
        quarantined=len(quarantine),
        ignored_files=len(listing.ignored),
        borrowed=borrowed,
    )
    summary.write(out_dir)
    return summary, quarantine


def _write_quarantine(source: Source, items: list[Quarantined], out_dir: Path) -> None:
    """List rejected files (and keep a copy of each under quarantine/ for inspection)."""
    items = sorted(items, key=lambda q: (q.cls, q.source_path))
    with open(out_dir / QUARANTINE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=("class", "source_path", "reason"), lineterminator="\n")
        writer.writeheader()
        writer.writerows({"class": q.cls, "source_path": q.source_path, "reason": q.reason} for q in items)
    for number, item in enumerate(items):
        target = out_dir / "quarantine" / item.cls / f"{number:04d}_{Path(item.source_path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read(item.source_path))


def run(
    raw: str, layout: str, cfg: MakeSubsetConfig, storage: StorageConfig, out_dir: Path
) -> tuple[SubsetSummary, list[Quarantined]]:
    """Open the raw source (folder, zip or s3://) and build the subset into `out_dir` atomically."""
    source = open_source(
        raw, endpoint_url=storage.endpoint_url, max_attempts=storage.max_attempts, max_zip_bytes=cfg.max_zip_bytes
    )
    with atomic_dir(out_dir) as staged:
        return make_subset(source, layout, cfg, staged)


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.make_subset --raw data/raw/digits/target --subset data/subset`."""
    p = parser("make_subset", __doc__)
    p.add_argument("--raw", required=True, help="the raw images: a folder, a .zip, or s3://bucket/prefix[.zip]")
    p.add_argument("--subset", required=True, help="subset folder to write")
    args = p.parse_args(argv)
    params = step_params(args, "make_subset", PARAMS)
    from tlpipe.tracking.runs import step_run

    with step_run(params, "make_subset") as _:
        import mlflow

        summary, quarantine = run(args.raw, params.data.layout, params.make_subset, params.storage, Path(args.subset))
        mlflow.log_metrics({"images": summary.images, "quarantined": summary.quarantined})
    print(
        f"make_subset: {summary.images} images in {len(summary.classes)} classes "
        f"({summary.layout} layout), {summary.quarantined} quarantined -> {args.subset}"
    )
    if summary.borrowed:
        print(
            f"make_subset: {summary.borrowed} images placed outside their stable split (a class has few spare "
            "images); a later data version may move those, and only those, between splits"
        )
    for item in quarantine[:5]:
        print(f"make_subset: quarantined {item.cls}/{Path(item.source_path).name}: {item.reason}")
    if len(quarantine) > 5:
        print(f"make_subset: ... and {len(quarantine) - 5} more, listed in {Path(args.subset) / QUARANTINE}")


if __name__ == "__main__":
    run_main(main)
