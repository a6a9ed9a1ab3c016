import numpy as np
import pytest

from tlpipe.reports.evaluation import scores, spread


def test_scores_match_a_hand_computed_confusion_matrix():
    classes = ["cat", "dog", "fox"]
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2])
    probs = np.full((9, 3), 0.1)
    probs[np.arange(9), y_pred] = 0.8
    result = scores(y_true, probs, classes)
    # rows = truth, columns = prediction, counted by hand from the two arrays above
    assert result["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert result["accuracy"] == pytest.approx(6 / 9)
    cat, dog, fox = (result["per_class"][c] for c in classes)
    assert (cat["precision"], cat["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (dog["precision"], dog["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert (fox["precision"], fox["recall"]) == (pytest.approx(3 / 4), pytest.approx(3 / 4))
    assert fox["f1"] == pytest.approx(0.75) and fox["support"] == 4
    expected_loss = -(6 * np.log(0.8) + 3 * np.log(0.1)) / 9
    assert result["loss"] == pytest.approx(expected_loss)


def test_class_never_predicted_has_zero_precision_not_nan():
    result = scores(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "b"])
    assert result["per_class"]["b"]["precision"] == 0.0 and result["per_class"]["b"]["f1"] == 0.0


def test_confusion_and_spread():
    # rows = truth, columns = prediction; a class absent from the truth still gets its row
    predicted = np.array([[0.9, 0.1], [0.2, 0.8]])  # argmax: 0, 1
    assert scores(np.array([1, 1]), predicted, ["a", "b"])["confusion"] == [[0, 0], [1, 1]]
    picks = spread(np.array([0, 0, 0, 1, 1, 2]), 3, seed=0)
    assert sorted(np.array([0, 0, 0, 1, 1, 2])[picks].tolist()) == [0, 1, 2]
