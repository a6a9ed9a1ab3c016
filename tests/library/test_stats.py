"""Paired statistics (tlpipe.reports.stats) on constructed per-image correctness."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlpipe.reports.stats import compare, mcnemar, min_detectable_gain, paired_ci

CLASSES = ["a", "b"]


def pair(n: int, both: int, fixed: int, broken: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Champion and challenger correctness over n images, with labels alternating a/b.

    The first `both` images both get right, the next `fixed` only the challenger, the next `broken` only the
    champion, the rest neither.
    """
    champion = np.zeros(n, bool)
    challenger = np.zeros(n, bool)
    champion[:both] = challenger[:both] = True
    challenger[both : both + fixed] = True
    champion[both + fixed : both + fixed + broken] = True
    return champion, challenger, np.arange(n) % 2


def test_much_better_challenger_is_significant_with_a_positive_interval():
    champion, challenger, labels = pair(400, 300, 40, 2)
    result = compare(champion, challenger, labels, CLASSES, seed=1)
    assert (result["fixed"], result["broken"], result["n"]) == (40, 2, 400)
    assert result["mcnemar_p"] < 1e-6 and result["significant"]
    assert result["gain"] == pytest.approx(38 / 400)
    low, high = result["gain_ci95"]
    assert 0 < low < result["gain"] < high
    json.dumps(result)  # it goes into registration.json and gate.json as is


def test_much_worse_challenger_has_a_negative_interval():
    champion, challenger, labels = pair(400, 300, 2, 40)
    result = compare(champion, challenger, labels, CLASSES, seed=1)
    assert result["significant"] and result["gain"] < 0
    assert result["gain_ci95"][1] < 0
    for cls in CLASSES:
        low, high = result["recall_change_ci95"][cls]
        assert low <= result["recall_change"][cls] <= high and high < 0.05


def test_equal_models_are_not_told_apart():
    champion, challenger, labels = pair(200, 150, 0, 0)
    result = compare(champion, challenger, labels, CLASSES, seed=1)
    assert (result["fixed"], result["broken"], result["mcnemar_p"]) == (0, 0, 1.0)
    assert not result["significant"] and result["gain"] == 0.0 and result["gain_ci95"] == [0.0, 0.0]
    # As many fixed as broken: no evidence either way, and an interval around zero.
    balanced = compare(*pair(200, 150, 10, 10), CLASSES, seed=1)
    assert balanced["mcnemar_p"] == pytest.approx(1.0) and not balanced["significant"]
    low, high = balanced["gain_ci95"]
    assert low < 0 < high


def test_small_difference_on_a_small_test_set_is_not_significant():
    result = compare(*pair(50, 35, 7, 3), CLASSES, seed=0)
    assert result["mcnemar_p"] == pytest.approx(mcnemar(*pair(50, 35, 7, 3)[:2])["mcnemar_p"])
    assert 0.3 < result["mcnemar_p"] < 0.4  # two-sided exact binomial of 7 vs 3
    assert result["gain_ci95"][0] < 0 < result["gain_ci95"][1]
    assert result["min_detectable_gain"] > abs(result["gain"])


def test_seeded_results_repeat_exactly_and_the_seed_matters():
    data = pair(120, 80, 12, 6)
    first, again = compare(*data, CLASSES, seed=5), compare(*data, CLASSES, seed=5)
    assert first == again
    other = compare(*data, CLASSES, seed=6)
    assert other["gain_ci95"] != first["gain_ci95"] or other["recall_change_ci95"] != first["recall_change_ci95"]


def test_class_without_test_images_and_tiny_inputs():
    champion, challenger, _ = pair(10, 5, 2, 1)
    result = compare(champion, challenger, np.zeros(10, int), ["a", "b"], seed=0)
    assert result["recall_change"]["b"] is None and result["recall_change_ci95"]["b"] is None
    assert paired_ci(np.array([True]), np.array([False]), seed=0) == [-1.0, -1.0]
    assert paired_ci(np.array([], bool), np.array([], bool), seed=0) == [0.0, 0.0]


def test_min_detectable_gain_shrinks_with_more_images():
    assert min_detectable_gain(100, 10) > min_detectable_gain(1000, 100) > min_detectable_gain(10000, 1000)
    # (1.96 + 0.84) * sqrt(0.1 / 1000) = 0.0280
    assert min_detectable_gain(1000, 100) == pytest.approx(0.0280, abs=5e-4)
    assert min_detectable_gain(1000, 0) == min_detectable_gain(1000, 1) > 0
    assert min_detectable_gain(0, 0) == 1.0
