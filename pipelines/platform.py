"""Kubernetes settings of the pipeline's tasks: GPU node pool, resources, Secrets, endpoints, pod label.

Applied at compile time. `kfp.local` ignores the kubernetes platform config and resource settings (it
warns and runs the task anyway), so the same pipeline runs locally; only the endpoint variables, which
`kfp.local` would pass on, are left out for local runs (`ClusterConfig.task_env=False`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kfp import dsl, kubernetes

GPU_STEPS = ("pretrain_backbone", "extract_features", "tune worker", "fine_tune")
TUNE_STEPS = ("tune create-study", "tune worker", "tune summarize")
POD_LABEL = ("tlpipe.io/role", "pipeline")  # infra/k8s NetworkPolicies admit pods carrying it

# Secret -> {key in the Secret: environment variable}. Values never pass through pipeline parameters.
S3_SECRET = ("s3-credentials", {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
OPTUNA_SECRET = ("optuna-db", {"PGUSER": "PGUSER", "PGPASSWORD": "PGPASSWORD"})
# Optional: only a tracking server behind basic auth needs it; pods start without it.
MLFLOW_SECRET = ("mlflow-credentials", {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"})


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one task (Kubernetes quantities)."""

    cpu: str = "1"
    cpu_limit: str = "2"
    memory: str = "2Gi"
    memory_limit: str = "4Gi"
    gpus: int = 0


CPU_TASK = Resources()
GPU_TASK = Resources(cpu="4", cpu_limit="8", memory="16Gi", memory_limit="24Gi", gpus=1)


@dataclass(frozen=True)
class ClusterConfig:
    """Compile-time cluster settings (the defaults match infra/: namespace tlpipe, terraform GPU pool)."""

    gpu_label_key: str = "tlpipe.io/pool"
    gpu_label_value: str = "gpu"
    gpu_resource: str = "nvidia.com/gpu"
    mlflow_tracking_uri: str = "http://mlflow.tlpipe.svc.cluster.local:5000"
    aws_endpoint_url: str = ""  # "" = AWS S3; dev overlay: http://minio.tlpipe.svc.cluster.local:9000
    tune_storage: str = "postgresql://postgres.tlpipe.svc.cluster.local:5432/optuna"
    pipeline_root: str = ""  # "" = the KFP deployment's default; e.g. s3://pipeline-root/tlpipe or minio://...
    task_env: bool = True  # False for kfp.local, which would pass these variables to the local processes
    resources: dict[str, Resources] = field(default_factory=dict)  # per display name, else CPU_TASK/GPU_TASK

    def resources_for(self, step: str) -> Resources:
        """The task's resources: an explicit entry, else the GPU or CPU default."""
        return self.resources.get(step, GPU_TASK if step in GPU_STEPS else CPU_TASK)


def configure(task: dsl.PipelineTask, step: str, cluster: ClusterConfig) -> dsl.PipelineTask:
    """Name the task after its step and give it its pod settings; returns the task."""
    task.set_display_name(step)
    res = cluster.resources_for(step)
    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory).set_memory_limit(res.memory_limit)
    if res.gpus:
        task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(res.gpus)
        kubernetes.add_toleration(task, key=cluster.gpu_resource, operator="Exists", effect="NoSchedule")
        kubernetes.add_node_selector(task, cluster.gpu_label_key, cluster.gpu_label_value)
    kubernetes.add_pod_label(task, *POD_LABEL)
    secrets = [S3_SECRET] + ([OPTUNA_SECRET] if step in TUNE_STEPS else [])
    for name, keys in secrets:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys)
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET[0], secret_key_to_env=MLFLOW_SECRET[1],
                                 optional=True)
    if cluster.task_env:
        task.set_env_variable("MLFLOW_TRACKING_URI", cluster.mlflow_tracking_uri)
        task.set_env_variable("TLPIPE_RUN_GROUP", dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        if cluster.aws_endpoint_url:
            task.set_env_variable("AWS_ENDPOINT_URL", cluster.aws_endpoint_url)
    return task
