"""Diagnostic metrics: AUC (MONAI) with bootstrap CI, ROC points, operating thresholds,
expected calibration error, Dice (MONAI), the saliency pointing game, biopsy reduction.

All functions take numpy arrays: ``scores (N,)`` (higher = more likely positive) and
``labels (N,)`` in {0, 1}.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def auc(scores, labels) -> float:
    """ROC AUC (``monai.metrics.compute_roc_auc``); NaN when a class is missing or a score is
    not a number (MONAI would rank it above all others)."""
    import torch
    from monai.metrics import compute_roc_auc

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.size == 0 or not np.isfinite(s).all() or not np.isfinite(y).all() or len(np.unique(y)) < 2:
        return math.nan
    y = y.astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_roc_auc(torch.as_tensor(s), torch.as_tensor(y)))


def macro_auc(probabilities, labels, n_classes: int) -> float:
    """One-vs-rest macro AUC over the classes present with both positives and negatives
    (``probabilities (N, K)``, ``labels (N,)`` in 0..K-1); NaN when none qualifies."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    values = [auc(p[:, k], (y == k).astype(int)) for k in range(n_classes)]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def bootstrap_ci(statistic, *arrays, n: int = 1000, seed: int = 0, level: float = 0.95,
                 stratify=None) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)`` (cases resampled together).

    ``stratify`` (labels) resamples within each class so every replicate has both classes.
    NaN replicates are dropped; ``(nan, nan)`` if none is left.
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a) for a in arrays]
    m = len(arrays[0])
    if m == 0:
        return math.nan, math.nan
    strata = [np.arange(m)] if stratify is None else \
        [np.flatnonzero(np.asarray(stratify) == v) for v in np.unique(stratify)]
    values = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])
        v = statistic(*(a[idx] for a in arrays))
        if not (isinstance(v, float) and math.isnan(v)):
            values.append(v)
    if not values:
        return math.nan, math.nan
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (``(nan, nan)`` when n is 0).
    Unlike a percentile bootstrap it stays informative at 0 or n successes and for small n
    (e.g. a pointing game over 15 images)."""
    from statistics import NormalDist

    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else max(0.0, centre - half),
            1.0 if successes == n else min(1.0, centre + half))


def _binary(labels) -> np.ndarray:
    """Labels as int64 0/1; ``ValueError`` for anything else (a NaN label became -2**63, which
    counted as positive)."""
    y = np.asarray(labels, dtype=np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (leave unlabelled cases out first)")
    return y.astype(np.int64)


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, thresholds decreasing; a case is called positive
    when ``score >= threshold``. Starts at (0, 0) with threshold +inf."""
    s = np.asarray(scores, dtype=np.float64)
    y = _binary(labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    return (np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, s[distinct]])


def sensitivity_specificity(scores, labels, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``score >= threshold`` is called positive."""
    s = np.asarray(scores, dtype=np.float64)
    y = _binary(labels).astype(bool)
    pred = s >= threshold
    sens = float(pred[y].mean()) if y.any() else math.nan
    spec = float((~pred[~y]).mean()) if (~y).any() else math.nan
    return sens, spec


def threshold_for_sensitivity(scores, labels, target: float) -> float:
    """The highest threshold whose sensitivity is ``>= target`` (most specific such one)."""
    _, tpr, thr = roc_points(scores, labels)
    ok = np.flatnonzero(tpr >= target - 1e-12)
    t = float(thr[ok[0]]) if ok.size else float(np.min(scores))
    return t if np.isfinite(t) else float(np.max(scores))


def youden_threshold(scores, labels) -> float:
    """The threshold maximising sensitivity + specificity - 1."""
    fpr, tpr, thr = roc_points(scores, labels)
    j = int(np.argmax(tpr[1:] - fpr[1:])) + 1
    return float(thr[j])


def ece(probabilities, labels, bins: int = 10) -> float:
    """Expected calibration error: bin-size-weighted mean |mean probability - positive rate|
    over ``bins`` equal-width probability bins."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.size == 0:
        return math.nan
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(total)


def reliability_bins(probabilities, labels, bins: int = 10) -> list[dict]:
    """Per equal-width bin: ``{"low", "high", "n", "mean_probability", "positive_rate"}``."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        out.append({"low": b / bins, "high": (b + 1) / bins, "n": int(sel.sum()),
                    "mean_probability": float(p[sel].mean()) if sel.any() else None,
                    "positive_rate": float(y[sel].mean()) if sel.any() else None})
    return out


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two binary masks (``monai.metrics.compute_dice``); 1.0 when both are empty."""
    import torch
    from monai.metrics import compute_dice

    p = torch.as_tensor(np.asarray(prediction) > 0, dtype=torch.float32)[None, None]
    r = torch.as_tensor(np.asarray(reference) > 0, dtype=torch.float32)[None, None]
    return float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])


def pointing_hit(saliency: np.ndarray, lesion: np.ndarray) -> bool:
    """Whether the maximum of ``saliency`` lies inside the binary ``lesion`` (same shape). A map
    that points nowhere (constant, or no finite value) is a miss: its first voxel is no maximum;
    of tied maxima the first in memory order counts."""
    s = np.asarray(saliency)  # (no copy: a full-field mammogram's map is large)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        if not np.isfinite(np.nanmax(s)) or np.nanmax(s) == np.nanmin(s):
            return False
    return bool(np.asarray(lesion).reshape(s.shape).flat[int(np.nanargmax(s))] > 0)


def biopsy_reduction(cal_scores, cal_labels, test_scores, test_labels, target: float = 0.98
                     ) -> dict:
    """Share of benign lesions spared biopsy at a threshold keeping sensitivity >= ``target``.

    The threshold is the most specific one reaching ``target`` sensitivity on the calibration
    cases; on the test cases, a benign lesion below it is spared. Returns ``threshold``,
    ``spared_fraction`` (of test benign lesions), ``test_sensitivity``, ``n_benign``,
    ``n_malignant``.
    """
    t = threshold_for_sensitivity(cal_scores, cal_labels, target)
    s = np.asarray(test_scores, dtype=np.float64)
    y = np.asarray(test_labels, dtype=np.int64).astype(bool)
    spared = float((s[~y] < t).mean()) if (~y).any() else math.nan
    sens = float((s[y] >= t).mean()) if y.any() else math.nan
    return {"threshold": t, "spared_fraction": spared, "test_sensitivity": sens,
            "n_benign": int((~y).sum()), "n_malignant": int(y.sum())}


def finite_json(v):
    """``v`` with numpy scalars made plain and NaN/inf replaced by ``None`` (strict JSON)."""
    if isinstance(v, dict):
        return {k: finite_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_json(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v
