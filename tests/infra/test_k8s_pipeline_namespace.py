"""infra/k8s and the pipeline agree on where its pods run and what they may reach.

The pipeline runs in the Kubeflow profile namespace (Pod Security "baseline"), not in tlpipe
("restricted", services only). Its pods carry pipelines.platform.POD_LABEL; the NetworkPolicies admit
exactly those pods from namespaces labelled tlpipe.io/pipelines=enabled, and the README tells how to
label the profile namespace. The Optuna study is created by the pipeline's own `tune create-study` task.
"""

from __future__ import annotations

import re

import pytest
import yaml

from pipelines import platform
from pipelines.kfp_build import all_pods
from tests.infra.infra_tools import LONG_RUNNING_KINDS, OVERLAYS, REPO, containers, find, render, render_text
from tlpipe.config import Params

pytestmark = pytest.mark.infra

PIPELINES_NS_LABEL = {"tlpipe.io/pipelines": "enabled"}
README_LABEL_COMMAND = re.compile(
    r'kubectl label namespace "\$NS" tlpipe\.io/pipelines=enabled pod-security\.kubernetes\.io/enforce=baseline'
)


def _peers(spec: dict) -> list[dict]:
    return [peer for rule in spec.get("ingress", []) for peer in rule.get("from", [])]


def _allows_app(spec: dict, app: str) -> bool:
    return any(
        p.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": app} and "namespaceSelector" not in p
        for p in _peers(spec)
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_pipeline_pods_from_labelled_namespaces(overlay):
    objs = render(overlay)
    policies = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
    deny = policies.get("default-deny-ingress")
    assert deny is not None and deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny

    key, value = platform.POD_LABEL
    pipeline_peer = {
        "namespaceSelector": {"matchLabels": PIPELINES_NS_LABEL},
        "podSelector": {"matchLabels": {key: value}},
    }
    admits_pipelines = {name for name, spec in policies.items() if pipeline_peer in _peers(spec)}
    expected = {"allow-mlflow-from-pipelines", "allow-postgres-from-clients"}
    expected |= {"allow-minio-from-clients"} if overlay == "dev" else set()
    assert admits_pipelines == expected
    # A pipeline-pod peer always names the namespace label: tlpipe itself hosts no pipeline pods.
    for name, spec in policies.items():
        for peer in _peers(spec):
            if peer.get("podSelector", {}).get("matchLabels", {}).get(key) == value:
                assert peer == pipeline_peer, f"{name}: {peer}"

    postgres = policies["allow-postgres-from-clients"]
    assert _allows_app(postgres, "mlflow")
    assert [p["port"] for r in postgres["ingress"] for p in r["ports"]] == [5432]
    selected = {tuple(sorted(s["podSelector"].get("matchLabels", {}).items())) for s in policies.values()}
    for obj in objs:  # every pod that serves traffic is selected by an allow rule
        if obj["kind"] in LONG_RUNNING_KINDS:
            app = ("app.kubernetes.io/name", obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"])
            assert (app,) in selected, f"no NetworkPolicy admits traffic to {obj['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tlpipe_is_restricted_and_hosts_no_pipeline_pods(overlay):
    (ns,) = [o for o in render(overlay) if o["kind"] == "Namespace"]
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert not PIPELINES_NS_LABEL.items() <= labels.items(), (
        "KFP executor pods do not meet 'restricted': the pipeline runs in the profile namespace"
    )


def test_readmes_label_the_pipeline_namespace_for_the_policies():
    for readme in ("infra/README.md", "pipelines/README.md"):
        text = (REPO / readme).read_text()
        assert README_LABEL_COMMAND.search(text), f"{readme} lacks the namespace label command"


def test_dev_kfp_launcher_points_at_the_dev_minio():
    objs = [d for d in yaml.safe_load_all(render_text("overlays/dev/pipeline-namespace")) if d]
    (cm,) = objs
    assert (cm["kind"], cm["metadata"]["name"]) == ("ConfigMap", "kfp-launcher")  # KFP looks it up by name
    assert "namespace" not in cm["metadata"], "applied with -n <profile namespace>"
    root = cm["data"]["defaultPipelineRoot"]
    match = re.fullmatch(r"minio://([a-z0-9.-]+)/.+", root)
    assert match, root
    bucket = match.group(1)
    job = find(render("dev"), "Job", "minio-create-buckets")
    assert bucket in " ".join(" ".join(c.get("args", [])) for c in containers(job)), f"{bucket} is never created"
    minio = yaml.safe_load(cm["data"]["providers"])["minio"]["default"]
    assert minio["endpoint"] == "minio.tlpipe.svc.cluster.local:9000" and minio["disableSSL"] is True
    secret_name, keys = platform.S3_SECRET  # the Secret the tasks read, in the same namespace
    ref = minio["credentials"]["secretRef"]
    assert ref["secretName"] == secret_name and {ref["accessKeyKey"], ref["secretKeyKey"]} == set(keys)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pipeline_creates_the_optuna_study(overlay):
    objs = render(overlay)
    assert find(objs, "Job", "optuna-study-creator") is None, "the pipeline's `tune create-study` task does it"
    assert not [o for o in objs if o["metadata"]["name"].startswith("optuna-config")]
    assert "tune create-study" in all_pods(Params())
    assert not (REPO / "infra" / "k8s" / "base" / "study-creator-job.yaml").exists()
