"""Failures end in one line: a failing trial, a full disk, a dead server, an interrupt."""

from __future__ import annotations

import pytest

from tlpipe.errors import PipelineError
from tlpipe.sections import TuneConfig
from tlpipe.tuning.worker import Worker, summarize


class FailingTrials(Worker):
    """A worker whose training raises inside the trial (as suggest() did for `tune.regimes: []`)."""

    def __init__(self, cfg: TuneConfig, fail_every: int):
        self.cfg, self.worker, self.ran, self.fail_every = cfg, 0, 0, fail_every

    def _train(self, trial) -> float:
        value = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        if trial.number % self.fail_every == 0:
            [][trial.number]  # noqa: B018 - the IndexError a bad search space raises
        return value


def test_a_failing_trial_fails_alone_and_the_study_goes_on(capsys):
    import optuna

    cfg = TuneConfig(n_trials=4, sampler="random")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    ran, timed_out = FailingTrials(cfg, fail_every=2).work(study)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") >= 3 and not timed_out
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["fail_reason"] == "IndexError: list index out of range" for t in failed)
    out = capsys.readouterr()
    assert "tune: trial 0 fail: IndexError: list index out of range" in out.out
    assert "Traceback" not in out.err + out.out


def test_a_study_where_every_trial_fails_stops_and_is_one_line(tmp_path, capsys):
    import optuna

    cfg = TuneConfig(n_trials=3, sampler="random")
    study = optuna.create_study(study_name="s", direction="maximize")
    FailingTrials(cfg, fail_every=1).work(study)  # returns: it does not try forever
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    with pytest.raises(PipelineError) as err:
        summarize(study, cfg, tmp_path, "n_trials")
    assert str(err.value) == (
        "study s: no trial completed ({'FAIL': 3}); e.g. IndexError: list index out of range; see the MLflow runs"
    )
    assert "Traceback" not in "".join(capsys.readouterr())


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (the tests run as root), unmounted at the end."""
    import subprocess

    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_is_one_line_naming_the_folder_and_the_previous_output_is_kept(tmp_path, small_disk):
    from tests.conftest import png, run_cli, write_params

    params = write_params(tmp_path / "params.yaml", tmp_path / "raw")
    for cls in ("a", "b"):
        for i in range(8):
            png(tmp_path / "raw" / cls / f"{i}.png", seed=i + 100 * ord(cls), size=12, mode="RGB")
    subset = small_disk / "subset"
    first = run_cli(
        "make_subset", "--params", str(params), "--raw", str(tmp_path / "raw"), "--subset", str(subset), cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    before = {p.relative_to(subset): p.read_bytes() for p in subset.rglob("*") if p.is_file()}
    for cls in ("a", "b"):  # the same names, now too big for the disk: 16 x 200x200 noise ~ 1.9 MB
        for i in range(8):
            png(tmp_path / "raw" / cls / f"{i}.png", seed=i + 100 * ord(cls), size=200, mode="RGB")
    full = run_cli(
        "make_subset", "--params", str(params), "--raw", str(tmp_path / "raw"), "--subset", str(subset), cwd=tmp_path
    )
    assert full.returncode == 2, full.stderr
    lines = full.stderr.strip().splitlines()
    assert "Traceback" not in full.stderr and lines[-1].startswith("error: no space left on the device of "), lines
    assert str(small_disk) in lines[-1] and " MiB free" in lines[-1], lines[-1]
    after = {p.relative_to(subset): p.read_bytes() for p in subset.rglob("*") if p.is_file()}
    assert after == before  # the previous subset, untouched
    assert not list(small_disk.glob(".*partial-*"))  # no staging left behind


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections (the kernel's backlog) and never answers a byte."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@pytest.mark.parametrize("kind", ["http-closed", "http-silent", "postgresql-closed"])
def test_a_tracking_store_that_does_not_answer_fails_in_one_line_quickly(tmp_path, kind, request):
    import time

    from tests.conftest import free_port, run_cli, write_params

    port = request.getfixturevalue("silent_port") if kind == "http-silent" else free_port()
    scheme = "postgresql" if kind.startswith("postgresql") else "http"
    uri = f"{scheme}://alice:Zq9canary@127.0.0.1:{port}/" + ("mlflow" if scheme == "postgresql" else "")
    params = write_params(tmp_path / "params.yaml", "builtin:digits")
    started = time.monotonic()
    proc = run_cli(
        "make_digits", "--params", str(params), "--digits", "out", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}
    )
    elapsed = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: MLflow tracking at {scheme}") and "did not answer" in lines[0], lines
    assert "Zq9canary" not in proc.stdout + proc.stderr
    # the behaviour is the probe's budget (12 s, CHECK_SECONDS); MLflow's own retries took 4.5 min
    assert elapsed < 900, elapsed


def test_a_server_that_answers_passes_the_check_whatever_its_status():
    import http.server
    import threading

    from tlpipe.tracking.stores import check_http_store

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # 501 to all
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_http_store(f"http://bob:pw@127.0.0.1:{server.server_address[1]}/prefix/")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_to_the_step_alone_stops_it_and_its_children_in_one_line(tmp_path, sig):
    """The signal reaches only the step (as from `kill PID`); its child process must end with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tests.conftest import REPO

    script = tmp_path / "step.py"
    script.write_text(
        "import subprocess, sys\nfrom tlpipe.cli import run_main\n"
        "def main(argv):\n"
        "    child = subprocess.Popen(['sleep', '600'])\n"
        "    print('child', child.pid, flush=True)\n"
        "    child.wait()\n"
        "run_main(main)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline().split()[1])
    os.kill(proc.pid, getattr(signal, sig))
    started = time.monotonic()
    out, err = proc.communicate()
    elapsed = time.monotonic() - started
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert err.strip().splitlines() == [
        f"error: interrupted ({sig}); outputs of this step were not replaced, rerun to finish"
    ], err
    deadline = time.monotonic() + 900
    while (
        psutil.pid_exists(child)
        and psutil.Process(child).status() != psutil.STATUS_ZOMBIE
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert elapsed < 900, elapsed  # only against a hang: the step allows itself GRACE_SECONDS (3 s)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_a_training_tune_step_within_seconds(tiny_project, tmp_path, sig):
    """SIGINT/SIGTERM to the process group of `tune` mid-trial (as Ctrl-C under dvc repro): one line, prompt."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from pipelines.graph import argv, build
    from tests.conftest import REPO
    from tlpipe.config import load_params

    root = tmp_path / "p"
    shutil.copytree(tiny_project, root)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["tune"].update(n_trials=50, epochs=50, patience=50, sweep=False, storage=f"sqlite:///{root / 'o.db'}")
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    steps = build(load_params(root / "params.yaml"))
    step = next(s for s in steps if s.name == "tune")
    args = argv(step, steps)
    proc = subprocess.Popen(
        [sys.executable, "-m", "components.tune", args[0], "--params", "params.yaml", *args[1:]],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the first trial ended: the second one is training now
        if line.startswith("tune: trial 0 "):
            break
    os.killpg(proc.pid, getattr(signal, sig))
    started = time.monotonic()
    _, err = proc.communicate()
    elapsed = time.monotonic() - started
    lines = [line for line in err.strip().splitlines() if line.startswith("error:") or "Traceback" in line]
    assert lines == [f"error: interrupted ({sig}); outputs of this step were not replaced, rerun to finish"], err
    assert proc.returncode == 128 + getattr(signal, sig)
    print(f"tune stopped {elapsed:.1f} s after {sig}")
    assert elapsed < 900, elapsed  # only against a hang
    assert not list((root / "reports").glob("**/.*partial-*"))


@pytest.mark.slow
def test_make_subset_killed_mid_write_then_rerun_gives_the_uninterrupted_result(tmp_path):
    """SIGKILL while the subset is being staged; the rerun leaves no staging, no RUNNING run, the same bytes."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    from tests.conftest import REPO, png, write_params

    raw = tmp_path / "raw"
    for cls in ("a", "b"):
        for i in range(150):
            png(raw / cls / f"{i}.png", seed=i + 1000 * ord(cls), size=24, mode="RGB")
    outputs = {}
    for name in ("straight", "killed"):
        root = tmp_path / name
        root.mkdir()
        params = write_params(
            root / "params.yaml",
            raw,
            make_subset={"train_per_class": 100, "val_per_class": 20, "test_per_class": 20, "seed": 3},
        )
        cmd = [
            sys.executable,
            "-m",
            "components.make_subset",
            "--params",
            str(params),
            "--raw",
            str(raw),
            "--subset",
            "data/subset",
        ]
        # Its own store, named: mlflow.set_tracking_uri in an earlier in-process test exports MLFLOW_TRACKING_URI.
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        if name == "killed":
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # Killed as soon as the staging folder holds any file: the widest window, so a fast run on a busy
            # machine cannot finish between two polls (waiting for the last shards could miss it).
            while not [f for f in (root / "data").glob(".subset.partial-*/**/*") if f.is_file()]:
                assert proc.poll() is None, "make_subset ended before it could be killed"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert list((root / "data").glob(".subset.partial-*")), "the kill left no staging to clean up"
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not list(root.rglob(".*partial-*"))
        client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs and not [r for r in runs if r.info.status == "RUNNING"], [r.info.status for r in runs]
        outputs[name] = {
            str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted((root / "data/subset").rglob("*"))
            if p.is_file()
        }
    assert outputs["killed"] == outputs["straight"]


def test_the_registry_wording_of_the_store_check(silent_port):
    from tlpipe.tracking.stores import CHECK_SECONDS, check_http_store

    assert CHECK_SECONDS <= 15
    with pytest.raises(PipelineError, match=r"^MLflow registry at http://\*\*\*@127.0.0.1:\d+/ did not answer after"):
        check_http_store(f"http://alice:Zq9canary@127.0.0.1:{silent_port}/", 0, "MLflow registry")


# register, killed right after MLflow created the model version: before its description, the @challenger
# alias, the run's outcome tags and registration.json (the widest window for a half-done registration).
KILL_AFTER_VERSION = """
import os, signal, sys
import mlflow
from components import register
from tlpipe.cli import run_main

real = mlflow.register_model
def register_then_die(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
mlflow.register_model = register_then_die  # fault injection: this test's process only
run_main(register.main, sys.argv[1:])
"""


@pytest.mark.slow
def test_register_killed_mid_registration_then_rerun_gives_the_uninterrupted_result(tiny_project, tmp_path):
    """SIGKILL after the version exists; the rerun reuses it (one version), sets @challenger, closes the run."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    import keras
    import mlflow
    import yaml

    from pipelines.graph import argv, build
    from pipelines.local import run_steps
    from tests.conftest import REPO
    from tlpipe.config import load_params
    from tlpipe.contracts import Registration

    base = tmp_path / "base"
    shutil.copytree(tiny_project, base)
    raw = yaml.safe_load((base / "params.yaml").read_text())
    raw["tune"]["enabled"] = False
    (base / "params.yaml").write_text(yaml.safe_dump(raw))
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{base / 'mlflow.db'}"
    try:
        run_steps(base, ["tune", "fine_tune", "train_scratch", "evaluate"])
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI") if saved is None else os.environ.update(MLFLOW_TRACKING_URI=saved)
        keras.backend.clear_session()
    params = load_params(base / "params.yaml")
    steps, model_name = build(params), params.registry.model_name
    step = next(s for s in steps if s.name == "register")
    args = ["--params", "params.yaml", *argv(step, steps)]
    outcome = {}
    for name in ("straight", "killed"):
        root = tmp_path / name
        shutil.copytree(base, root)
        (root / "tmp").mkdir()
        uri = f"sqlite:///{root / 'mlflow.db'}"
        # Its own store and temp dir, named: an earlier in-process test may have exported MLFLOW_TRACKING_URI.
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri, "TMPDIR": str(root / "tmp")}
        if name == "killed":
            killed = subprocess.run(
                [sys.executable, "-c", KILL_AFTER_VERSION, *args], cwd=root, env=env, capture_output=True, text=True
            )
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
            client = mlflow.MlflowClient(uri, uri)
            assert [str(v.version) for v in client.search_model_versions()] == ["1"]  # the kill left a half-done one
            assert not client.get_registered_model(model_name).aliases  # ... with no @challenger yet
            assert list((root / "tmp").glob("tlpipe-register-*")), "the kill left no scratch folder to clean up"
        done = subprocess.run(
            [sys.executable, "-m", "components.register", *args], cwd=root, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert not list(root.rglob(".*partial-*")) and not list((root / "tmp").glob("tlpipe-*"))
        client = mlflow.MlflowClient(uri, uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert not [r for r in runs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status) for r in runs]
        registration = Registration.read(root / step.output("registration").path)
        versions = client.search_model_versions(f"name = '{model_name}'")
        assert [str(v.version) for v in versions] == ["1"]
        aliases = client.get_registered_model(model_name).aliases
        assert {alias: str(v) for alias, v in aliases.items()} == {"challenger": "1"}
        assert versions[0].tags["register_run_id"] == registration.register_run_id
        outcome[name] = registration.model_dump(exclude={"register_run_id", "reused"})
    assert outcome["killed"] == outcome["straight"]
