"""Confidence intervals over images (scipy's bootstrap) and ROC AUC (scikit-learn), in the one shape every table
uses: ``{"value", "ci": [low, high], "images"}``.

Images are the unit that is resampled: the words of one image are not independent (one caption, one model state),
so a rate over words is resampled as per-image sums (a ratio of sums: CHAIR-i, grounding means, pointing game,
ablation rates), which is exact for "the same statistic on a resampled set of images"."""
import warnings
from typing import Callable, Dict, Optional, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000


def _interval(data, statistic, vectorized: bool, resamples: int, seed: int):
    from scipy.stats import DegenerateDataWarning, bootstrap

    # a degenerate resampling distribution (e.g. every image 0/1) still has a percentile interval
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(data, statistic, paired=True, vectorized=vectorized, n_resamples=resamples,
                           confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return [None if np.isnan(low) else float(low), None if np.isnan(high) else float(high)]


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float], resamples: int = RESAMPLES,
             seed: int = 0) -> Dict[str, object]:
    """``sum(numerators) / sum(denominators)`` with a 95 % percentile-bootstrap interval over images (one entry
    of each per image). Images with a zero denominator take part in the resampling (they are images that had
    nothing to count). ``value`` is None when the denominators sum to 0."""
    top, bottom = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if top.shape != bottom.shape or top.ndim != 1:
        raise ValueError(f"ratio_ci: numerators and denominators must be 1-d of one length, got {top.shape} and "
                         f"{bottom.shape}")
    images = int(top.size)
    total = bottom.sum()
    value = float(top.sum() / total) if total > 0 else None
    if value is None or images < 2 or np.all(top == top[0]) and np.all(bottom == bottom[0]):
        return {"value": value, "ci": [value, value] if images >= 2 and value is not None else [None, None],
                "images": images}

    def statistic(a, b, axis=-1):
        return a.sum(axis) / b.sum(axis)

    return {"value": value, "ci": _interval((top, bottom), statistic, True, resamples, seed), "images": images}


def mean_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Dict[str, object]:
    """The mean of per-image values with its 95 % bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    return ratio_ci(values, np.ones_like(values), resamples, seed)


def statistic_ci(images: int, statistic: Callable[[np.ndarray], Optional[float]], resamples: int = RESAMPLES,
                 seed: int = 0) -> Dict[str, object]:
    """Any statistic of a set of images (``statistic(image_indices) -> float or None``) with a 95 % bootstrap
    interval; resamples where the statistic is undefined (None) are left out of the percentiles."""
    value = statistic(np.arange(images))
    if value is None or images < 2:
        return {"value": value, "ci": [None, None], "images": images}
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.integers(0, images, images)) for _ in range(resamples)]
    draws = np.asarray([d for d in draws if d is not None], dtype=np.float64)
    if draws.size < resamples // 2:
        return {"value": value, "ci": [None, None], "images": images}
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"value": float(value), "ci": [float(low), float(high)], "images": images}


def roc_auc(labels: Sequence[int], scores: Sequence[float],
            weights: Optional[Sequence[float]] = None) -> Optional[float]:
    """scikit-learn's ROC AUC of ``scores`` for telling label 1 from 0 (``weights``: how often each counts, e.g.
    a bootstrap's multiplicities); None when only one label occurs."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.size == 0 or np.all(labels == labels[0]):
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64), sample_weight=weights))
