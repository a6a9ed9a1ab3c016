"""`dvc repro` end to end on the embedded default, in a temporary copy of the repo, with small params.

Runs every stage of dvc.yaml (make_digits ... register) as a user's `make run` would, then checks that a
second `dvc repro` does nothing, that `dvc metrics show` has the numbers, that MLflow holds the step runs
of one pipeline run with their lineage, that every step read exactly the params keys its stage lists, and
that the review of the new challenger renders.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import git_project

pytestmark = pytest.mark.slow

SMALL = {
    "make_subset.train_per_class": 30,
    "make_subset.val_per_class": 10,
    "make_subset.test_per_class": 12,
    "model.image_size": 16,
    "pretrain_backbone.epochs": 8,
    "pretrain_backbone.filters": [8, 16],
    "pretrain_backbone.learning_rate": 0.003,
    "train_head.epochs": 8,
    "fine_tune.epochs": 8,
    "tune.n_trials": 3,
    "tune.epochs": 4,
    "augment.copies": 1,
    "tune.regimes": ["transfer"],
    "tune.sweep": True,
    "tune.sweep_points": 3,
    "tune.sweep_seeds": 2,
    "registry.min_accuracy": 0.0,
}


def run(cmd, cwd, env, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The tracked files of this repo in a fresh git repo, params shrunk, `dvc repro` run once."""
    root = tmp_path_factory.mktemp("repro") / "tlpipe"
    audit = str(root.parent / "params-audit")
    env = git_project(root, SMALL, TLPIPE_RUN_GROUP="repro-test", TLPIPE_PARAMS_AUDIT=audit)
    run([sys.executable, "-m", "pipelines.dvc_yaml"], root, env)  # what `make run` does first
    first = run([sys.executable, "-m", "dvc", "repro"], root, env, timeout=1500)
    return root, env, first


def test_every_stage_ran_and_metrics_show(repo_copy):
    root, env, first = repo_copy
    for stage in (
        "make_digits",
        "make_subset",
        "validate_data",
        "augment",
        "pretrain_backbone",
        "extract_features",
        "train_head",
        "tune",
        "fine_tune",
        "evaluate",
        "register",
    ):
        assert f"'{stage}'" in first, stage
    metrics = json.loads(run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], root, env))
    shown = json.dumps(metrics)
    assert "reports/evaluate/metrics.json" in shown and "frozen_features" in shown
    numbers = json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert _all_numbers(numbers)  # labels live in evaluation.json, not in what DVC compares
    fine = json.loads((root / "reports/fine_tune/metrics.json").read_text())
    assert _all_numbers(fine) and "fine_tune" in fine["candidates"]  # every candidate's validation scores
    selected = json.loads((root / "models/fine_tune/run.json").read_text())["selected"]
    assert fine["handed_on"] == fine["candidates"][selected]  # the scores of the model handed on
    assert "reports/fine_tune/metrics.json" in shown and "handed_on" in shown
    evaluate = json.loads((root / "reports/evaluate/evaluation.json").read_text())
    assert evaluate["accuracy"] > 0.5  # 5 classes: chance is 0.2
    assert len(evaluate["accuracy_ci95"]) == 2 and evaluate["accuracy_ci95"][0] <= evaluate["accuracy"]
    best = json.loads((root / "reports/tune/best_params.json").read_text())
    ft_run = json.loads((root / "models/fine_tune/run.json").read_text())
    assert ft_run["hyperparameters"]["learning_rate"] == best["params"]["learning_rate"]  # tuned params used
    for plot in ("history.png", "importances.png", "transferability.png", "transferability.csv"):
        assert (root / "reports/tune" / plot).stat().st_size > 0
    assert {"scratch", "frozen_features", "best_baseline"} <= set(evaluate)


def _all_numbers(value) -> bool:
    if isinstance(value, dict):
        return all(_all_numbers(v) for v in value.values())
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_second_repro_does_nothing(repo_copy):
    root, env, _ = repo_copy
    again = run([sys.executable, "-m", "dvc", "repro"], root, env)
    assert "Running stage" not in again and "up to date" in again


def test_mlflow_has_one_pipeline_run_with_lineage_and_a_challenger(repo_copy):
    import mlflow

    root, env, _ = repo_copy
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tlpipe")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`tlpipe.run_group` = 'repro-test'")
    steps = {r.info.run_name: r for r in runs}
    assert {"pretrain_backbone", "train_head", "tune", "fine_tune", "evaluate", "register"} <= set(steps)
    fine = steps["fine_tune"]
    assert fine.data.tags["git_commit"] and fine.data.tags["data_validation"] == "passed"
    assert any(k.startswith("data.subset") for k in fine.data.tags)
    # Under dvc repro an input another stage made is not hashed again: its md5 comes from dvc.lock.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    subset_md5 = next(o["md5"] for o in lock["make_subset"]["outs"] if o["path"] == "data/subset")
    assert fine.data.tags["data.subset.dvc_md5"] == subset_md5 and "data.subset.sha256" not in fine.data.tags
    registration = json.loads((root / "reports/register/registration.json").read_text())
    version = client.get_model_version("tlpipe-classifier", registration["version"])
    assert "challenger" in version.aliases and version.tags["validation_status"] == "passed"
    review = run([sys.executable, "-m", "operators.review", "--out", str(root / "reports/review")], root, env)
    assert "review.html" in review and (root / "reports/review/review.html").stat().st_size > 10_000


def test_every_step_read_exactly_the_params_its_stage_lists(repo_copy):
    """Keys recorded while the steps ran (TLPIPE_PARAMS_AUDIT) == the step's PARAMS, all listed in its stage
    (the stage adds only the keys that decide where its inputs come from: data.source, model.backbone)."""
    from pipelines.step import declared_params

    root, _, _ = repo_copy
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    audit = root.parent / "params-audit"
    for name, stage in stages.items():
        read = json.loads((audit / f"{name}.json").read_text())
        assert sorted(read) == sorted(declared_params(name)), name
        assert set(read) <= set(stage["params"]) <= set(read) | {"data.source", "model.backbone"}, name


def test_a_params_typo_stops_before_dvc_touches_outputs(repo_copy):
    root, env, _ = repo_copy
    params = root / "params.yaml"
    original = params.read_text()
    params.write_text("finetune:\n  epochs: 3\n" + original)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.dvc_yaml"], cwd=root, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        params.write_text(original)
    assert proc.returncode == 2 and "unknown key 'finetune'" in proc.stderr and "Traceback" not in proc.stderr
    assert (root / "reports/tune/best_params.json").is_file()


def _exp_metrics(shown: list) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name or baseline rev: evaluate's metrics}."""
    found = {}

    def walk(entry):
        data = entry.get("data") or {}
        metrics = (data.get("metrics") or {}).get("reports/evaluate/metrics.json", {}).get("data")
        if metrics:
            found[entry.get("name") or entry.get("rev")] = metrics
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                walk(rev)

    for entry in shown:
        walk(entry)
    return found


def test_dvc_experiments_compare_and_leave_the_registry_alone(repo_copy):
    """The DVC user's loop: commit a run, `dvc exp run -S ...` twice, compare with `dvc exp show`, `dvc metrics
    diff` and `dvc plots diff`; experiments make no registry version and move no alias (registry.experiments: log).
    The first experiment also runs `tune.sweep: false` and `tune.pruner: none` through plain DVC."""
    import mlflow

    root, env, _ = repo_copy
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run([*git, "add", "-A"], root, env)
    run([*git, "commit", "-qm", "a run"], root, env)
    assert "reports/evaluate/metrics.json" in run(["git", "ls-files", "reports"], root, env)
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")

    def versions() -> dict:  # search_model_versions does not fill aliases: read each version
        return {
            v.version: client.get_model_version("tlpipe-classifier", v.version).aliases
            for v in client.search_model_versions("name = 'tlpipe-classifier'")
        }

    before = versions()
    assert any("challenger" in aliases for aliases in before.values())
    first = run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-n",
            "ep3",
            "-S",
            "fine_tune.epochs=3",
            "-S",
            "tune.sweep=false",
            "-S",
            "tune.pruner=none",
        ],
        root,
        env,
    )
    assert "not registered" in first
    run([sys.executable, "-m", "dvc", "exp", "run", "-n", "ep5", "-S", "fine_tune.epochs=5"], root, env)
    shown = _exp_metrics(json.loads(run([sys.executable, "-m", "dvc", "exp", "show", "--json"], root, env)))
    assert {"ep3", "ep5"} <= set(shown) and len(shown) >= 3, shown
    assert all(_all_numbers(m) and "accuracy" in m for m in shown.values())
    diff = json.loads(
        run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD", "ep3", "--all", "--json"], root, env)
    )
    assert diff.get("diff", diff), diff
    plots = json.loads(run([sys.executable, "-m", "dvc", "plots", "diff", "HEAD", "ep5", "--json"], root, env))
    assert not plots.get("errors"), plots.get("errors")
    after = versions()
    assert after == before  # no version made, no alias moved
