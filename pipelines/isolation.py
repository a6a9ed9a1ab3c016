"""Run one KFP task the way a pod runs it: `make run-local` sets TLPIPE_ISOLATE and every task comes here.

What a pod on the cluster has, and what this gives the step's process:

- only its declared input artifacts (the launcher downloads them): copies in a private task folder;
- the image's code as a read-only working directory (WORKDIR /app, owned by root): a read-only copy;
- a non-root user (the image's UID 10001): the step runs as 10001;
- its own empty `/tmp` (an emptyDir) and `$HOME`: a private tmpfs for each, gone when the task ends;
- no other task's files: the pipeline root and the invoking user's home are covered by empty tmpfs mounts
  (only the Python interpreter and its environment stay reachable, read-only).

The mounts live in a private mount namespace (`unshare --mount`), so tasks that kfp.local runs in parallel
do not see each other's. This needs root (`unshare`, `setpriv`); without it the task runs unisolated and a
line says so. A step that reads another task's output through an undeclared path, writes into its working
directory or leaves files in `/tmp` for the next task fails here as it would on a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = "params.yaml"
POD_UID = 10001  # the image's user (Dockerfile: useradd --uid 10001)
TASKS_BASE = Path(os.environ.get("TLPIPE_TASKS_BASE", "/var/tmp/tlpipe-tasks"))  # outside /tmp and $HOME
CODE_DIRS = ("tlpipe", "components", "pipelines", "operators", "tests")
SHARED_ENV = "TLPIPE_SHARED"  # folders every task shares (run-local's study store: the cluster's PostgreSQL)
# Runs as root inside the new mount namespace, then drops to the pod's user. $1 task folder, $2 pipeline
# root, $3 home to hide, $4 count of paths to keep visible ("ro:PATH" or "rw:PATH"), those, then the command.
SANDBOX = r"""
set -eu
work=$1; hide_root=$2; home=$3; n=$4; shift 4
keep=""; i=0
while [ "$i" -lt "$n" ]; do keep="$keep $1"; shift; i=$((i + 1)); done
i=0
for entry in $keep; do mkdir -p "$work/keep/$i"; mount --bind "${entry#*:}" "$work/keep/$i"; i=$((i + 1)); done
[ -d "$hide_root" ] && mount -t tmpfs -o mode=755 tmpfs "$hide_root"
mount -t tmpfs -o mode=755 tmpfs "$home"
mount -t tmpfs -o mode=1777 tmpfs /tmp
i=0
for entry in $keep; do
  path=${entry#*:}; mkdir -p "$path"; mount --bind "$work/keep/$i" "$path"
  [ "${entry%%:*}" = ro ] && mount -o remount,bind,ro "$path"
  i=$((i + 1))
done
mkdir -p /tmp/home && chown {uid}:{uid} /tmp/home
for path in ${TLPIPE_SCRATCH:-}; do mkdir -p "$path" && chown {uid}:{uid} "$path"; done
mount --bind "$work/code" "$work/code" && mount -o remount,bind,ro "$work/code"
cd "$work/code"
exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all "$@"
""".replace("{uid}", str(POD_UID))


def step_argv(params_file: Path | str, flags: dict[str, str], scratch: dict[str, str], command: str) -> list[str]:
    """`[command] --params FILE --flag value ...` of one step."""
    argv = ([command] if command else []) + ["--params", str(params_file)]
    for flag, value in {**flags, **scratch}.items():
        argv += [f"--{flag}", value]
    return argv


def can_isolate() -> bool:
    """Whether this process can build a pod-like sandbox (root, with unshare and setpriv)."""
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in ("unshare", "setpriv", "mount"))


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    elif source.exists():
        shutil.copy2(source, target)


def _keep_paths() -> list[str]:
    """What stays visible: the interpreter and its environment (read-only), the shared stores (read-write)."""
    paths = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    hidden = (Path.home().resolve(), Path("/tmp"))
    keep = [f"ro:{p}" for p in sorted(paths) if any(h in p.parents for h in hidden)]
    shared = [Path(p).resolve() for p in os.environ.get(SHARED_ENV, "").split(os.pathsep) if p]
    return keep + [f"rw:{p}" for p in shared]


def _chown_tree(path: Path) -> None:
    for folder, _, files in os.walk(path):
        os.chown(folder, POD_UID, POD_UID)
        for name in files:
            os.chown(os.path.join(folder, name), POD_UID, POD_UID)


def run_isolated(
    root: Path,
    module: str,
    params: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    values: dict[str, str],
    scratch: tuple[str, ...],
    command: str,
) -> None:
    """Run `python -m module` on copies of its declared inputs, as the pod's user, in a private sandbox.

    Args:
        root: The pipeline root (every task's outputs): hidden from the task.
        module: The step's module, e.g. components.fine_tune.
        params: The task's params YAML.
        inputs: Declared input artifacts, flag -> path (copied in).
        outputs: Output folders, flag -> final path (moved into place after a successful run).
        values: Plain string arguments (URIs, names, numbers).
        scratch: Flags that get an empty folder in the task's private /tmp.
        command: A subcommand placed before the flags (tune: worker).
    """
    step = module.rsplit(".", 1)[-1]
    isolate = can_isolate()
    TASKS_BASE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{step}-", dir=TASKS_BASE))
    work.chmod(0o755)  # mkdtemp makes it 0700: the pod's user must reach its inputs and code
    try:
        local_inputs = {}
        for name, value in inputs.items():
            local_inputs[name] = str(work / "inputs" / name / Path(value).name)
            _copy(Path(value), Path(local_inputs[name]))
        (work / "params").mkdir()
        (work / "params" / PARAMS_FILE).write_text(params, encoding="utf-8")
        for name in CODE_DIRS:
            _copy(REPO / name, work / "code" / name)
        local_outputs = {name: str(work / "outputs" / name) for name in outputs}
        (work / "outputs").mkdir()
        env = {**os.environ, "PYTHONPATH": str(work / "code"), "USER": "tlpipe", "LOGNAME": "tlpipe"}
        if isolate:  # a private /tmp (and $HOME in it): scratch folders vanish with the task
            _chown_tree(work / "outputs")
            scratch_dirs = {flag: f"/tmp/scratch/{flag}" for flag in scratch}
            env.update(HOME="/tmp/home", TMPDIR="/tmp", TLPIPE_SCRATCH=" ".join(scratch_dirs.values()))
        else:
            for folder in ("home", "tmp"):
                (work / folder).mkdir()
            scratch_dirs = {flag: str(work / "tmp" / flag) for flag in scratch}
            env.update(HOME=str(work / "home"), TMPDIR=str(work / "tmp"))
            print(
                f"{step}: cannot build a pod-like sandbox (needs root, unshare and setpriv): the task runs "
                "as this user and sees this machine's files",
                flush=True,
            )
        argv = step_argv(
            work / "params" / PARAMS_FILE, {**local_inputs, **values, **local_outputs}, scratch_dirs, command
        )
        cmd = [sys.executable, "-m", module, *argv]
        if isolate:
            keep = _keep_paths()
            cmd = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                SANDBOX,
                "sh",
                str(work),
                str(root),
                str(Path.home()),
                str(len(keep)),
                *keep,
                *cmd,
            ]
            print(f"{step}: isolated as UID {POD_UID}: python -m {module} {' '.join(argv)}", flush=True)
        code = subprocess.run(cmd, cwd=work / "code", env=env, check=False).returncode
        if code:
            raise SystemExit(code)
        for name, target in outputs.items():
            produced = Path(local_outputs[name])
            if produced.exists():
                if Path(target).is_dir():
                    shutil.rmtree(target)
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(produced), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
