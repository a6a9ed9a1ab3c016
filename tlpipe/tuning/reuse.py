"""Compiled trial models kept across a worker's trials, so a repeated configuration skips load, build and tracing.

Two trials with the same regime, freeze ratio, BatchNorm choice and head shape build the same model from the
same seed; only the learning rate differs. A fresh model pays for loading the backbone, building the model,
and tracing Keras's train and test functions (about a second each on 2 cores at the default sizes), every
trial. Keras keeps a model's traced functions across `fit` calls, so a kept model only needs its starting
state back: every model variable (weights, BatchNorm statistics, dropout seed-generator state) and every
optimizer variable (step count, learning rate, Adam's moments) is restored to the values it had right after it
was compiled, then the trial's learning rate is set. `fit` resets the metrics itself. The trial then trains
exactly as a fresh model would, bit for bit (tests/steps/test_trial_reuse.py).

Keras has no "reset to initial state" call (`clone_model` builds a new model, which is the cost saved), so
the snapshot is kept here. Only models whose training data lives in memory are kept: activations streamed
from the disk cache may be evicted by another boundary, and they are the large-data case, where a trial's
epochs, not its fixed cost, carry the time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import keras
import numpy as np

from tlpipe.contracts import HyperParams
from tlpipe.models.backbones import FreezePlan


@dataclass
class Built:
    """A compiled trial model and what it trains on: train variants, validation data, mode and freeze plan."""

    model: keras.Model
    train: list
    val: object
    mode: str
    plan: FreezePlan


def config_key(hp: HyperParams) -> HyperParams:
    """What makes two trials' models the same model: every hyperparameter but the learning rate (set per trial)."""
    return hp.model_copy(update={"learning_rate": 0.0})


def in_memory_bytes(built: Built) -> int:
    """Bytes of the arrays a kept model holds on to beyond the worker's own data (cached activations)."""
    return sum(a.nbytes for a in [*built.train, built.val]) if built.mode == "cached" else 0


class ModelPool:
    """Up to `models` compiled trial models, least recently used dropped first, within `memory_bytes` of arrays."""

    def __init__(self, models: int = 4, memory_bytes: int = 2**30):
        self.models, self.memory_bytes = models, memory_bytes
        self._kept: OrderedDict[HyperParams, tuple[Built, list, list[np.ndarray]]] = OrderedDict()
        self.reused = 0

    def take(self, hp: HyperParams) -> Built | None:
        """The kept model of `hp`'s configuration, reset to its starting state at `hp.learning_rate`, or None."""
        key = config_key(hp)
        if key not in self._kept:
            return None
        self._kept.move_to_end(key)
        built, variables, start = self._kept[key]
        for variable, value in zip(variables, start, strict=True):
            variable.assign(value)
        built.model.optimizer.learning_rate = hp.learning_rate
        self.reused += 1
        return built

    def keep(self, hp: HyperParams, built: Built) -> None:
        """Keep a freshly compiled model (call before its first fit) with a snapshot of its starting state."""
        if any(not isinstance(a, np.ndarray) for a in [*built.train, built.val]) or not built.model.optimizer.built:
            return  # streamed from disk (module docstring), or optimizer state that fit would create later
        model = built.model
        variables = [*model.variables, *model.optimizer.variables]
        self._kept[config_key(hp)] = (built, variables, [np.array(v.numpy()) for v in variables])
        while len(self._kept) > self.models or (
            len(self._kept) > 1 and sum(in_memory_bytes(b) for b, _, _ in self._kept.values()) > self.memory_bytes
        ):
            self._kept.popitem(last=False)
