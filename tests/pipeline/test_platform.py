"""pipelines.platform: images, pod settings in the compiled IR, and requests that fit infra/terraform's nodes.

Node allocatable (what the scheduler can give pods) is capacity minus the kubelet's reservations and the
hard eviction threshold, minus the requests of the DaemonSets on every node:

- EKS (AL2023 nodeadm defaults): kube-reserved memory = 11 MiB x max pods + 255 MiB; eviction
  memory.available 100 MiB; capacity memory is the instance's nominal memory less 7.5 % (firmware and
  kernel; Karpenter's default VM_MEMORY_OVERHEAD_PERCENT); ephemeral storage: 1 GiB kube-reserved and
  nodefs.available 10 %.
- GKE: memory reserved 25 % of the first 4 GiB, 20 % of the next 4, 10 % of the next 8, 6 % of the next
  112, 2 % above; eviction 100 MiB; ephemeral storage allocatable about 47 % of a 100 GB boot disk (GKE's
  node-sizing example: 47 GB of 98.8 GB).
- CPU, both: 6 % of the first core, 1 % of the second, 0.5 % of the next two, 0.25 % above four.
- DaemonSets (kube-proxy, CNI, CSI node, device plugin, logging, metadata server): 250m / 512 MiB on EKS,
  500m / 1 GiB on GKE; an estimate; `kubectl describe node` shows a real node's.

CPU tasks run on the cluster's general-purpose nodes (not part of infra/terraform); pipelines/README.md
asks for at least 2 vCPU / 8 GiB, the two smallest such machines are in the table.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl

from pipelines import platform as pf
from pipelines.kfp_build import all_pods
from pipelines.platform import ClusterConfig, configure
from tlpipe.config import load_params
from tlpipe.fs import SCRATCH_LIMIT_ENV

REPO = Path(__file__).resolve().parents[2]
TF = REPO / "infra" / "terraform"
PODS = all_pods(load_params(REPO / "params.yaml"))
STEPS = tuple(PODS)
MIB, GIB = 2**20, 2**30
# name: (provider, vCPU, memory GiB, max pods); sizes from the providers' instance tables.
NODES = {
    "g4dn.xlarge": ("eks", 4, 16, 29),
    "m5.large": ("eks", 2, 8, 29),
    "n1-standard-8": ("gke", 8, 30, 110),
    "e2-standard-2": ("gke", 2, 8, 110),
}
CPU_POOL_MINIMUM = ("m5.large", "e2-standard-2")
DAEMONSETS = {"eks": (250, 512 * MIB), "gke": (500, 1 * GIB)}
IMAGE_ALLOWANCE = 15 * GIB  # the CUDA image and the system images on the node's disk


def _cpu_reserved_m(cores: int) -> float:
    tiers = [(1, 0.06), (1, 0.01), (2, 0.005), (10**6, 0.0025)]
    left, reserved = cores, 0.0
    for size, share in tiers:
        used = min(left, size)
        reserved, left = reserved + used * 1000 * share, left - used
    return reserved


def _gke_memory_reserved(memory: float) -> float:
    tiers = [(4 * GIB, 0.25), (4 * GIB, 0.20), (8 * GIB, 0.10), (112 * GIB, 0.06), (float("inf"), 0.02)]
    left, reserved = memory, 0.0
    for size, share in tiers:
        used = min(left, size)
        reserved, left = reserved + used * share, left - used
    return reserved


def allocatable(node: str) -> tuple[float, float]:
    """(CPU millicores, memory bytes) the scheduler can hand to pods on `node`, before DaemonSets."""
    provider, cores, mem_gib, max_pods = NODES[node]
    cpu = cores * 1000 - _cpu_reserved_m(cores)
    if provider == "eks":
        memory = mem_gib * GIB * 0.925 - (11 * max_pods + 255) * MIB - 100 * MIB
    else:
        memory = mem_gib * GIB - _gke_memory_reserved(mem_gib * GIB) - 100 * MIB
    return cpu, memory


def ephemeral_allocatable(provider: str, disk_gb: int) -> float:
    disk = disk_gb * GIB
    return disk * 0.9 - GIB if provider == "eks" else disk * 0.47


def quantity(value: str) -> float:
    """A Kubernetes quantity as a number (CPU in millicores, memory in bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": MIB, "Gi": GIB, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", value)
    assert match, value
    number, unit = float(match.group(1)), match.group(2)
    return number * units[unit] if unit else number


def cpu_m(value: str) -> float:
    return quantity(value) * 1000


def tf_defaults(module: str) -> dict:
    """`default = ...` of every variable in infra/terraform/<module>/variables.tf (JSON-compatible values)."""
    text = (TF / module / "variables.tf").read_text()
    blocks = dict(re.findall(r'^variable "([^"]+)" \{\n(.*?)^\}', text, re.M | re.S))
    out = {}
    for name, body in blocks.items():
        match = re.search(r"^\s+default\s*=\s*(.+)$", body, re.M)
        if match:
            out[name] = json.loads(match.group(1))
    return out


GPU_POOLS = {
    "eks": (tf_defaults("eks")["instance_types"], tf_defaults("eks")["disk_size_gb"]),
    "gke": ([tf_defaults("gke")["machine_type"]], tf_defaults("gke")["disk_size_gb"]),
}


def test_node_table_covers_the_terraform_defaults():
    for provider, (machines, _) in GPU_POOLS.items():
        for machine in machines:
            assert machine in NODES, f"add {machine} (vCPU, GiB, max pods) to NODES in tests/pipeline/test_platform.py"
            assert NODES[machine][0] == provider


@pytest.mark.parametrize("step", STEPS)
def test_requests_fit_the_default_nodes(step):
    res = ClusterConfig().resources_for(PODS[step])
    if PODS[step].gpu:
        nodes = [(m, disk) for machines, disk in GPU_POOLS.values() for m in machines]
    else:
        nodes = [(m, None) for m in CPU_POOL_MINIMUM]
    for node, disk in nodes:
        cpu, memory = allocatable(node)
        ds_cpu, ds_memory = DAEMONSETS[NODES[node][0]]
        where = f"{step} on {node} (allocatable {cpu:.0f}m, {memory / GIB:.2f} GiB)"
        assert cpu_m(res.cpu) <= cpu - ds_cpu, f"{where}: CPU request {res.cpu}"
        assert quantity(res.memory) <= memory - ds_memory, f"{where}: memory request {res.memory}"
        assert quantity(res.memory_limit) <= memory, f"{where}: memory limit {res.memory_limit}"
        if disk and res.scratch:  # one GPU task per node (one GPU each)
            room = ephemeral_allocatable(NODES[node][0], disk) - IMAGE_ALLOWANCE
            assert quantity(res.scratch) <= room, f"{where}: scratch {res.scratch} > {room / GIB:.0f} GiB"


def test_allocatable_formula_matches_published_examples():
    # GKE's documentation: a 4 vCPU node has 3920m allocatable; EKS reserves 80m on 4 vCPUs as well.
    assert allocatable("g4dn.xlarge")[0] == pytest.approx(3920)
    assert allocatable("n1-standard-8")[0] == pytest.approx(7910)
    assert 14 * GIB < allocatable("g4dn.xlarge")[1] < 15 * GIB  # of a nominal 16 GiB


def test_images():
    base = ClusterConfig()
    assert base.image_for(gpu=False) == pf.DEFAULT_IMAGE
    assert base.image_for(gpu=True) == pf.DEFAULT_IMAGE + "-gpu"
    pinned = "registry.example:5000/tlpipe@sha256:" + "a" * 64
    assert ClusterConfig(image=pinned).image_for(gpu=True) == pinned
    split = ClusterConfig(image=pinned, gpu_image="registry.example:5000/tlpipe-gpu@sha256:" + "b" * 64)
    assert split.image_for(gpu=True).endswith("b" * 64) and split.image_for(gpu=False) == pinned
    assert ClusterConfig(image="localhost:5000/tlpipe:1.2").image_for(gpu=True) == "localhost:5000/tlpipe:1.2-gpu"
    for unpinned in ("localhost:5000/tlpipe", "tlpipe"):
        with pytest.raises(ValueError, match="pin a tag"):
            ClusterConfig(image=unpinned)
    assert ClusterConfig(image_pull_secrets=["regcred"])  # pyright: ignore[reportArgumentType] (a list, as YAML gives).image_pull_secrets == ("regcred",)


@dsl.component(base_image="python:3.11-slim")
def noop():
    """Stands in for a step: the settings under test are the task's, not the component's."""


def compiled(cluster: ClusterConfig, tmp_path: Path) -> dict:
    """{display name: (task spec, kubernetes executor config)} of a pipeline with one task per step."""

    @dsl.pipeline(name="platform-test")
    def pipeline():
        for step in STEPS:
            configure(noop(), PODS[step], cluster)

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, str(out))
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    by_step = {}
    for task in spec["root"]["dag"]["tasks"].values():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        by_step[task["taskInfo"]["name"]] = (task, executors.get(label, {}))
    assert sorted(by_step) == sorted(STEPS)
    return by_step


def test_configure_sets_pull_secrets_retries_and_scratch(tmp_path):
    by_step = compiled(ClusterConfig(image_pull_secrets=("regcred",)), tmp_path)
    for step, (task, k8s) in by_step.items():
        if PODS[step].retry:
            assert task["retryPolicy"] == {
                "maxRetryCount": 2,
                "backoffDuration": "30s",
                "backoffFactor": 2.0,
                "backoffMaxDuration": "600s",
            }, step
        else:  # inside a ParallelFor, where the backend drops it (tests/pipeline/test_kfp_backend.py)
            assert "retryPolicy" not in task, step
        assert [s["secretName"] for s in k8s["imagePullSecret"]] == ["regcred"], step
        mounts = k8s.get("emptyDirMounts", [])
        if PODS[step].disk:
            assert mounts == [{"volumeName": "scratch", "mountPath": "/tmp", "sizeLimit": pf.SCRATCH}], step
        else:
            assert not mounts, step
        optional = {s["secretName"]: s.get("optional", False) for s in k8s["secretAsEnv"]}
        # all optional: a missing Secret must not leave a pod in CreateContainerConfigError forever
        assert optional == {
            "s3-credentials": True,
            "mlflow-credentials": True,
            **({"optuna-db": True} if PODS[step].study else {}),
        }, step


def test_a_pod_with_scratch_tells_its_process_the_volumes_size_limit(tmp_path):
    """The emptyDir's free space is the node's; the activation cache's disk budget (tlpipe/tuning/cache.py
    disk_budget) reads the limit from this variable instead, so a worker never writes past it."""

    @dsl.pipeline(name="scratch-env")
    def pipeline():
        for step in STEPS:
            configure(noop(), PODS[step], ClusterConfig())

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, str(out))
    spec, _ = list(yaml.safe_load_all(out.read_text()))
    for task in spec["root"]["dag"]["tasks"].values():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][label]["container"].get("env", [])}
        step = task["taskInfo"]["name"]
        assert env.get(SCRATCH_LIMIT_ENV) == (pf.SCRATCH if PODS[step].disk else None), step


def test_local_build_has_no_retries(tmp_path):
    local = ClusterConfig.local()
    assert (local.task_env, local.retries) == (False, 0)
    assert all("retryPolicy" not in task for task, _ in compiled(local, tmp_path).values())


# Fields of the kubernetes executor config a 2.3.0 driver knows (kubernetes_platform proto at tag 2.3.0);
# it unmarshals strictly, so anything else fails the task before it starts.
LEGACY_FIELDS = {
    "secretAsEnv": {"secretName", "keyToEnv"},
    "imagePullSecret": {"secretName"},
    "emptyDirMounts": {"volumeName", "mountPath", "medium", "sizeLimit"},
    "tolerations": {"key", "operator", "value", "effect", "tolerationSeconds"},
    "nodeSelector": {"labels"},
    "podMetadata": {"labels", "annotations"},
    "fieldPathAsEnv": {"name", "fieldPath"},
}


def test_legacy_backend_emits_only_what_old_drivers_parse(tmp_path):
    by_step = compiled(ClusterConfig(legacy_backend=True, image_pull_secrets=("regcred",)), tmp_path)
    for step, (_, k8s) in by_step.items():
        assert set(k8s) <= set(LEGACY_FIELDS), step
        for key, allowed in LEGACY_FIELDS.items():
            entries = k8s.get(key, [])
            for entry in entries if isinstance(entries, list) else [entries]:
                assert set(entry) <= allowed, f"{step}: {key} has {sorted(set(entry) - allowed)}"
        names = [s["secretName"] for s in k8s["secretAsEnv"]]
        assert "mlflow-credentials" not in names and "s3-credentials" in names, step


def test_min_backend_is_a_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", pf.MIN_KFP_BACKEND)
    assert tuple(map(int, pf.LEGACY_KFP_BACKEND.split("."))) < tuple(map(int, pf.MIN_KFP_BACKEND.split(".")))
