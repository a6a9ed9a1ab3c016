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

from tlpipe.errors import PipelineError

PREDICTIONS = "predictions.npz"
EVIDENCE = "evidence"  # the artifact folder on the register run (tlpipe.reports.review writes the rest)
# Fixed, as in register: the decision on the same predictions must not move with the training seed.
BOOTSTRAP_SEED = 0


def write_predictions(out: Path, labels: np.ndarray, probs: np.ndarray, classes: list[str], test_set: str) -> None:
    """The challenger's per-image test probabilities, the labels, class names and the test set's hash."""
    np.savez(out / PREDICTIONS, labels=np.asarray(labels), probs=np.asarray(probs, "float32"),
             classes=np.asarray(classes), test_set=np.asarray(test_set))


def read_predictions(client, version, work: Path) -> dict | None:
    """A version's stored test predictions, or None when its registration kept none (an older tlpipe)."""
    from mlflow.exceptions import MlflowException

    run_id = version.tags.get("register_run_id")
    if not run_id:
        return None
    work.mkdir(parents=True, exist_ok=True)
    try:
        path = client.download_artifacts(run_id, f"{EVIDENCE}/{PREDICTIONS}", str(work))
    except (MlflowException, OSError):
        return None
    with np.load(path) as data:
        return {"labels": data["labels"], "probs": data["probs"], "classes": [str(c) for c in data["classes"]],
                "test_set": str(data["test_set"])}


def _rescore(client, name: str, champion, mine: dict, subset: Path | None) -> np.ndarray:
    """The champion model's probabilities on the challenger's own test split (read from `subset`)."""
    from tlpipe.data.datasets import load_split
    from tlpipe.fingerprint import test_set_id
    from tlpipe.tracking.registry import load_version_model

    if subset is None or not subset.is_dir() or test_set_id(subset) != mine["test_set"]:
        raise PipelineError(f"champion v{champion.version} was scored on another test set than the challenger "
                            f"(test set sha256 {mine['test_set'][:12]}); pass --subset with the challenger's "
                            "data/subset so both are scored on the same images")
    model, classes = load_version_model(client, name, champion)
    if list(classes) != mine["classes"]:
        raise PipelineError(f"champion v{champion.version} predicts classes {classes}, the challenger "
                            f"{mine['classes']}; the two cannot be compared")
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
    from tlpipe.reports.stats import compare
    from tlpipe.tracking.registry import CHAMPION, alias_version

    mine = read_predictions(client, version, work / "challenger")
    if mine is None:
        raise PipelineError(f"{name} v{version.version} keeps no test predictions ({EVIDENCE}/{PREDICTIONS}); "
                            "register it again with this version of tlpipe")
    labels, classes = mine["labels"], mine["classes"]
    out = {"challenger": scores(labels, mine["probs"], classes), "champion_version": None, "champion": None,
           "comparison": None, "rescored": False}
    current = alias_version(client, name, CHAMPION)
    if current is None or str(current.version) == str(version.version):
        return out
    theirs = read_predictions(client, current, work / "champion")
    same = theirs is not None and theirs["test_set"] == mine["test_set"] and theirs["classes"] == classes
    probs = theirs["probs"] if same else _rescore(client, name, current, mine, subset)
    comparison = compare(probs.argmax(axis=1) == labels, mine["probs"].argmax(axis=1) == labels, labels, classes,
                         seed=BOOTSTRAP_SEED)
    out.update(champion_version=str(current.version), champion=scores(labels, probs, classes),
               comparison=comparison, rescored=not same)
    return out
