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
CHUNK = 100  # resamples computed at once by multiplicity_ci


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


def paired_ratio_difference_ci(numerators_a: Sequence[float], denominators_a: Sequence[float],
                               numerators_b: Sequence[float], denominators_b: Sequence[float],
                               resamples: int = RESAMPLES, seed: int = 0) -> Dict[str, object]:
    """``sum(a_num) / sum(a_den) - sum(b_num) / sum(b_den)`` of two models on the same images (entry i of every
    sequence is image i), with a 95 % percentile-bootstrap interval that resamples images once for both (paired).
    ``value`` is None when a denominator sums to 0."""
    arrays = [np.asarray(values, dtype=np.float64) for values in
              (numerators_a, denominators_a, numerators_b, denominators_b)]
    if any(array.shape != arrays[0].shape or array.ndim != 1 for array in arrays):
        raise ValueError("paired_ratio_difference_ci: the four sequences must be 1-d of one length (one entry per "
                         f"image), got {[array.shape for array in arrays]}")
    images = int(arrays[0].size)
    if arrays[1].sum() <= 0 or arrays[3].sum() <= 0:
        return {"value": None, "ci": [None, None], "images": images}
    value = float(arrays[0].sum() / arrays[1].sum() - arrays[2].sum() / arrays[3].sum())
    differs = np.stack(arrays[::2]) if images else None
    if images < 2 or (np.all(differs == differs[:, :1]) and np.all(arrays[1] == arrays[1][0])
                      and np.all(arrays[3] == arrays[3][0])):
        return {"value": value, "ci": [value, value] if images >= 2 else [None, None], "images": images}

    def statistic(a, a_den, b, b_den, axis=-1):
        return a.sum(axis) / a_den.sum(axis) - b.sum(axis) / b_den.sum(axis)

    return {"value": value, "ci": _interval(tuple(arrays), statistic, True, resamples, seed), "images": images}


def mean_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Dict[str, object]:
    """The mean of per-image values with its 95 % bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    return ratio_ci(values, np.ones_like(values), resamples, seed)


def _resampled_images(images: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, images]``: the image indices of each bootstrap resample (drawn with replacement)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, images, images) for _ in range(resamples)])


def statistic_ci(images: int, statistic: Callable[[np.ndarray], Optional[float]], resamples: int = RESAMPLES,
                 seed: int = 0) -> Dict[str, object]:
    """Any statistic of a set of images (``statistic(image_indices) -> float or None``) with a 95 % bootstrap
    interval; resamples where the statistic is undefined (None) are left out of the percentiles."""
    value = statistic(np.arange(images))
    if value is None or images < 2:
        return {"value": value, "ci": [None, None], "images": images}
    draws = [statistic(chosen) for chosen in _resampled_images(images, resamples, seed)]
    return _percentile_entry(value, [d for d in draws if d is not None], images, resamples)


def multiplicity_ci(images: int, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = RESAMPLES,
                    seed: int = 0) -> Dict[str, object]:
    """:func:`statistic_ci` for a statistic computed on all resamples at once: ``statistic(counts [R, images])``
    (how often each image is drawn in each resample; one row of ones is the data itself) returns ``[R]`` values,
    NaN where undefined. The same resamples as :func:`statistic_ci` draws."""
    value = float(statistic(np.ones((1, images)))[0])
    if np.isnan(value) or images < 2:
        return {"value": None if np.isnan(value) else value, "ci": [None, None], "images": images}
    chosen = _resampled_images(images, resamples, seed)
    draws = []
    for start in range(0, resamples, CHUNK):  # a chunk's [R, words] arrays stay small on large splits
        block = chosen[start:start + CHUNK]
        counts = np.zeros((block.shape[0], images))
        np.add.at(counts, (np.arange(block.shape[0])[:, None], block), 1.0)
        draws.append(statistic(counts))
    draws = np.concatenate(draws)
    return _percentile_entry(value, draws[~np.isnan(draws)], images, resamples)


def _percentile_entry(value: float, draws, images: int, resamples: int) -> Dict[str, object]:
    draws = np.asarray(draws, dtype=np.float64)
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


def weighted_roc_auc(labels: Sequence[int], scores: Sequence[float], weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` for telling label 1 from 0 under each row of ``weights [R, N]`` (how often each item
    counts), all rows in one vectorised pass: the Mann-Whitney form, ties counted half, which is what
    scikit-learn's trapezoids give (tested equal to :func:`roc_auc` row by row). ``[R]``; NaN where a row weighs
    only one label. A bootstrap of 1000 resamples costs one call instead of 1000 calls of scikit-learn's."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    _, group = np.unique(scores, return_inverse=True)  # groups of tied scores, in increasing order
    order = np.argsort(group, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
    ordered = weights[:, order]
    positive = np.add.reduceat(ordered * labels[order], starts, axis=1)
    negative = np.add.reduceat(ordered * ~labels[order], starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative  # negative weight of strictly lower scores
    pairs = positive.sum(1) * negative.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (positive * (below + 0.5 * negative)).sum(1) / pairs, np.nan)
