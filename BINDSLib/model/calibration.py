"""Calibration of the malignancy and finding probabilities (temperature scaling) and
operating points.

``p = sigmoid(logit / T)``: ``T`` is fitted on a validation (calibration) split by minimising
the negative log-likelihood; it changes no ranking (AUC is unchanged), only how probabilities
match observed rates. Operating points are thresholds on the calibrated probability.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import sensitivity_specificity, threshold_for_sensitivity, youden_threshold


def compare_with_other_breast(logits, films, weight: float, reference: float) -> np.ndarray:
    """Finding logits compared with the other breast as at inference
    (``DiagnosisConfig.bilateral_weight``): ``f - weight * (c - reference)``, ``c`` the mean
    logit of the same woman's films of the other breast, of the same view when there are any.
    ``films[i]`` is ``(woman, laterality, view)`` of study ``i``'s single mammogram, or
    ``None`` for a study that is not one mammogram (left as it is, as is a film without the
    other breast or with a non-finite logit)."""
    import torch

    from .network import bilateral_offsets, other_breast_films

    f = np.asarray(logits, dtype=np.float64)
    c = np.full_like(f, np.nan)
    by_woman: dict = {}
    for i, film in enumerate(films):
        if film is not None and np.isfinite(f[i]):
            by_woman.setdefault(film[0], []).append(i)
    for i, film in enumerate(films):
        if film is None or not np.isfinite(f[i]):
            continue
        group = by_woman[film[0]]
        same = [group[k] for k in other_breast_films(film[1], film[2], [films[j][1:] for j in group])]
        if same:
            c[i] = float(np.mean(f[same]))
    return f + bilateral_offsets(torch.from_numpy(c), weight, reference).numpy()


def fit_temperature(logits, labels, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature minimising the binary NLL of ``labels`` under ``sigmoid(logits / T)``.

    A golden-section search on ``log T`` within ``bounds`` (the NLL is unimodal in ``T`` for
    practical data). Returns 1.0 when a class is missing.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.size == 0 or y.min() == y.max():
        return 1.0

    def nll(log_t: float) -> float:
        a = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, a) - y * a))

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = nll(c), nll(d)
    for _ in range(80):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = nll(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = nll(d)
    return float(math.exp((lo + hi) / 2))


def operating_points(probabilities, labels, target_sensitivity: float = 0.98) -> dict:
    """Operating points on calibrated probabilities.

    ``default``: Youden's J (max sensitivity + specificity - 1); ``high_sensitivity``: the most
    specific threshold with sensitivity >= ``target_sensitivity``. Each with the sensitivity
    and specificity reached on these cases.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    out = {}
    if y.size == 0 or y.min() == y.max():
        return {"default": {"threshold": 0.5, "criterion": "fixed 0.5 (no calibration data)"}}
    for name, t, crit in (("default", youden_threshold(p, y), "youden"),
                          ("high_sensitivity", threshold_for_sensitivity(p, y, target_sensitivity),
                           f"sensitivity >= {target_sensitivity:g}")):
        sens, spec = sensitivity_specificity(p, y, t)
        out[name] = {"threshold": float(t), "criterion": crit, "sensitivity": sens,
                     "specificity": spec}
    out["high_sensitivity"]["target_sensitivity"] = float(target_sensitivity)
    return out
