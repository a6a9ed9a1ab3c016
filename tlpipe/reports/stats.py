"""Paired statistics for two models scored on the same test images (scipy).

Every function takes per-image correctness: boolean arrays in the same image order, one for the champion and
one for the challenger. Pairing matters: both models saw the same images, so only the images on which they
disagree (the discordant pairs) carry information about which one is better.
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.05
POWER = 0.8
RESAMPLES = 2000


def mcnemar(champion_ok: np.ndarray, challenger_ok: np.ndarray) -> dict:
    """McNemar's exact test: are the images the challenger fixed and broke a fair coin?

    Under "the two models are equally accurate" each discordant image is as likely to be fixed as broken,
    so `fixed` ~ Binomial(fixed + broken, 0.5); scipy's exact binomial test gives the two-sided p-value.

    Returns:
        {"fixed": images only the challenger gets right, "broken": images only the champion gets right,
        "mcnemar_p": two-sided p-value (1.0 when there are no discordant images)}.
    """
    from scipy.stats import binomtest

    champion_ok, challenger_ok = np.asarray(champion_ok, bool), np.asarray(challenger_ok, bool)
    fixed = int(np.sum(challenger_ok & ~champion_ok))
    broken = int(np.sum(champion_ok & ~challenger_ok))
    p = binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "mcnemar_p": float(p)}


def paired_ci(champion_ok: np.ndarray, challenger_ok: np.ndarray, seed: int, resamples: int = RESAMPLES) -> list[float]:
    """95% percentile bootstrap interval of the accuracy gain (challenger - champion), resampling images.

    scipy's `bootstrap(paired=True)` draws the same image indices for both arrays, so each resample keeps
    the pairing. Seeded: the same inputs and seed give the same interval.
    """
    from scipy.stats import bootstrap

    a, b = np.asarray(challenger_ok, float), np.asarray(champion_ok, float)
    if len(a) < 2:
        gain = float(a.mean() - b.mean()) if len(a) else 0.0
        return [gain, gain]

    def mean_gain(x, y, axis):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    res = bootstrap(
        (a, b),
        mean_gain,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return [float(low), float(high)]


def min_detectable_gain(n: int, discordant: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest accuracy difference a paired test on `n` images detects with `power` at level `alpha`.

    Connor's (1987) normal approximation to McNemar's test needs n = (z_a sqrt(q) + z_b sqrt(q - d^2))^2 / d^2
    images to detect a difference d when a share q of images is discordant. Dropping the d^2 term (which
    makes the bound slightly conservative) and solving for d gives d = (z_{1-alpha/2} + z_{power}) sqrt(q / n).
    q is this comparison's observed discordance, at least one image (when the models agree on every image
    the test set still cannot resolve less than one image's worth of difference).
    """
    from scipy.stats import norm

    if n <= 0:
        return 1.0
    q = max(discordant, 1) / n
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(min(1.0, z * np.sqrt(q / n)))


def compare(
    champion_ok: np.ndarray,
    challenger_ok: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    seed: int = 0,
    resamples: int = RESAMPLES,
    alpha: float = ALPHA,
    power: float = POWER,
) -> dict:
    """Everything a reviewer needs to decide whether the challenger really differs from the champion.

    Args:
        champion_ok: per test image, whether the champion's prediction is right.
        challenger_ok: the same for the challenger, same image order.
        labels: the true class index of each image.
        classes: class names, indexed by label.
        seed: seeds every bootstrap (the result repeats exactly).
        resamples: bootstrap resamples.
        alpha: significance level of McNemar's test and the power calculation.
        power: power at which `min_detectable_gain` is computed.

    Returns:
        A JSON-ready dict: n, fixed, broken, mcnemar_p, significant (p < alpha), gain and gain_ci95 (accuracy
        as a fraction), recall_change and recall_change_ci95 per class (each class's bootstrap resamples
        only that class's images, so its support stays fixed; None for a class with no test images),
        min_detectable_gain, and the settings used.
    """
    champion_ok, challenger_ok = np.asarray(champion_ok, bool), np.asarray(challenger_ok, bool)
    labels = np.asarray(labels)
    test = mcnemar(champion_ok, challenger_ok)
    n = len(labels)
    change, change_ci = {}, {}
    for index, cls in enumerate(classes):
        mask = labels == index
        if not mask.any():
            change[cls], change_ci[cls] = None, None
            continue
        change[cls] = float(challenger_ok[mask].mean() - champion_ok[mask].mean())
        change_ci[cls] = paired_ci(champion_ok[mask], challenger_ok[mask], seed + 1 + index, resamples)
    return {
        "n": n,
        **test,
        "significant": test["mcnemar_p"] < alpha,
        "gain": float(challenger_ok.mean() - champion_ok.mean()) if n else 0.0,
        "gain_ci95": paired_ci(champion_ok, challenger_ok, seed, resamples),
        "recall_change": change,
        "recall_change_ci95": change_ci,
        "min_detectable_gain": min_detectable_gain(n, test["fixed"] + test["broken"], alpha, power),
        "alpha": alpha,
        "power": power,
        "seed": seed,
        "resamples": resamples,
    }
