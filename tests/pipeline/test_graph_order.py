"""The run order comes from the steps' refs (graphlib), not from the order they are declared in."""

import random
from dataclasses import replace

import pytest

from pipelines.graph import _declare, build, ordered
from pipelines.step import Ref
from tests.conftest import REPO
from tlpipe.config import load_params

VARIANTS = (
    {},
    {"model.backbone": "mobilenet_v2", "model.weights": "imagenet"},
    {"data.source": "s3://bucket/photos"},
    {"tune.enabled": False},
)


def _valid(steps) -> bool:
    seen: set[str] = set()
    for step in steps:
        if any(isinstance(ref, Ref) and ref.step not in seen for ref in step.inputs.values()):
            return False
        seen.add(step.name)
    return True


@pytest.mark.parametrize("overrides", VARIANTS, ids=str)
def test_a_shuffled_declaration_gives_the_same_valid_order(overrides):
    params = load_params(REPO / "params.yaml", overrides)
    expected = [s.name for s in build(params)]
    assert _valid(build(params))
    declared = _declare(params)
    rng = random.Random(0)
    for _ in range(20):
        shuffled = declared[:]
        rng.shuffle(shuffled)
        got = ordered(shuffled)
        assert [s.name for s in got] == expected
        assert _valid(got)


def test_the_listing_order_is_not_the_run_order_source():
    declared = _declare(load_params(REPO / "params.yaml"))
    assert not _valid(list(reversed(declared)))  # reversed is invalid, so ordered() really reorders
    assert _valid(ordered(list(reversed(declared))))


def test_a_cycle_or_an_undeclared_producer_is_one_clear_error():
    steps = _declare(load_params(REPO / "params.yaml"))
    first = steps[0]
    looped = [replace(first, inputs={"x": Ref(steps[-1].name, "registration")}), *steps[1:]]
    with pytest.raises(ValueError, match="cycle"):
        ordered(looped)
    with pytest.raises(ValueError, match="undeclared step"):
        ordered([s for s in steps if s.name != "make_subset"])
