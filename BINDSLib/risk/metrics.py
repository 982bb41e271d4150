"""Evaluation of cumulative risk: C-index, time-dependent AUC per year, calibration per year.

Plain numpy, no scikit-learn/lifelines. Inputs are per exam: ``times`` (years from the exam to
the diagnosis, or to the last cancer-free follow-up) and ``events`` (1 = cancer diagnosed).

* :func:`concordance_index` -- Harrell's C, or Uno's IPCW C (``ipcw=True``), truncated at a
  horizon (5 years): of the pairs where one woman was diagnosed first, the fraction where she
  had the higher score.
* :func:`time_dependent_auc` -- cumulative/dynamic AUC at year ``t``: cases diagnosed within
  ``t`` years, controls followed cancer-free beyond ``t`` years; women censored before ``t``
  are left out (complete-case, as Mirai's evaluation).
* :func:`calibration_by_year` -- on the exams whose year-``t`` outcome is known: mean predicted
  risk, observed rate, their ratio, Brier score and a binned reliability table; weighted by
  inverse probability of censoring (:func:`ipcw_weights`) so that censored women do not make
  the observed rate of later years too high.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Follow-up grace, as in :mod:`~BINDSLib.risk.losses` (14 days).
GRACE_YEARS = 14 / 365.25


def _arrays(scores, times, events):
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(times, dtype=np.float64).ravel()
    e = np.asarray(events).astype(bool).ravel()
    if not (len(s) == len(t) == len(e)):
        raise ValueError(f"scores, times and events differ in length: {len(s)}, {len(t)}, {len(e)}")
    if not (np.isfinite(s).all() and np.isfinite(t).all()):
        raise ValueError("scores and times must be finite")
    return s, t, e


def censoring_survival(times, events):
    """Kaplan-Meier estimate of the censoring survival ``G(t) = P(C > t)``.

    Returns
    -------
    a function mapping an array of times to ``G(t-)`` (left limit: censorings at ``t`` do not
    count), as needed for IPCW weights.
    """
    t = np.asarray(times, dtype=np.float64)
    censored = ~np.asarray(events).astype(bool)
    uniq = np.unique(t[censored])
    surv, s = [], 1.0
    for u in uniq:
        # events at u come first (the usual convention): those women are no longer at risk of
        # being censored at u, so that the IPCW rate equals the Kaplan-Meier incidence with ties
        at_risk = np.sum(t >= u) - np.sum((t == u) & ~censored)
        d = np.sum((t == u) & censored)
        s *= 1.0 - d / at_risk if at_risk else 1.0
        surv.append(s)
    uniq, surv = np.asarray(uniq), np.asarray(surv)

    def g_left(x):
        x = np.asarray(x, dtype=np.float64)
        idx = np.searchsorted(uniq, x, side="left") - 1   # last censoring time < x
        return np.where(idx >= 0, surv[np.clip(idx, 0, None)] if len(surv) else 1.0, 1.0)

    return g_left


def ipcw_weights(times, events, years: Sequence[float], grace_years: float = 0.0) -> np.ndarray:
    """Inverse-probability-of-censoring weights for the cumulative incidence at each year.

    For year ``t``: an exam diagnosed by ``t`` weighs ``1 / G(T_i-)``, one followed cancer-free
    beyond ``t`` weighs ``1 / G(t)``, one censored before ``t`` weighs 0 (``G``: Kaplan-Meier of
    the censoring, :func:`censoring_survival`). The weighted event rate among the exams is then
    an unbiased estimate of the rate in the whole cohort, although women followed shortly
    without cancer drop out of later years while every cancer stays known (complete-case rates
    at year 5 are far too high).

    Returns
    -------
    ``(N, len(years))`` float weights.
    """
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events).astype(bool)
    g = censoring_survival(t, e)
    out = np.zeros((len(t), len(years)))
    g_t = g(t)
    for k, year in enumerate(years):
        case = e & (t <= year)
        control = t + grace_years >= year
        control &= ~case
        gy = float(g(np.array([float(year)]))[0])
        with np.errstate(divide="ignore"):
            out[case, k] = 1.0 / np.maximum(g_t[case], 1e-6)
            out[control, k] = 1.0 / max(gy, 1e-6)
    return out


def concordance_index(scores, times, events, horizon: float | None = 5.0,
                      ipcw: bool = False) -> float:
    """Harrell's (or Uno's, ``ipcw=True``) concordance index.

    Parameters
    ----------
    scores : ``(N,)`` predicted risk (higher = earlier cancer), e.g. 5-year risk.
    times : ``(N,)`` years to diagnosis or to last follow-up.
    events : ``(N,)`` 1 if diagnosed.
    horizon : events after it count as censored at it (``None``: no truncation).

    Returns
    -------
    C in [0, 1] (ties in score count one half); ``nan`` when no pair is comparable.
    Pair ``(i, j)`` is comparable when ``i`` is an event at ``t_i < t_j``, or at ``t_i == t_j``
    with ``j`` censored (Harrell only).
    """
    s, t, e = _arrays(scores, times, events)
    if horizon is not None:
        e = e & (t <= horizon)
        t = np.minimum(t, horizon)
    g = censoring_survival(t, e) if ipcw else None
    num = den = 0.0
    for i in np.flatnonzero(e):
        later = t > t[i]
        if not ipcw:
            later |= (t == t[i]) & ~e
        if not later.any():
            continue
        w = 1.0
        if ipcw:
            gi = float(g(t[i]))
            if gi <= 0:
                continue
            w = 1.0 / gi**2
        sj = s[later]
        num += w * (np.sum(s[i] > sj) + 0.5 * np.sum(s[i] == sj))
        den += w * len(sj)
    return num / den if den > 0 else math.nan


def auc(scores_cases, scores_controls) -> float:
    """Mann-Whitney AUC (ties count one half); ``nan`` when a group is empty."""
    a = np.asarray(scores_cases, dtype=np.float64)
    b = np.asarray(scores_controls, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    allv = np.concatenate([a, b])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    i = 0
    while i < len(sorted_v):
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    r_cases = ranks[: len(a)].sum()
    return float((r_cases - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def time_dependent_auc(scores, times, events, year: float) -> float:
    """Cumulative/dynamic AUC at ``year`` (see module docstring); ``nan`` without cases or controls."""
    s, t, e = _arrays(scores, times, events)
    cases = e & (t <= year)
    controls = t > year
    return auc(s[cases], s[controls])


def calibration_by_year(probs, targets, mask, n_bins: int = 5, weights=None) -> list[dict]:
    """Calibration of cumulative risk per year on the exams whose outcome is known.

    Parameters
    ----------
    probs, targets, mask : ``(N, T)``.
    n_bins : reliability bins per year (quantiles of predicted risk).
    weights : optional ``(N, T)`` IPCW weights (:func:`ipcw_weights`); means, observed rates
        and Brier scores are then weighted, estimating the whole cohort's values.

    Returns
    -------
    one dict per year: ``year, n, events, mean_predicted, observed, observed_to_expected,
    brier, bins`` (each bin: ``n, mean_predicted, observed``).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    m = np.asarray(mask) > 0
    w_all = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    m = m & (w_all > 0)
    out = []
    for k in range(p.shape[1]):
        known = m[:, k]
        pk, yk, wk = p[known, k], y[known, k], w_all[known, k]
        entry: dict = {"year": k + 1, "n": int(known.sum()), "events": int(yk.sum())}
        if len(pk) == 0:
            entry.update(mean_predicted=None, observed=None, observed_to_expected=None,
                         brier=None, bins=[])
            out.append(entry)
            continue
        mean_p, obs = float(np.average(pk, weights=wk)), float(np.average(yk, weights=wk))
        bins = []
        order = np.argsort(pk, kind="mergesort")
        for chunk in np.array_split(order, min(n_bins, len(order))):
            if len(chunk):
                bins.append({"n": int(len(chunk)),
                             "mean_predicted": float(np.average(pk[chunk], weights=wk[chunk])),
                             "observed": float(np.average(yk[chunk], weights=wk[chunk]))})
        entry.update(mean_predicted=mean_p, observed=obs,
                     observed_to_expected=obs / mean_p if mean_p > 0 else None,
                     brier=float(np.average((pk - yk) ** 2, weights=wk)), bins=bins)
        out.append(entry)
    return out


def evaluate(probs, times, events, targets, mask, horizon: int | None = None) -> dict:
    """All metrics for cumulative risks ``probs (N, T)``.

    Returns
    -------
    ``{"n_exams", "n_events", "c_index" (Harrell, T-year risk), "c_index_uno",
    "auc": {"1": .., ..., "T": ..}, "calibration": [...] (IPCW-weighted, see
    :func:`ipcw_weights`), "calibration_complete_case": [...] (unweighted)}`` with ``nan`` as
    ``None``.
    """
    p = np.asarray(probs, dtype=np.float64)
    T = p.shape[1]
    horizon = T if horizon is None else horizon
    s = p[:, -1]
    _, t, e = _arrays(s, times, events)

    def clean(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)

    return {
        "n_exams": int(len(s)),
        "n_events": int(np.sum(e & (t <= horizon))),
        "c_index": clean(concordance_index(s, t, e, horizon=horizon)),
        "c_index_uno": clean(concordance_index(s, t, e, horizon=horizon, ipcw=True)),
        "auc": {str(k): clean(time_dependent_auc(p[:, k - 1], t, e, k)) for k in range(1, T + 1)},
        "calibration": calibration_by_year(p, targets, mask, weights=ipcw_weights(t, e, range(1, T + 1), GRACE_YEARS)),
        "calibration_complete_case": calibration_by_year(p, targets, mask),
    }
