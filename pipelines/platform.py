"""Kubernetes settings of the pipeline's tasks: image, GPU pool, resources, scratch space, Secrets, retries.

Applied at compile time. `kfp.local` ignores the kubernetes platform config and resource settings (it
warns and runs the task anyway), so the same pipeline runs locally; `ClusterConfig.local()` also leaves
out the endpoint variables and the retries, which `kfp.local` would apply to the local processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kfp import dsl, kubernetes

from tlpipe.fs import SCRATCH_LIMIT_ENV

# Oldest KFP backend that runs this pipeline as compiled by default: its driver accepts `optional` on
# secretAsEnv (kubeflow/pipelines#12216, released in 2.15.0; older drivers fail with "unknown field
# \"optional\"", kubeflow/pipelines#12495). `legacy_backend=True` compiles for LEGACY_KFP_BACKEND instead:
# the launcher gives a non-root image writable scratch paths from 2.3.0 on (kubeflow/pipelines#10857,
# the merged successor of #10538); the image runs as UID 10001.
MIN_KFP_BACKEND = "2.15.0"
LEGACY_KFP_BACKEND = "2.3.0"

# Steps that write large artifacts or scratch files (Step.disk in pipelines/graph.py) get a size-limited
# emptyDir at /tmp (KFP v2 has no ephemeral-storage request, kubeflow/pipelines#11137).
SCRATCH_MOUNT = "/tmp"
POD_LABEL = ("tlpipe.io/role", "pipeline")  # infra/k8s NetworkPolicies admit pods carrying it
DEFAULT_IMAGE = "ghcr.io/tlpipe/tlpipe:0.1.0"
RUN_GROUP_ENV = "TLPIPE_RUN_GROUP"
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"
RETRY_BACKOFF = {"backoff_duration": "30s", "backoff_factor": 2, "backoff_max_duration": "600s"}

# Secret -> {key in the Secret: environment variable}. Values never pass through pipeline parameters.
S3_SECRET = (
    "s3-credentials",
    {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
)
OPTUNA_SECRET = ("optuna-db", {"PGUSER": "PGUSER", "PGPASSWORD": "PGPASSWORD"})
# Optional: only a tracking server behind basic auth needs it; pods start without it.
MLFLOW_SECRET = (
    "mlflow-credentials",
    {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
)


@dataclass(frozen=True)
class Pod:
    """What one KFP task asks of Kubernetes, derived from its step's fields in pipelines/graph.py.

    `name` is the task's display name ("fine_tune", "tune worker"); `study`: the task opens the Optuna study
    (its PostgreSQL credentials); `retry`: False inside a ParallelFor, where the backend drops retry policies
    (kubeflow/pipelines#12389, #13897), so a worker's resilience lives in the worker instead.
    """

    name: str
    gpu: bool = False
    disk: bool = False
    study: bool = False
    retry: bool = True
    scratch: str = ""  # the emptyDir's size when known from the params (tune worker), else SCRATCH


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one task (Kubernetes quantities); `scratch` is the /tmp emptyDir's size limit."""

    cpu: str = "1"
    cpu_limit: str = "2"
    memory: str = "2Gi"
    memory_limit: str = "4Gi"
    gpus: int = 0
    scratch: str = ""


# Sized to fit the smallest default nodes of infra/terraform (g4dn.xlarge: 4 vCPU / 16 GiB before the
# kubelet's reservations) and a 2 vCPU / 8 GiB general node; tests/pipeline/test_platform.py checks the arithmetic.
CPU_TASK = Resources()
GPU_TASK = Resources(cpu="3", cpu_limit="4", memory="12Gi", memory_limit="13Gi", gpus=1)
SCRATCH = "20Gi"


@dataclass(frozen=True)
class ClusterConfig:
    """Compile-time cluster settings (the defaults match infra/: namespace tlpipe, terraform GPU pool).

    `image` must carry a tag or a digest. `gpu_image` "" derives the GPU variant: the tag plus "-gpu", or,
    for an image pinned by digest (which names one build), that same image. `legacy_backend` compiles for a
    KFP backend older than MIN_KFP_BACKEND (see pipelines/README.md).
    """

    image: str = DEFAULT_IMAGE
    gpu_image: str = ""
    image_pull_secrets: tuple[str, ...] = ()
    legacy_backend: bool = False
    retries: int = 2  # per task, with RETRY_BACKOFF; 0 = none
    gpu_label_key: str = "tlpipe.io/pool"
    gpu_label_value: str = "gpu"
    gpu_resource: str = "nvidia.com/gpu"
    mlflow_tracking_uri: str = "http://mlflow.tlpipe.svc.cluster.local:5000"
    aws_endpoint_url: str = ""  # "" = AWS S3; dev overlay: http://minio.tlpipe.svc.cluster.local:9000
    tune_storage: str = "postgresql://postgres.tlpipe.svc.cluster.local:5432/optuna"
    pipeline_root: str = ""  # "" = the namespace's kfp-launcher default; e.g. s3://pipeline-root/tlpipe
    task_env: bool = True  # False for kfp.local, which would pass these variables to the local processes
    resources: dict[str, Resources] = field(default_factory=dict)  # per display name, else the defaults

    def __post_init__(self) -> None:
        for image in filter(None, (self.image, self.gpu_image)):
            if "@sha256:" not in image and not _tag(image):
                raise ValueError(f"image {image!r}: pin a tag (name:0.1.0) or a digest (name@sha256:...)")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        object.__setattr__(self, "image_pull_secrets", tuple(self.image_pull_secrets))

    @classmethod
    def local(cls, **overrides) -> ClusterConfig:
        """Settings for kfp.local: no endpoint variables, no retries (a local failure is not transient)."""
        return dataclasses.replace(cls(), **{"task_env": False, "retries": 0, **overrides})

    def image_for(self, gpu: bool) -> str:
        """The image of a task: the GPU variant for a GPU task, else `image`."""
        if not gpu:
            return self.image
        if self.gpu_image:
            return self.gpu_image
        if "@sha256:" in self.image:
            return self.image
        return f"{self.image}-gpu"

    def resources_for(self, pod: Pod) -> Resources:
        """The task's resources: an explicit entry, else the GPU or CPU default (with scratch if it writes much)."""
        if pod.name in self.resources:
            return self.resources[pod.name]
        base = GPU_TASK if pod.gpu else CPU_TASK
        return dataclasses.replace(base, scratch=pod.scratch or SCRATCH) if pod.disk else base


def _tag(image: str) -> str:
    """The tag of `registry[:port]/name[:tag]` ("" if none); a registry port is not a tag."""
    return image.rsplit("/", 1)[-1].partition(":")[2]


def configure(task: dsl.PipelineTask, pod: Pod, cluster: ClusterConfig) -> dsl.PipelineTask:
    """Name the task after its step and give it its pod settings.

    Args:
        task: The task of one step (its component's base image comes from `cluster.image_for(pod.gpu)`).
        pod: What the task needs: display name, GPU, scratch disk, study credentials, retries.
        cluster: The compile-time cluster settings.

    Returns:
        The same task, configured.
    """
    task.set_display_name(pod.name)
    res = cluster.resources_for(pod)
    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory).set_memory_limit(res.memory_limit)
    if res.gpus:
        task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(res.gpus)
        kubernetes.add_toleration(task, key=cluster.gpu_resource, operator="Exists", effect="NoSchedule")
        kubernetes.add_node_selector(task, cluster.gpu_label_key, cluster.gpu_label_value)
    if res.scratch:
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH_MOUNT, size_limit=res.scratch)
        task.set_env_variable(SCRATCH_LIMIT_ENV, res.scratch)  # the activation cache's disk budget stays under it
    kubernetes.add_pod_label(task, *POD_LABEL)
    if cluster.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(cluster.image_pull_secrets))
    # Optional mounts: a missing Secret would leave the pod in CreateContainerConfigError forever; without
    # it the pod starts and the step fails in one line at its first S3 or study access ("check ... the AWS
    # credentials", "cannot open the study storage"). Older drivers reject `optional` (#12495).
    optional = {"optional": True} if not cluster.legacy_backend else {}
    secrets = [S3_SECRET] + ([OPTUNA_SECRET] if pod.study else [])
    for name, keys in secrets:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, **optional)
    if not cluster.legacy_backend:
        kubernetes.use_secret_as_env(
            task, secret_name=MLFLOW_SECRET[0], secret_key_to_env=MLFLOW_SECRET[1], optional=True
        )
    if cluster.retries and pod.retry:
        # A step may fail for a transient reason (S3/MLflow/PostgreSQL hiccups); all are safe to rerun:
        # outputs are rewritten whole, register is idempotent. The backend turns this into an Argo
        # retryStrategy without a retryPolicy, i.e. Argo's default OnFailure: a container that exits
        # non-zero is retried, a pod deleted by preemption (an Argo "Error") is not (pipelines/README.md).
        task.set_retry(num_retries=cluster.retries, **RETRY_BACKOFF)
    if cluster.task_env:
        task.set_env_variable("MLFLOW_TRACKING_URI", cluster.mlflow_tracking_uri)
        # The KFP run id, from the pod label the API server puts on every pod of a run (v2_template.go:
        # SetPodMetadataLabels "pipeline/runid"). Not an env value with a placeholder: the driver copies env
        # values verbatim (driver.go initPodSpecPatch); not a parameter: it would enter every cache key.
        kubernetes.use_field_path_as_env(task, RUN_GROUP_ENV, RUN_ID_FIELD)
        if cluster.aws_endpoint_url:
            task.set_env_variable("AWS_ENDPOINT_URL", cluster.aws_endpoint_url)
    if cluster.legacy_backend:
        _drop_fields_unknown_to_legacy_drivers(task)
    return task


def _drop_fields_unknown_to_legacy_drivers(task: dsl.PipelineTask) -> None:
    """Remove what kfp-kubernetes 2.17 always writes but a 2.3-2.14 driver cannot parse (it is strict).

    `optional: false` on every secretAsEnv (drivers before 2.15.0) and `secretNameParameter` next to the
    constant `secretName` (drivers before 2.5.0, which read `secretName` alone).
    """
    config = task.platform_config.get("kubernetes", {})
    for entry in config.get("secretAsEnv", []):
        entry.pop("optional", None)
        entry.pop("secretNameParameter", None)
    for entry in config.get("imagePullSecret", []):
        entry.pop("secretNameParameter", None)
