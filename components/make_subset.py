"""make_subset: pick N train / val / test images per class from a raw image source, deterministically.

Reads a class-folder or Kaggle-flat tree from a folder, a .zip or an s3:// prefix; every chosen file is
decoded in full, odd formats are converted to 8-bit PNG, and unusable or duplicate files are quarantined
(listed with the reason, never silently dropped) and replaced by the next candidate. The chosen images are
written as a few TFRecord shards per split, listed one row per image in manifest.csv.
"""

from __future__ import annotations

import csv
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import MANIFEST, QUARANTINE, SHARDS_DIR, SPLITS, SubsetSummary
from tlpipe.data.images import BadImage, ImageFacts, normalise
from tlpipe.data.records import ShardWriter
from tlpipe.data.sources import Source, classify, open_source
from tlpipe.errors import DataError
from tlpipe.fs import atomic_dir
from tlpipe.sections import MakeSubsetConfig, StorageConfig

PARAMS = ("data.layout", "make_subset", "storage")
MANIFEST_COLUMNS = ("path", "class", "split", "sha256", "width", "height", "channels", "bytes",
                    "source_path", "source_mode", "shard")


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


def choose_class(source: Source, cls: str, candidates: list[str], need: int, cfg: MakeSubsetConfig,
                 seen: dict[str, str], workers: int = 8) -> tuple[list[Chosen], list[Quarantined]]:
    """Walk a seeded shuffle of `candidates` until `need` usable, unique images are accepted."""
    order = sorted(candidates)
    random.Random(f"{cfg.seed}:{cls}").shuffle(order)
    chosen: list[Chosen] = []
    rejected: list[Quarantined] = []
    position = 0
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=need, desc=f"make_subset {cls}", unit="img", leave=False
    ) as bar:
        while len(chosen) < need and position < len(order):
            batch = order[position : position + need - len(chosen)]
            position += len(batch)
            for rel, result in zip(batch, pool.map(lambda r: _inspect(source, r, cfg.max_pixels), batch),
                                   strict=True):
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
    return chosen, rejected


def _target_name(chosen: Chosen, used: set[str]) -> str:
    stem = Path(chosen.source_path).stem
    name = f"{stem}{chosen.facts.suffix}"
    if name in used:
        name = f"{stem}-{chosen.facts.sha256[:10]}{chosen.facts.suffix}"
    used.add(name)
    return name


def make_subset(source: Source, layout: str, cfg: MakeSubsetConfig,
                out_dir: Path) -> tuple[SubsetSummary, list[Quarantined]]:
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
    writers = {split: ShardWriter(out_dir / SHARDS_DIR, split) for split in SPLITS}
    try:
        for cls, candidates in listing.files.items():  # sorted by class (classify)
            chosen, rejected = choose_class(source, cls, candidates, need, cfg, seen)
            quarantine += rejected
            if len(chosen) < need:
                raise DataError(
                    f"class {cls!r} in {source.description} has {len(chosen)} usable images "
                    f"({len(candidates)} files, {len(rejected)} quarantined) but make_subset asks {need} "
                    f"({counts['train']} train + {counts['val']} val + {counts['test']} test); "
                    "lower make_subset.*_per_class or add images"
                )
            used: set[str] = set()
            start = 0
            for split in SPLITS:
                named = sorted(((f"{split}/{cls}/{_target_name(item, used)}", item)
                                for item in chosen[start : start + counts[split]]), key=lambda pair: pair[0])
                for rel, item in named:
                    shard = writers[split].write(rel, item.data)
                    rows.append({"path": rel, "class": cls, "split": split, "sha256": item.facts.sha256,
                                 "width": item.facts.width, "height": item.facts.height,
                                 "channels": item.facts.channels, "bytes": item.facts.bytes,
                                 "source_path": item.source_path, "source_mode": item.facts.source_mode,
                                 "shard": shard})
                start += counts[split]
    finally:
        for writer in writers.values():
            writer.close()
    rows.sort(key=lambda r: SPLITS.index(r["split"]))  # stable: within a split, the records' order
    with open(out_dir / MANIFEST, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _write_quarantine(source, quarantine, out_dir)
    summary = SubsetSummary(source=source.description, layout=listing.layout, classes=list(listing.files),
                            requested=counts, images=len(rows), quarantined=len(quarantine),
                            ignored_files=len(listing.ignored))
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


def run(raw: str, layout: str, cfg: MakeSubsetConfig, storage: StorageConfig,
        out_dir: Path) -> tuple[SubsetSummary, list[Quarantined]]:
    """Open the raw source (folder, zip or s3://) and build the subset into `out_dir` atomically."""
    source = open_source(raw, endpoint_url=storage.endpoint_url, max_attempts=storage.max_attempts,
                         max_zip_bytes=cfg.max_zip_bytes)
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

        summary, quarantine = run(args.raw, params.data.layout, params.make_subset, params.storage,
                                  Path(args.subset))
        mlflow.log_metrics({"images": summary.images, "quarantined": summary.quarantined})
    print(f"make_subset: {summary.images} images in {len(summary.classes)} classes "
          f"({summary.layout} layout), {summary.quarantined} quarantined -> {args.subset}")
    for item in quarantine[:5]:
        print(f"make_subset: quarantined {item.cls}/{Path(item.source_path).name}: {item.reason}")
    if len(quarantine) > 5:
        print(f"make_subset: ... and {len(quarantine) - 5} more, listed in {Path(args.subset) / QUARANTINE}")


if __name__ == "__main__":
    run_main(main)
