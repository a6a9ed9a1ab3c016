"""The model registry as the source of truth for production: promote, rollback, status, predict.

    python -m operators.registry status
    python -m operators.registry promote VERSION --reason "why" [--force]   (re-runs the gate vs @champion now)
    python -m operators.registry rollback --reason "why"
    python -m operators.registry predict FOLDER [--version N | --alias champion] --out predictions.csv

Aliases: `@challenger` is the newest registered candidate (set by `register`), `@champion` the model in
production, `@previous` the champion before it (what `rollback` returns to). Every move is recorded on the
versions as tags: who, when and why.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tlpipe.cli import params_from, parser, run_main
from tlpipe.errors import PipelineError
from tlpipe.fs import atomic_file
from tlpipe.tracking.registry import CHAMPION, connect, get_version, load_version_model, promote, rollback, status_rows


def format_table(rows: list[dict]) -> str:
    """An aligned text table (tabulate's plain format: no rules, two spaces between columns)."""
    from tabulate import tabulate

    return tabulate(rows, headers="keys", tablefmt="plain", disable_numparse=True) if rows else "(no versions)"


def image_files(folder: Path) -> list[Path]:
    """The image files under a folder (recursive, sorted)."""
    from tlpipe.data.images import is_image_name

    if not folder.is_dir():
        raise PipelineError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name))
    if not files:
        raise PipelineError(f"{folder}: no .jpg/.png images found")
    return files


def predict(model, classes: list[str], files: list[Path], max_pixels: int) -> list[dict]:
    """Class and confidence for each file, resized to the model's input size.

    Files go through the same checks and conversions as make_subset (CMYK, 16-bit, RGBA are converted;
    empty, corrupt or oversized files are not predicted): an unusable file gets a row with its reason.
    """
    import tempfile

    from tlpipe.data.datasets import decode_images
    from tlpipe.data.images import BadImage, normalise

    size = int(model.inputs[0].shape[1])
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        usable, reasons = {}, {}
        for i, path in enumerate(files):
            try:
                data, facts = normalise(path.read_bytes(), max_pixels)
            except BadImage as exc:
                reasons[i] = str(exc)
                continue
            usable[i] = Path(tmp) / f"{i}{facts.suffix}"
            usable[i].write_bytes(data)
        images = decode_images([str(p) for p in usable.values()], size, desc="predict")
        probs = {}
        if usable:
            probs = dict(zip(usable, np.asarray(model.predict(images.astype("float32"), verbose=0)), strict=True))
    rows = []
    for i, path in enumerate(files):
        p = probs.get(i)
        row = {"path": str(path), "predicted": "", "confidence": "", "error": reasons.get(i, "")}
        if p is not None:
            row.update(predicted=classes[int(p.argmax())], confidence=float(p.max()))
        row.update({f"p_{c}": float(p[k]) if p is not None else "" for k, c in enumerate(classes)})
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI: status, promote, rollback, predict."""
    p = parser("registry", __doc__, package="operators")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="versions with aliases, gate status and key metrics")
    pr = sub.add_parser("promote", help="make VERSION the @champion")
    pr.add_argument("version", help="version number or @alias (e.g. @challenger)")
    pr.add_argument("--reason", required=True)
    pr.add_argument("--force", action="store_true", help="promote even though the gate did not pass")
    pr.add_argument(
        "--subset",
        type=Path,
        default=Path("data/subset"),
        help="the version's make_subset folder, read only when the current champion was scored on "
        "another test set (default: data/subset)",
    )
    rb = sub.add_parser("rollback", help="point @champion back at @previous")
    rb.add_argument("--reason", required=True)
    pd_ = sub.add_parser("predict", help="predict a folder of images with a registry version")
    pd_.add_argument("folder", type=Path)
    pd_.add_argument("--version", default=f"@{CHAMPION}", help="number or @alias (default: @champion)")
    pd_.add_argument("--out", type=Path, default=Path("reports/predict/predictions.csv"))
    args = p.parse_args(argv)
    params = params_from(args)
    name = params.registry.model_name
    if args.command == "predict":
        files = image_files(args.folder)  # bad input fails before the registry is contacted
    client = connect(params)
    if args.command == "status":
        print(f"model {name} at {client.tracking_uri}")
        print(format_table(status_rows(client, name)))
    elif args.command == "promote":
        import tempfile

        from operators.review import gate_now

        with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
            now = gate_now(client, params, get_version(client, name, args.version), Path(tmp), args.subset)
        done = promote(client, name, args.version, args.reason, args.force, now)
        versus = (
            f"gate {done['status']} vs current champion v{now['champion_version']}"
            if now["champion_version"]
            else f"gate {done['status']} (no champion before)"
        )
        print(
            f"registry: {name} @champion -> v{done['champion']} ({versus}"
            + ("; FORCED past a failed gate" if args.force and done["status"] != "passed" else "")
            + (f"; @previous = v{done['previous']})" if done["previous"] else ")")
        )
    elif args.command == "rollback":
        done = rollback(client, name, args.reason)
        print(f"registry: {name} @champion -> v{done['champion']} (rolled back from v{done['demoted']})")
    else:
        version = get_version(client, name, args.version)
        model, classes = load_version_model(client, name, version)
        rows = predict(model, classes, files, params.make_subset.max_pixels)
        with atomic_file(args.out) as staged, open(staged, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        bad = sum(1 for r in rows if r["error"])
        print(
            f"registry: {len(rows) - bad} predictions by {name} v{version.version} -> {args.out}"
            + (f"; {bad} unusable files listed with their reason" if bad else "")
        )


if __name__ == "__main__":
    run_main(main)
