"""The challenger against whoever holds `@champion` now, on the same test images, with paired statistics.

`register` compares a challenger with the champion of its registration time; a champion promoted later
(or rolled back) is a different model. `review` and `promote` therefore resolve the alias when they run.
Each registration keeps its per-image test predictions (`predictions.npz` in its evidence), so when both
versions were scored on the same test set (same content hash) the pairing needs neither the models nor the
data. Otherwise the current champion's model is scored on the challenger's test split, read from a
`data/subset` folder whose test set has the challenger's hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlpipe.contracts.evidence import EVIDENCE, IMAGE_IDS_FILE, PREDICTIONS, ImageIds
from tlpipe.errors import PipelineError

# Fixed, as in register: the decision on the same predictions must not move with the training seed.
BOOTSTRAP_SEED = 0


def write_predictions(
    out: Path,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    test_set: str,
    test_sha: list[str] | None = None,
) -> None:
    """The per-image test probabilities, labels, class names, test set hash and image sha256s (same order)."""
    np.savez(
        out / PREDICTIONS,
        labels=np.asarray(labels),
        probs=np.asarray(probs, "float32"),
        classes=np.asarray(classes),
        test_set=np.asarray(test_set),
        test_sha=np.asarray(test_sha or []),
    )


def test_images(subset: Path) -> list[str]:
    """The sha256 of each test image of `subset`, in the order the test split is read (manifest order)."""
    from tlpipe.data.datasets import read_manifest

    manifest = read_manifest(subset, ["split", "sha256"])
    return [str(s) for s in manifest.loc[manifest["split"] == "test", "sha256"]]


def trained_on(client, version, work: Path) -> set[str] | None:
    """The sha256 of the train and val images of `version` (registration evidence), or None if unknown."""
    from tlpipe.tracking.registry import evidence_file

    path = evidence_file(client, version, IMAGE_IDS_FILE, work)
    if path is None:
        return None
    ids = ImageIds.read(path.parent)
    return set(ids.train) | set(ids.val)


def unseen(test_sha: list[str], champion_trained: set[str] | None) -> np.ndarray:
    """Which test images the champion never trained on (all of them when that is unknown)."""
    if not champion_trained or not test_sha:
        return np.ones(len(test_sha), dtype=bool)
    return np.array([sha not in champion_trained for sha in test_sha], dtype=bool)


def paired(
    labels: np.ndarray, challenger_probs: np.ndarray, champion_probs: np.ndarray, classes: list[str], keep: np.ndarray
) -> tuple[dict, dict]:
    """The champion's scores and the paired comparison on the test images in `keep` (neither model trained on).

    The comparison also says how many images were shared and how many were left out.
    """
    from tlpipe.reports.evaluation import scores
    from tlpipe.reports.stats import compare

    if keep.size != labels.size:
        keep = np.ones(labels.size, dtype=bool)
    y = labels[keep]
    comparison = compare(
        champion_probs[keep].argmax(axis=1) == y,
        challenger_probs[keep].argmax(axis=1) == y,
        y,
        classes,
        seed=BOOTSTRAP_SEED,
    )
    comparison.update(shared_test_images=int(keep.sum()), excluded_seen_by_champion=int((~keep).sum()))
    return scores(y, champion_probs[keep], classes), comparison


def read_predictions(client, version, work: Path) -> dict | None:
    """A version's stored test predictions, or None when its registration kept none (an older tlpipe)."""
    from tlpipe.tracking.registry import evidence_file

    path = evidence_file(client, version, PREDICTIONS, work)
    if path is None:
        return None
    with np.load(path) as data:
        return {
            "labels": data["labels"],
            "probs": data["probs"],
            "classes": [str(c) for c in data["classes"]],
            "test_set": str(data["test_set"]),
            "test_sha": [str(s) for s in data["test_sha"]] if "test_sha" in data.files else [],
        }


def _rescore(client, name: str, champion, mine: dict, subset: Path | None) -> np.ndarray:
    """The champion model's probabilities on the challenger's own test split (read from `subset`)."""
    from tlpipe.data.datasets import load_split
    from tlpipe.data.identity import test_set_id
    from tlpipe.tracking.registry import load_version_model

    if subset is None or not subset.is_dir() or test_set_id(subset) != mine["test_set"]:
        raise PipelineError(
            f"champion v{champion.version} was scored on another test set than the challenger "
            f"(test set sha256 {mine['test_set'][:12]}); pass --subset with the challenger's "
            "data/subset so both are scored on the same images"
        )
    model, classes = load_version_model(client, name, champion)
    if list(classes) != mine["classes"]:
        raise PipelineError(
            f"champion v{champion.version} predicts classes {classes}, the challenger "
            f"{mine['classes']}; the two cannot be compared"
        )
    images, labels, _ = load_split(subset, "test", int(model.inputs[0].shape[1]))
    if not np.array_equal(labels, mine["labels"]):
        raise PipelineError(f"{subset}: the test labels differ from the challenger's stored ones; re-register it")
    return np.asarray(model.predict(images.astype("float32"), verbose=0))


def versus_current(client, name: str, version, work: Path, subset: Path | None = None) -> dict:
    """The challenger's scores and, when another version holds `@champion` now, the champion's and the comparison.

    Returns:
        {"challenger": scores, "champion_version": str or None, "champion": scores or None,
        "comparison": paired statistics (tlpipe.reports.stats.compare) or None, "rescored": whether the
        champion model was scored again (its stored predictions were on another test set)}.
    """
    from tlpipe.reports.evaluation import scores
    from tlpipe.tracking.registry import CHAMPION, alias_version

    mine = read_predictions(client, version, work / "challenger")
    if mine is None:
        raise PipelineError(
            f"{name} v{version.version} keeps no test predictions ({EVIDENCE}/{PREDICTIONS}); "
            "register it again with this version of tlpipe"
        )
    labels, classes = mine["labels"], mine["classes"]
    out = {
        "challenger": scores(labels, mine["probs"], classes),
        "champion_version": None,
        "champion": None,
        "comparison": None,
        "rescored": False,
    }
    current = alias_version(client, name, CHAMPION)
    if current is None or str(current.version) == str(version.version):
        return out
    theirs = read_predictions(client, current, work / "champion")
    same = theirs is not None and theirs["test_set"] == mine["test_set"] and theirs["classes"] == classes
    probs = theirs["probs"] if theirs is not None and same else _rescore(client, name, current, mine, subset)
    keep = unseen(mine["test_sha"], trained_on(client, current, work / "champion-ids"))
    champion, comparison = paired(labels, mine["probs"], probs, classes, keep)
    out.update(champion_version=str(current.version), champion=champion, comparison=comparison, rescored=not same)
    return out


def score_model(model, subset: Path, classes: list[str]) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Test-split scores of a Keras model at its own input size, with its probabilities, images and labels."""
    from tlpipe.data.datasets import load_split
    from tlpipe.reports.evaluation import scores

    size = int(model.inputs[0].shape[1])
    images, labels, found = load_split(subset, "test", size)
    if list(found) != list(classes):
        raise PipelineError(
            f"the model predicts classes {classes} but the test split has {found}; the two cannot be compared"
        )
    probs = np.asarray(model.predict(images.astype("float32"), verbose=0))
    return scores(labels, probs, classes), probs, images, labels


def versus_champion(
    client, name: str, run_id: str, classes: list[str], subset: Path, predicted: np.ndarray, labels: np.ndarray
) -> tuple[str | None, dict | None, dict | None]:
    """The `@champion`'s version, its scores and the paired comparison on the same test images.

    All three are None when there is no champion, or when the champion is this very training run.
    """
    from tlpipe.fs import scratch_dir
    from tlpipe.tracking.registry import CHAMPION, alias_version, load_version_model

    champ = alias_version(client, name, CHAMPION)
    if champ is None or champ.tags.get("training_run_id") == run_id:
        return None, None, None
    champion_model, champion_classes = load_version_model(client, name, champ)
    _, champion_probs, _, champion_labels = score_model(champion_model, subset, champion_classes)
    if not np.array_equal(champion_labels, labels):
        raise PipelineError(
            f"champion v{champ.version} and the challenger were read different test labels from "
            f"{subset}; the comparison needs the same images in the same order"
        )
    with scratch_dir("champion-ids") as work:
        keep = unseen(test_images(subset), trained_on(client, champ, Path(work)))
    challenger_probs = np.eye(len(classes), dtype="float32")[predicted]
    champion, comparison = paired(labels, challenger_probs, champion_probs, classes, keep)
    return str(champ.version), champion, comparison
