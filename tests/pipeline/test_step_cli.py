"""Every step's real argument parser accepts the flags the declaration gives it, under DVC and on Kubeflow.

The flags are written in pipelines/graph.py (`argv`, and pipelines/kfp_build.py for the fan-out roles) and
again in each step's argparse; this fast test parses the declared command lines with the steps' own
parsers, so a renamed flag fails here instead of in a slow end-to-end run.
"""

import argparse
import importlib

import pytest

from pipelines.graph import argv, build
from pipelines.step import External
from tests.conftest import REPO
from tlpipe.config import load_params

VARIANTS = {
    "default": {},
    "own data, application backbone": {
        "data.source": "s3://bucket/photos",
        "model.backbone": "mobilenet_v2",
        "model.weights": "imagenet",
    },
    "tuning off": {"tune.enabled": False},
}


class Parsed(Exception):
    """Raised in place of running the step once its arguments are parsed."""


@pytest.fixture
def parse_only(monkeypatch):
    real = argparse.ArgumentParser.parse_args

    def intercept(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", intercept)


def _parsed(step_name: str, args: list[str]) -> argparse.Namespace:
    module = importlib.import_module(f"components.{step_name}")
    with pytest.raises(Parsed) as got:
        module.main(args)
    return got.value.args[0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_declared_flags_parse_with_each_steps_parser(parse_only, variant):
    steps = build(load_params(REPO / "params.yaml", VARIANTS[variant]))
    for step in steps:
        line = argv(step, steps)
        args = [*line[: 1 if step.command else 0], "--params", "params.yaml", *line[1 if step.command else 0 :]]
        ns = _parsed(step.name, args)
        for name, ref in step.inputs.items():
            value = getattr(ns, name.replace("-", "_"))
            assert value == (ref.value if isinstance(ref, External) else line[line.index(f"--{name}") + 1])
        for out in step.outputs:
            assert getattr(ns, out.name) == out.path, (step.name, out.name)
        for flag, folder in step.scratch.items():
            assert getattr(ns, flag.replace("-", "_")) == folder, (step.name, flag)


def test_fan_out_roles_parse_with_the_worker_flags(parse_only):
    steps = build(load_params(REPO / "params.yaml"))
    for step in (s for s in steps if s.fanout):
        line = argv(step, steps)[1:]  # without the DVC subcommand ("run")
        for role in ("create-study", "worker", "summarize"):
            ns = _parsed(
                step.name,
                [role, "--params", "params.yaml", *line, "--storage", "sqlite:///x.db", "--worker-index", "3"],
            )
            assert ns.command == role and ns.worker_index == 3 and ns.storage == "sqlite:///x.db"
