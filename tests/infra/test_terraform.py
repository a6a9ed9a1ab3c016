"""infra/terraform: each GPU-pool module's layout, taint, labels and autoscaling, and checkov on it."""

from __future__ import annotations

import re

import pytest

from tests.infra.infra_tools import TF_DIR, assert_checkov_clean, checkov

pytestmark = pytest.mark.infra


def _blocks(text: str, header: str) -> dict[str, str]:
    """Top-level `header "name" { ... }` blocks of a terraform fmt-formatted file."""
    return dict(re.findall(rf'^{header} "([^"]+)" \{{\n(.*?)^\}}', text, re.M | re.S))


@pytest.mark.parametrize("module,resource", [("gke", "google_container_node_pool"), ("eks", "aws_eks_node_group")])
def test_terraform_gpu_pool(module, resource):
    mod = TF_DIR / module
    for name in ("versions.tf", "variables.tf", "main.tf", "outputs.tf"):
        assert (mod / name).is_file(), f"{module}/{name} missing"

    versions = (mod / "versions.tf").read_text()
    assert re.search(r"required_version\s*=", versions)
    pins = re.findall(r'version\s*=\s*"([^"]+)"', versions)
    assert pins and all(re.search(r"\d+\.\d+", p) for p in pins), pins

    variables = _blocks((mod / "variables.tf").read_text(), "variable")
    assert variables
    for name, body in variables.items():
        assert re.search(r"^\s+type\s*=", body, re.M), f"variable {name} has no type"
        assert re.search(r'^\s+description\s*=\s*"\S', body, re.M), f"variable {name} has no description"

    outputs = _blocks((mod / "outputs.tf").read_text(), "output")
    assert outputs and all("description" in b for b in outputs.values())

    main = (mod / "main.tf").read_text()
    block = re.search(rf'^resource "{resource}" "\w+" \{{\n(.*?)^\}}', main, re.M | re.S)
    assert block, f"{module}/main.tf has no {resource}"
    text = block.group(1)
    taint = re.search(r"taint \{(.*?)\}", text, re.S)
    assert taint, "GPU pool has no taint"
    assert re.search(r'key\s*=\s*"nvidia\.com/gpu"', taint.group(1))
    assert re.search(r'value\s*=\s*"present"', taint.group(1))
    assert re.search(r'effect\s*=\s*"NO_SCHEDULE"', taint.group(1))
    assert re.search(r'"tlpipe\.io/pool"\s*=\s*"gpu"', text)
    assert re.search(r"\b(min_node_count|min_size)\s*=\s*0\b", text), "autoscaling must start at 0"
    assert re.search(r"\b(max_node_count|max_size)\s*=\s*var\.", text), "max must be configurable"


def test_checkov_terraform():
    assert_checkov_clean(checkov(TF_DIR, "terraform"), "terraform", min_resources=2)
