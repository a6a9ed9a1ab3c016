"""The compiled pipeline against the KFP backend's own rules, at platform.MIN_KFP_BACKEND (2.15.0).

kfp.local implements neither the backend's Argo compiler nor its driver, so a package that runs under
`make run-local` can still be rejected or fail on a cluster. Each test below mirrors one rule of the backend
source (kubeflow/pipelines at tag 2.15.0, `backend/src/v2/...`), named in its docstring, and holds every
compiled variant (default, a tagged image, digests, `--legacy-backend`) against it. The backend is Go 1.23+;
this machine has neither Go 1.23 nor a module proxy, so the rules are transcribed here (pipelines/README.md,
"Backend rules"); re-read the cited functions when MIN_KFP_BACKEND moves.
"""

from pathlib import Path

import pytest
import yaml

from pipelines import training_pipeline as tp
from pipelines.graph import build
from pipelines.kfp_build import all_pods
from pipelines.platform import MIN_KFP_BACKEND, RUN_GROUP_ENV, RUN_ID_FIELD
from pipelines.runtime import resolve_params, task_params
from pipelines.step import declared_params
from tests.conftest import REPO
from tlpipe.config import load_params

PARAMS = load_params(REPO / "params.yaml")
DIGEST = "sha256:" + "a" * 64
GPU_DIGEST = "sha256:" + "b" * 64
VARIANTS = {
    "default": [],
    "tag": ["--image", "registry.example/tl:1.2"],
    "digests": ["--image", f"registry.example/tl@{DIGEST}", "--gpu-image", f"registry.example/tl-gpu@{GPU_DIGEST}"],
    "legacy": ["--image", "registry.example/tl:1.2", "--legacy-backend", "--image-pull-secret", "regcred"],
}
# api/v2alpha1/pipeline_spec.proto at 2.15.0: the fields the API server's protojson parser knows.
PIPELINE_SPEC_FIELDS = {
    "PipelineSpec": {
        "pipelineInfo",
        "deploymentSpec",
        "sdkVersion",
        "schemaVersion",
        "components",
        "root",
        "defaultPipelineRoot",
    },
    "PipelineTaskSpec": {
        "taskInfo",
        "inputs",
        "dependentTasks",
        "cachingOptions",
        "componentRef",
        "triggerPolicy",
        "artifactIterator",
        "parameterIterator",
        "retryPolicy",
        "iteratorPolicy",
    },
    "ComponentSpec": {
        "inputDefinitions",
        "outputDefinitions",
        "dag",
        "executorLabel",
        "singlePlatformSpecs",
        "taskConfigPassthroughs",
    },
    "PipelineContainerSpec": {"image", "command", "args", "lifecycle", "resources", "env"},
    "ResourceSpec": {
        "cpuLimit",
        "memoryLimit",
        "cpuRequest",
        "memoryRequest",
        "resourceCpuLimit",
        "resourceMemoryLimit",
        "resourceCpuRequest",
        "resourceMemoryRequest",
        "accelerator",
    },
    "RetryPolicy": {"maxRetryCount", "backoffDuration", "backoffFactor", "backoffMaxDuration"},
    "InputParameterSpec": {
        "taskOutputParameter",
        "runtimeValue",
        "componentInputParameter",
        "taskFinalStatus",
        "parameterExpressionSelector",
    },
}
# kubernetes_platform/proto/kubernetes_executor_config.proto at 2.15.0 (the driver unmarshals it strictly).
K8S_FIELDS = {
    "KubernetesExecutorConfig": {
        "secretAsVolume",
        "secretAsEnv",
        "pvcMount",
        "nodeSelector",
        "podMetadata",
        "imagePullSecret",
        "imagePullPolicy",
        "configMapAsVolume",
        "configMapAsEnv",
        "activeDeadlineSeconds",
        "fieldPathAsEnv",
        "tolerations",
        "genericEphemeralVolume",
        "nodeAffinity",
        "podAffinity",
        "enabledSharedMemory",
        "emptyDirMounts",
    },
    "secretAsEnv": {"secretName", "keyToEnv", "optional", "secretNameParameter"},
    "imagePullSecret": {"secretName", "secretNameParameter"},
    "emptyDirMounts": {"volumeName", "mountPath", "medium", "sizeLimit"},
    "tolerations": {"key", "operator", "value", "effect", "tolerationSeconds", "tolerationJson"},
    "nodeSelector": {"labels", "nodeSelectorJson"},
    "podMetadata": {"labels", "annotations"},
    "fieldPathAsEnv": {"name", "fieldPath"},
}
# driver/resolve.go resolveInputs: the parameter types whose values the driver's type check accepts.
DRIVER_PARAMETER_TYPES = {"STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN", "LIST", "STRUCT", "TASK_FINAL_STATUS"}
ARTIFACT_TYPES = {"system.Artifact", "system.Dataset", "system.Model", "system.Metrics"}


class Package:
    """One compiled package: the pipeline spec, the kubernetes platform spec, every task with its DAG."""

    def __init__(self, path: Path):
        self.spec, platform = list(yaml.safe_load_all(path.read_text()))
        self.k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        self.dags = {"root": self.spec["root"]}
        self.dags.update({name: c for name, c in self.spec["components"].items() if "dag" in c})
        self.tasks = [
            (dag, name, task) for dag, comp in self.dags.items() for name, task in comp["dag"]["tasks"].items()
        ]

    def component(self, task: dict) -> dict:
        return self.spec["components"][task["componentRef"]["name"]]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def package(request, tmp_path_factory) -> Package:
    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    tp.main(["--params", str(REPO / "params.yaml"), "compile", "--output", str(out), *VARIANTS[request.param]])
    return Package(out)


def test_min_backend_is_the_one_the_rules_were_read_at():
    assert MIN_KFP_BACKEND == "2.15.0"  # moving it means re-reading every function cited in this module


def test_trigger_policy_only_on_the_exit_handler_task(package):
    """argocompiler/dag.go (*workflowCompiler).dag: a task with ALL_UPSTREAM_TASKS_COMPLETED is compiled as an
    exit lifecycle hook on each task it depends on and removed from the DAG, so no task may depend on it and
    its only upstream must be an exit-handler group (else it runs as a hook of ordinary tasks)."""
    hooks = [
        (dag, name, t)
        for dag, name, t in package.tasks
        if t.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
    ]
    assert [t["taskInfo"]["name"] for _, _, t in hooks] == ["close_run"]
    for dag, name, task in hooks:
        (upstream,) = task["dependentTasks"]
        assert upstream.startswith("exit-handler-") and "dag" in package.component(
            package.dags[dag]["dag"]["tasks"][upstream]
        )
        sources = task["inputs"]["parameters"]
        assert {k for k, v in sources.items() if "taskOutputParameter" in v} == set()
        assert sources["status"]["taskFinalStatus"]["producerTask"] == upstream
        dependents = [n for d, n, t in package.tasks if d == dag and name in t.get("dependentTasks", [])]
        assert dependents == []


def test_loop_items_typed_like_the_consumer_input(package):
    """driver/resolve.go resolveInputs (handleParamTypeValidationAndConversion): an iteration's item reaches
    the sub-DAG as the type of its inputDefinitions; a non-STRING input receiving a string value fails with
    "input parameter ... type mismatch". So the loop item's type must equal the consumer's input type."""
    loops = [(dag, t) for dag, _, t in package.tasks if "parameterIterator" in t]
    assert loops
    for dag, loop in loops:
        body = package.component(loop)
        item = loop["parameterIterator"]["itemInput"]
        item_type = body["inputDefinitions"]["parameters"][item]["parameterType"]
        consumers = [
            (t, k)
            for t in body["dag"]["tasks"].values()
            for k, v in t["inputs"].get("parameters", {}).items()
            if v.get("componentInputParameter") == item
        ]
        assert consumers
        for consumer, key in consumers:
            want = package.component(consumer)["inputDefinitions"]["parameters"][key]["parameterType"]
            assert item_type == want == "NUMBER_INTEGER", (item, key)
        source = loop["parameterIterator"]["items"]["inputParameter"]
        producer = loop["inputs"]["parameters"][source]["taskOutputParameter"]
        producer_task = package.dags[dag]["dag"]["tasks"][producer["producerTask"]]
        outputs = package.component(producer_task)["outputDefinitions"]["parameters"]
        assert outputs[producer["outputParameterKey"]]["parameterType"] == "LIST"


def test_no_placeholder_in_env_values(package):
    """driver/driver.go initPodSpecPatch copies container env values verbatim (placeholders are resolved
    for parameters only), so `{{$...}}` in an env value reaches the process as text. The run id comes from
    the pod label the API server sets (apiserver/template/v2_template.go: SetPodMetadataLabels
    "pipeline/runid"), through the downward API (driver/k8s.go: FieldPathAsEnv)."""
    for label, executor in package.spec["deploymentSpec"]["executors"].items():
        for env in executor["container"].get("env", []):
            assert "{{" not in env["value"], (label, env)
            assert env["name"] != RUN_GROUP_ENV, label
        field_env = {e["name"]: e["fieldPath"] for e in package.k8s.get(label, {}).get("fieldPathAsEnv", [])}
        assert field_env.get(RUN_GROUP_ENV) == RUN_ID_FIELD, label


def test_parameter_and_artifact_types_the_driver_accepts(package):
    """driver/resolve.go resolveInputs: a non-STRING input must receive a value of its own kind (a STRING input
    takes anything, converted to JSON text); artifacts are the system types the launcher knows."""
    for name, comp in package.spec["components"].items():
        for side in ("inputDefinitions", "outputDefinitions"):
            for param in comp.get(side, {}).get("parameters", {}).values():
                assert param["parameterType"] in DRIVER_PARAMETER_TYPES, name
            for art in comp.get(side, {}).get("artifacts", {}).values():
                assert art["artifactType"]["schemaTitle"] in ARTIFACT_TYPES, name
    for dag, _, task in package.tasks:
        wanted = package.component(task).get("inputDefinitions", {}).get("parameters", {})
        for key, source in task["inputs"].get("parameters", {}).items():
            want = wanted[key]["parameterType"]
            if "taskOutputParameter" in source and want != "STRING":
                src = source["taskOutputParameter"]
                producer = package.dags[dag]["dag"]["tasks"][src["producerTask"]]
                got = package.component(producer)["outputDefinitions"]["parameters"][src["outputParameterKey"]]
                assert got["parameterType"] == want, (task["taskInfo"]["name"], key)
            if "componentInputParameter" in source and want != "STRING":
                got = (
                    package.dags[dag]
                    .get("inputDefinitions", {})
                    .get("parameters", {})[source["componentInputParameter"]]
                )
                assert got["parameterType"] == want, (task["taskInfo"]["name"], key)


def test_fields_the_min_backend_proto_knows(package):
    """apiserver (protojson) and driver/k8s.go unmarshal the IR and the kubernetes config strictly: a field
    newer than the backend's protos fails the run (kubeflow/pipelines#12495 for secretAsEnv.optional)."""
    assert set(package.spec) <= PIPELINE_SPEC_FIELDS["PipelineSpec"]
    for comp in package.spec["components"].values():
        assert set(comp) <= PIPELINE_SPEC_FIELDS["ComponentSpec"]
    for _, _, task in package.tasks:
        assert set(task) <= PIPELINE_SPEC_FIELDS["PipelineTaskSpec"]
        assert set(task.get("retryPolicy", {})) <= PIPELINE_SPEC_FIELDS["RetryPolicy"]
        for source in task["inputs"].get("parameters", {}).values():
            assert set(source) <= PIPELINE_SPEC_FIELDS["InputParameterSpec"]
    for executor in package.spec["deploymentSpec"]["executors"].values():
        assert set(executor["container"]) <= PIPELINE_SPEC_FIELDS["PipelineContainerSpec"]
        assert set(executor["container"].get("resources", {})) <= PIPELINE_SPEC_FIELDS["ResourceSpec"]
    for label, config in package.k8s.items():
        assert set(config) <= K8S_FIELDS["KubernetesExecutorConfig"], label
        for key, allowed in K8S_FIELDS.items():
            entries = config.get(key, []) if key != "KubernetesExecutorConfig" else []
            for entry in entries if isinstance(entries, list) else [entries]:
                assert set(entry) <= allowed, (label, key, set(entry) - allowed)


def test_retry_policies_only_where_the_backend_applies_them(package):
    """argocompiler/container.go addContainerExecutorTemplate: a task's retryPolicy becomes an Argo
    retryStrategy, but tasks inside a ParallelFor lose it (kubeflow/pipelines#12389, #13897), so the tuning
    workers carry none (their resilience is the shared study)."""
    for dag, _, task in package.tasks:
        name = task["taskInfo"]["name"]
        if dag != "root" and any(
            "parameterIterator" in t and t["componentRef"]["name"] == dag for _, _, t in package.tasks
        ):
            assert "retryPolicy" not in task, name
        elif "executorLabel" in package.component(task):
            assert task["retryPolicy"]["maxRetryCount"] == 2, name


def test_tasks_that_must_not_be_served_from_the_cache(package):
    """cacheutils/cache.go GenerateCacheKey keys a task on parameter values, input artifact names, image and
    command: the data fingerprint (a URI's content can change), the study summary (the study can grow), the
    registration (a side effect) and the exit handler must run every time."""
    caching = {
        t["taskInfo"]["name"]: t.get("cachingOptions", {}).get("enableCache", False)
        for _, _, t in package.tasks
        if "executorLabel" in package.component(t)
    }
    assert {name for name, on in caching.items() if not on} == {
        "data_fingerprint",
        "tune summarize",
        "register",
        "close_run",
    }


def _cache_inputs(fine_tune_epochs: int) -> dict[str, str]:
    """Each task's params parameter as the first task computes it (its part of the cache key)."""
    base = PARAMS.model_dump(mode="json")
    resolved = resolve_params(base, {"fine_tune.epochs": fine_tune_epochs}, {})
    steps = [s.name for s in build(PARAMS)]
    return {name: task_params(resolved, name) for name in steps}


def test_a_changed_param_changes_only_its_steps_cache_keys():
    """cacheutils/cache.go GenerateCacheKey: InputParameterValues are compared by value. Each task gets only its
    own params, so changing fine_tune.epochs changes the fine_tune task's key; evaluate and register follow
    through the new model artifact (InputArtifactNames); make_subset ... tune keep theirs."""
    before, after = _cache_inputs(PARAMS.fine_tune.epochs), _cache_inputs(PARAMS.fine_tune.epochs + 3)
    readers = {name for name in before if {"fine_tune", "fine_tune.epochs"} & set(declared_params(name))}
    assert readers == {"fine_tune", "train_scratch"}  # the scratch baseline gets the same epoch budget
    assert {name for name in before if before[name] != after[name]} == readers
    assert "epochs" in yaml.safe_load(after["fine_tune"])["fine_tune"]
    assert set(yaml.safe_load(before["make_subset"])) <= {"make_subset", "seed", "tracking", "storage", "data"}


def test_every_pod_is_declared(package):
    names = {t["taskInfo"]["name"] for _, _, t in package.tasks if "executorLabel" in package.component(t)}
    assert names == set(all_pods(PARAMS))
