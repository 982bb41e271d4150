"""Calibration of the malignancy and finding probabilities and operating points.

Malignancy: ``p = sigmoid(logit / T)`` (temperature scaling). Finding: ``p = sigmoid(f / T +
b)`` (Platt scaling, :func:`fit_platt`: the finding logit has no meaningful zero). Both are
fitted on a validation (calibration) split by minimising the negative log-likelihood; a
monotone map changes no ranking (AUC is unchanged), only how probabilities match observed
rates. Operating points are thresholds on the calibrated probability. :func:`refit` refits
them on other cases (``binds calibrate``).
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import sensitivity_specificity, threshold_for_sensitivity, youden_threshold

#: The range searched for a temperature (fit_temperature, fit_platt).
TEMPERATURE_BOUNDS = (0.05, 20.0)


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


def fit_temperature(logits, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """Temperature minimising the binary NLL of ``labels`` under ``sigmoid(logits / T)``.

    A golden-section search on ``log T`` within ``bounds`` (the NLL is unimodal in ``T`` for
    practical data). Returns 1.0 when a class is missing.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.size == 0 or y.min() == y.max():
        return 1.0
    return math.exp(_golden(lambda log_t: _nll(z / math.exp(log_t), y), *map(math.log, bounds)))


def fit_platt(logits, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> tuple[float, float]:
    """Temperature and bias ``(T, b)`` of Platt scaling, ``sigmoid(logits / T + b)`` (positive
    slope, ``T`` within ``bounds``), for a logit whose zero means nothing in itself, such as
    the pooled lesion logit behind the finding probability.

    Platt's (1999) fit: the NLL against the smoothed targets ``(n1 + 1) / (n1 + 2)`` for the
    positives and ``1 / (n0 + 2)`` for the negatives rather than 1 and 0, so that a small or
    separable calibration set gives a finite, moderate fit instead of a step. The NLL is
    jointly convex in ``(1 / T, b)``: a golden-section search on ``log T`` of the NLL
    minimised over ``b`` (bisection on its derivative, monotone in ``b``). Returns
    ``(1.0, 0.0)`` when a class is missing.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.size == 0 or y.min() == y.max():
        return 1.0, 0.0
    n1 = float((y == 1).sum())
    y = np.where(y == 1, (n1 + 1) / (n1 + 2), 1 / (y.size - n1 + 2))

    def best_bias(a: np.ndarray) -> float:
        lo, hi = -60.0, 60.0
        for _ in range(80):
            mid = (lo + hi) / 2
            if np.mean(0.5 * (1.0 + np.tanh((a + mid) / 2.0)) - y) > 0:
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2

    def profile(log_t: float) -> float:
        a = z / math.exp(log_t)
        return _nll(a + best_bias(a), y)

    t = math.exp(_golden(profile, *map(math.log, bounds)))
    return t, best_bias(z / t)


def _nll(a: np.ndarray, y: np.ndarray) -> float:
    """Mean binary NLL of ``y`` under ``sigmoid(a)``."""
    return float(np.mean(np.logaddexp(0.0, a) - y * a))


def _golden(fn, lo: float, hi: float, steps: int = 80) -> float:
    """The minimiser of a unimodal ``fn`` on ``[lo, hi]`` (golden-section search)."""
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = fn(c), fn(d)
    for _ in range(steps):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = fn(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = fn(d)
    return (lo + hi) / 2


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


#: What ``binds calibrate`` can refit: the two probabilities (its default) and the band.
REFIT_PARTS = ("malignancy", "finding")
BAND_PART = "band"


class MissingClassError(ValueError):
    """The studies lack one of the two classes a part of :func:`refit` needs (``part``)."""

    def __init__(self, part: str, message: str):
        super().__init__(message)
        self.part = part


def refit(rows, calibration: dict, ops: dict, parts=REFIT_PARTS,
          target_sensitivity: float = 0.98) -> tuple[dict, dict, dict]:
    """Refit a bundle's calibration on predicted, labelled studies (``binds calibrate``).

    ``rows``: one dict per study with ``malignant`` and ``abnormal`` (1/0, NaN unlabelled; as
    :func:`~.data.study_labels` and :func:`~.data.study_abnormal` give them, the labels
    training uses), ``malignancy_logit`` and ``finding_logit`` (the raw logits
    :class:`~.inference.Prediction` carries), as ``binds evaluate`` predicts them. ``calibration`` and ``ops``: the bundle's ``calibration`` and ``operating_points``.
    ``parts``: ``"malignancy"`` refits ``temperature`` and the operating points on malignant vs
    every other labelled study (as training does); ``"finding"`` refits
    ``finding_temperature`` and ``finding_bias`` (:func:`fit_platt`: the finding logit, a
    pooled lesion logit, has no meaningful zero) on abnormal (benign or malignant) vs normal
    studies. The ``finding_reference`` (the bilateral comparison's level) is kept: it shapes
    the finding logits being calibrated.

    Returns ``(calibration, operating_points, fitted)``; ``fitted`` names each refitted value
    with its old and new value, the counts it rests on, and ``at_bound`` when the search
    ended at an end of its range (the data barely constrain it). A part whose studies lack
    one of the two classes raises :class:`MissingClassError` (nothing to fit against); unknown
    ``parts`` a ``ValueError``.
    """
    unknown = set(parts) - set(REFIT_PARTS) - {BAND_PART}
    if unknown or not parts:
        raise ValueError(f"parts to refit must be among {', '.join(REFIT_PARTS + (BAND_PART,))}")
    cal, new_ops, fitted = dict(calibration), dict(ops), {}
    if "malignancy" in parts:
        z, y, n_pos, n_neg = _labelled(rows, "malignancy", "malignant", ("malignant", "other labelled"))
        t = fit_temperature(z, y)
        with np.errstate(over="ignore"):  # exactly as inference computes it (DiagnosisModel.probability)
            p = 1.0 / (1.0 + np.exp(-(z / t)))
        new_ops = operating_points(p, y, target_sensitivity)
        fitted["temperature"] = {"old": float(calibration.get("temperature", 1.0)), "new": t,
                                 "n_malignant": n_pos, "n_other": n_neg, "at_bound": _at_bound(t),
                                 # every malignant study's logit above every other's
                                 "separable": bool(z[y == 0].max() < z[y == 1].min())}
        fitted["threshold"] = {"old": float(ops.get("default", {}).get("threshold", 0.5)),
                               "new": new_ops["default"]["threshold"]}
        cal["temperature"] = t
    if "finding" in parts:
        f, ab, n_ab, n_normal = _labelled(rows, "finding", "abnormal", ("abnormal", "normal"))
        t, b = fit_platt(f, ab)
        counts = {"n_abnormal": n_ab, "n_normal": n_normal}
        fitted["finding_temperature"] = {"old": calibration.get("finding_temperature"), "new": t, **counts,
                                         "at_bound": _at_bound(t)}
        fitted["finding_bias"] = {"old": calibration.get("finding_bias"), "new": b, **counts}
        cal.update(finding_temperature=t, finding_bias=b)
    if BAND_PART in parts:
        fitted["uncertainty_band"] = _refit_band(rows, float(cal.get("temperature", 1.0)),
                                                 float(new_ops.get("default", {}).get("threshold", 0.5)))
    return cal, new_ops, fitted


def _refit_band(rows, temperature: float, threshold: float) -> dict:
    """:func:`fit_uncertainty_band` on the rows with two stages (a finite ``stage1_logit``: stage
    1 images and an MRI), their probabilities as inference computes them with ``temperature``."""
    z1 = np.array([r.get("stage1_logit", math.nan) for r in rows], dtype=np.float64)
    z2 = np.array([r.get("malignancy_logit", math.nan) for r in rows], dtype=np.float64)
    y = np.array([r.get("malignant", math.nan) for r in rows], dtype=np.float64)
    ok = np.isfinite(z1) & np.isfinite(z2) & np.isfinite(y)
    n_pos, n_neg = int((y[ok] == 1).sum()), int((y[ok] == 0).sum())
    if not n_pos or not n_neg:
        raise MissingClassError(BAND_PART, "the uncertainty band needs malignant and other labelled studies "
                                           "with both stages, mammography or ultrasound and an MRI "
                                           f"(found {n_pos} malignant, {n_neg} other)")
    with np.errstate(over="ignore"):  # exactly as inference computes them (DiagnosisModel.probability)
        p1, p2 = (1.0 / (1.0 + np.exp(-(z[ok] / temperature))) for z in (z1, z2))
    band, info = fit_uncertainty_band(p1, p2, y[ok].astype(int), threshold)
    return {"new": list(band), **info}


def _labelled(rows, part: str, label: str, names: tuple[str, str]):
    """``(logits, labels, n_positive, n_negative)`` of the rows whose ``{part}_logit`` and
    ``label`` are finite; :class:`MissingClassError` when either class is missing."""
    z = np.array([r.get(f"{part}_logit", math.nan) for r in rows], dtype=np.float64)
    y = np.array([r.get(label, math.nan) for r in rows], dtype=np.float64)
    ok = np.isfinite(z) & np.isfinite(y)
    n_pos, n_neg = int((y[ok] == 1).sum()), int((y[ok] == 0).sum())
    if not n_pos or not n_neg:
        raise MissingClassError(part, f"the {part} calibration needs {names[0]} and {names[1]} studies "
                                      f"(found {n_pos} {names[0]}, {n_neg} {names[1].split()[0]})")
    return z[ok], y[ok].astype(int), n_pos, n_neg


def _at_bound(t: float, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> bool:
    """Whether a fitted temperature ended at an end of the search range."""
    return bool(min(abs(math.log(t / b)) for b in bounds) < 1e-3)


def fit_uncertainty_band(p1, p2, labels, threshold: float) -> tuple[tuple[float, float], dict]:
    """The stage-1 uncertainty band of the two-stage decision (``binds calibrate --fit band``).

    ``p1``: each study's stage-1 malignancy probability (mammography and ultrasound); ``p2``:
    its probability with the MRI as well; ``labels``: 1 malignant, 0 every other labelled study;
    ``threshold``: the operating threshold both decisions use. Only studies with both stages
    belong here (stage 1 images and an MRI).

    The decision reads the MRI when ``p1`` lies strictly inside the band
    (:func:`~.inference.in_uncertainty_band`) and then decides on ``p2``, else on ``p1``. The
    band fitted is the one whose decision has the highest sensitivity + specificity on these
    studies (Youden's J, as the default threshold); of bands doing equally well, the one reading
    the fewest MRIs, then the one nearest the threshold. The band always holds the threshold
    (an uncertain study is one near it); each edge lies halfway between the last study outside
    and the first one inside (at 0 or 1 past the extremes, at the threshold when that is
    nearer). An empty band ``(threshold, threshold)`` means the MRI changed no decision for the
    better here. ``ValueError`` when a class is missing.

    Returns ``(band, info)``: ``info`` has the counts and the decision's sensitivity,
    specificity and MRI reads with the fitted band, with every MRI read (``stage2``) and with
    none (``stage1``).
    """
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if not (p1.shape == p2.shape == y.shape) or not (np.isfinite(p1).all() and np.isfinite(p2).all()):
        raise ValueError("p1, p2 and labels must be finite and of one length")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"the band needs malignant and other studies (found {n_pos} malignant, {n_neg} other)")
    order = np.argsort(p1, kind="stable")
    s1, d1, d2, yy = p1[order], p1[order] >= threshold, p2[order] >= threshold, y[order] == 1
    n = s1.size
    # correct decisions from stage 1 everywhere, and what reading the MRI of study k changes
    base_tp, base_tn = int((d1 & yy).sum()), int((~d1 & ~yy).sum())
    gain_tp = np.r_[0, np.cumsum((d2.astype(int) - d1.astype(int)) * yy)]
    gain_tn = np.r_[0, np.cumsum(((~d2).astype(int) - (~d1).astype(int)) * ~yy)]
    # the band holds the sorted studies i .. j-1; for each start i every end j at once (a loop over
    # both is quadratic in Python time: minutes for ten thousand studies)
    js = np.arange(n + 1)
    ends_ok = (js == n) | (s1[np.minimum(js, n - 1)] >= threshold)  # the band would not end below it
    mids = np.r_[threshold, (s1[:-1] + s1[1:]) / 2, threshold]  # mids[k]: between sorted k-1 and k
    hi_all = np.where(js == n, 1.0, np.maximum(mids, threshold))
    hi_all[0] = threshold if n else 1.0
    best = None
    for i in range(n + 1):
        if i > 0 and s1[i - 1] > threshold:
            break  # the band would start above the threshold
        if 0 < i < n and s1[i - 1] == s1[i]:
            continue  # no edge between equal probabilities
        j = js[i:]
        ok = ends_ok[i:].copy()
        inner = (j > i) & (j < n)
        ok[inner] &= s1[j[inner] - 1] != s1[j[inner]]  # no edge between equal probabilities
        if i == 0 and s1[0] <= 0.0:
            ok[j > i] = False  # a probability of exactly 0 or 1 is never strictly inside a band
        if s1[-1] >= 1.0:
            ok[(j == n) & (j > i)] = False
        j = j[ok]
        if not j.size:
            continue
        tp, tn = base_tp + gain_tp[j] - gain_tp[i], base_tn + gain_tn[j] - gain_tn[i]
        lo = np.full(j.size, 0.0 if i == 0 else min((s1[i - 1] + s1[i]) / 2, threshold) if i < n else threshold)
        hi = hi_all[j].copy()
        empty = j == i
        lo[empty] = hi[empty] = threshold
        score, width = -(tp / n_pos + tn / n_neg), (threshold - lo) + (hi - threshold)
        k = np.lexsort((j, width, j - i, score))[0]  # the first of equal keys, as a loop over j finds
        key = (float(score[k]), int(j[k] - i), float(width[k]))
        if best is None or key < best[0]:
            best = (key, (float(lo[k]), float(hi[k])))
    band = best[1]
    # the decision as inference makes it, with the fitted band, every MRI and none
    from .inference import in_uncertainty_band
    from .metrics import sensitivity_specificity

    inside = np.array([in_uncertainty_band(v, band) for v in p1], bool)
    info = {"n": int(y.size), "n_malignant": n_pos, "n_other": n_neg, "threshold": float(threshold)}
    for name, read in (("fitted", inside), ("stage2", np.ones_like(inside)), ("stage1", np.zeros_like(inside))):
        sens, spec = sensitivity_specificity(np.where(read, p2, p1), y, threshold)
        info[name] = {"sensitivity": sens, "specificity": spec, "n_stage2": int(read.sum())}
    return band, info
