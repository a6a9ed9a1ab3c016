"""What differs between two registry versions: every step's params, the data, and the tuned values.

A version's training run belongs to one pipeline run (the `tlpipe.run_group` tag); the params of all its
step runs are compared, not only fine_tune's. The data is compared by its lineage (source, dvc.lock hashes,
images per split and class) and by the images themselves: `register` keeps the sha256 of every image per
split (`image_ids.json` in its evidence), so the review can say how many were added and removed.
"""

from __future__ import annotations

import json
from pathlib import Path

from tlpipe.contracts.evidence import IMAGE_IDS_FILE, LINEAGE_FILE, ImageIds

# Params that say where things run, not what was trained.
VOLATILE = ("tracking.", "registry.", "tune.storage", "tune.timeout")
TUNED = ("freeze_ratio", "learning_rate", "regime")


def write_image_ids(out: Path, subset: Path) -> None:
    """The sha256 of every image per split of `subset`, sorted."""
    from tlpipe.data.datasets import read_manifest

    manifest = read_manifest(subset, ["split", "sha256"])
    ImageIds(**{str(split): sorted(rows["sha256"]) for split, rows in manifest.groupby("split")}).write(out)


def step_runs(client, training_run) -> list:
    """The step runs of the training run's pipeline run, oldest first (only the training run without a group)."""
    from tlpipe.tracking.runs import GROUP_TAG

    group = training_run.data.tags.get(GROUP_TAG)
    runs = [training_run]
    if group:
        runs = (
            client.search_runs(
                [training_run.info.experiment_id],
                f"tags.`{GROUP_TAG}` = '{group}' and tags.`tlpipe.role` = 'step'",
                max_results=500,
            )
            or runs
        )
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def backbone_name(client, training_run, identity: str) -> str:
    """The backbone by what it is: `pretrained on <source>, sha256 ...`, or `vgg16, imagenet weights, 96 px`."""
    if not identity.startswith("sha256:"):
        parts = identity.rsplit(":", 2)
        return f"{parts[0]}, {parts[1]} weights, {parts[2]} px input" if len(parts) == 3 else identity or "-"
    short = identity.removeprefix("sha256:")[:12]
    for run in step_runs(client, training_run):
        if run.data.tags.get("tlpipe.step") == "pretrain_backbone":
            tags = run.data.tags
            source = tags.get("data.source.path") or run.data.params.get("pretrain_backbone.source", "?")
            data = f" (data sha256 {tags['data.source.sha256'][:12]})" if "data.source.sha256" in tags else ""
            return f"pretrained by pretrain_backbone on {source}{data}, backbone sha256 {short}"
    return f"a .keras backbone file, sha256 {short}"


def pipeline_params(client, training_run) -> dict[str, str]:
    """The params of every step run of the training run's pipeline run (`step: key`), else its own."""
    out: dict[str, str] = {}
    for run in step_runs(client, training_run):
        step = run.data.tags.get("tlpipe.step", run.info.run_name)
        out.update({f"{step}: {k}": v for k, v in run.data.params.items() if not k.startswith(VOLATILE)})
    return out


def _evidence(client, version, name: str, work: Path):
    from tlpipe.tracking.registry import evidence_file

    path = evidence_file(client, version, name, work / str(version.version))  # None: an older registration
    return json.loads(path.read_text(encoding="utf-8")) if path is not None else None


def _flat_lineage(lineage: dict | None) -> dict[str, str]:
    if not lineage:
        return {}
    out = {f"data: {k}": str(lineage[k]) for k in ("data_source", "backbone", "test_set_sha256") if k in lineage}
    out.update({f"data: dvc.lock md5 of {k}": v for k, v in lineage.get("dvc_lock", {}).items()})
    for split, per in lineage.get("subset_sizes", {}).items():
        out.update({f"data: {split} images of class {c}": str(n) for c, n in per.items()})
    return out


def _tuned(tags: dict[str, str]) -> dict[str, str]:
    out = {}
    for key in TUNED:
        if key in tags:
            try:
                out[f"trained with: {key}"] = f"{float(tags[key]):.3g}"
            except ValueError:
                out[f"trained with: {key}"] = tags[key]
    return out


def image_changes(champion_ids: dict | None, challenger_ids: dict | None) -> list[tuple[str, str, str]]:
    """(`data: <split> images`, champion count, "+added -removed (challenger count)") per split that changed."""
    if not champion_ids or not challenger_ids:
        return []
    rows = []
    for split in sorted(set(champion_ids) | set(challenger_ids)):
        old, new = set(champion_ids.get(split, [])), set(challenger_ids.get(split, []))
        if old != new:
            rows.append(
                (
                    f"data: {split} images",
                    str(len(old)),
                    f"{len(new)} (+{len(new - old)} added, -{len(old - new)} removed)",
                )
            )
    return rows


def version_diff(client, challenger, champion, work: Path) -> list[tuple[str, str, str]]:
    """(what, champion value, challenger value) for everything that differs between two versions."""
    sides = []
    for version in (champion, challenger):
        run = client.get_run(version.tags["training_run_id"])
        sides.append(
            {
                **pipeline_params(client, run),
                **_flat_lineage(_evidence(client, version, LINEAGE_FILE, work)),
                **_tuned(dict(version.tags)),
            }
        )
    before, after = sides
    rows = [
        (k, before.get(k, "-"), after.get(k, "-"))
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]
    return rows + image_changes(
        _evidence(client, champion, IMAGE_IDS_FILE, work), _evidence(client, challenger, IMAGE_IDS_FILE, work)
    )
