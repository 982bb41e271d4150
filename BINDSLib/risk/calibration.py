"""Per-year calibration of cumulative risk, stored as plain numbers in the bundle metadata.

Each year ``t`` has its own map from the network's cumulative logit ``z_t`` to a probability,
fitted on the known (uncensored) exams of a held-out set, weighted by the inverse probability
of censoring so that the absolute risk is that of the whole cohort:

* ``platt``: ``p = sigmoid(a z + b_t)`` with one slope ``a > 0`` for every year and an
  intercept per year (:func:`fit_platt_years`: separate slopes made the years' maps cross at
  low risk; Platt 1999, with his smoothed targets ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)`` per
  year so that few events do not give 0 or 1). The JSON holds ``a`` and ``b`` per year (bundles
  fitted before the shared slope have one ``a`` per year, and are read as they are);
* ``isotonic``: a non-decreasing step function of ``z`` (pool-adjacent-violators), linearly
  interpolated between block centres and clipped to [1e-4, 1 - 1e-4];
* ``none``: ``p = sigmoid(z)``.

Both maps are non-decreasing in ``z``, so the order of exams within a year is kept. The maps
of separate years can still give an exam a lower risk in a later year (isotonic maps, Platt
maps of older bundles, or a logit that hardly rises); :meth:`Calibrator.apply` takes the running
maximum over years so the calibrated risk is still non-decreasing from year 1 to year 5.

JSON form (``metadata.json`` -> ``binds`` -> ``calibration``)::

    {"method": "platt", "years": [{"year": 1, "a": 1.02, "b": -0.1, "n": 812, "events": 9}, ...]}
    {"method": "isotonic", "years": [{"year": 1, "x": [...], "y": [...], "n": .., "events": ..}]}
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("platt", "isotonic", "none")
P_MIN = 1e-4


def sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_platt(z: np.ndarray, y: np.ndarray, iterations: int = 100,
              weights: np.ndarray | None = None) -> tuple[float, float]:
    """Platt scaling ``sigmoid(a z + b)`` of one year (:func:`fit_platt_years` with one column).

    Parameters
    ----------
    z : ``(N,)`` logits; y : ``(N,)`` 0/1 targets; weights : optional ``(N,)`` sample weights
    (e.g. inverse probability of censoring).

    Returns
    -------
    (a, b). With a single class, or if the fit would reverse the order (``a <= 0``), only the
    intercept is fitted (``a = 1``).
    """
    z = np.asarray(z, dtype=np.float64)[:, None]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[:, None]
    a, (b,) = fit_platt_years(z, np.asarray(y, dtype=np.float64)[:, None], np.ones_like(z), w, iterations)
    return a, b


def fit_platt_years(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                    weights: np.ndarray | None = None, iterations: int = 100) -> tuple[float, list[float]]:
    """Platt scaling of every year at once: ``sigmoid(a z_t + b_t)``, one slope ``a > 0`` for
    all years and an intercept per year.

    Why one slope: separate fits per year gave the demo bundle slopes of 0.92 to 1.99, so the
    year-5 map fell below the year-4 map at low risk, and the running maximum of
    :meth:`Calibrator.apply` gave 31 of its 422 test exams their 4-year risk as their 5-year
    risk. With one slope, year ``t + 1`` lies below year ``t`` only for an exam whose logit rises
    by less than ``(b_t - b_{t+1}) / a`` (none of those test exams), at the same calibration
    (:meth:`Calibrator.fit` logs how many validation exams do).

    Each year keeps Platt's smoothed targets of its own events and non-events. With a single
    class in all years, or a slope that would reverse the order, ``a = 1`` and only the
    intercepts are fitted. A year without known exams takes its neighbours' intercept;
    ``(1, [0, ...])`` when nothing is known.
    """
    z, y, m = (np.asarray(v, dtype=np.float64) for v in (logits, targets, mask))
    T = z.shape[1]
    sw_all = np.ones_like(z) if weights is None else np.asarray(weights, dtype=np.float64)
    rows_z, rows_t, rows_w, rows_year = [], [], [], []
    for t in range(T):
        known = (m[:, t] > 0) & (sw_all[:, t] > 0)
        zt, yt, wt = z[known, t], y[known, t], sw_all[known, t]
        n_pos, n_neg = float((wt * yt).sum()), float((wt * (1 - yt)).sum())
        rows_z.append(zt)
        rows_t.append(np.where(yt > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)))
        rows_w.append(wt)
        rows_year.append(np.full(len(zt), t))
    zz, tt, ww, yr = (np.concatenate(v) for v in (rows_z, rows_t, rows_w, rows_year))
    if len(zz) == 0:
        return 1.0, [0.0] * T
    present = np.unique(yr)
    onehot = (yr[:, None] == present[None, :]).astype(np.float64)

    def newton(x: np.ndarray, offset: np.ndarray) -> np.ndarray:
        v = np.zeros(x.shape[1])
        for _ in range(iterations):
            p = sigmoid(x @ v + offset)
            grad = x.T @ (ww * (p - tt))
            hess = x.T @ (x * (ww * p * (1 - p))[:, None]) + 1e-9 * np.eye(x.shape[1])
            step = np.linalg.solve(hess, grad)
            v -= step
            if np.max(np.abs(step)) < 1e-10:
                break
        return v

    both = (ww * (tt > 0.5)).sum() > 0 and (ww * (tt < 0.5)).sum() > 0
    if both and np.ptp(zz) > 0:
        v = newton(np.column_stack([zz, onehot]), np.zeros_like(zz))
        if np.isfinite(v).all() and v[0] > 0:
            b = np.interp(np.arange(T), present, v[1:])  # (a year with nothing known: its neighbours')
            return float(v[0]), [float(x) for x in b]
    b = np.interp(np.arange(T), present, newton(onehot, zz))
    return 1.0, [float(x) for x in b]


def fit_isotonic(z: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    """Isotonic (non-decreasing) regression of ``y`` on ``z`` by pool-adjacent-violators.

    Returns
    -------
    x, p : block centres (weighted mean ``z``) and block (weighted) means of ``y``, for linear
    interpolation.
    """
    order = np.argsort(z, kind="mergesort")
    zs = np.asarray(z, dtype=np.float64)[order]
    ys = np.asarray(y, dtype=np.float64)[order]
    ws = (np.ones_like(zs) if weights is None else np.asarray(weights, dtype=np.float64)[order])
    sums, counts, zsum = [], [], []
    for zi, yi, wi in zip(zs, ys, ws):
        sums.append(wi * yi)
        counts.append(wi)
        zsum.append(wi * zi)
        while len(sums) > 1 and sums[-2] / counts[-2] >= sums[-1] / counts[-1]:
            s, c, q = sums.pop(), counts.pop(), zsum.pop()
            sums[-1] += s
            counts[-1] += c
            zsum[-1] += q
    x = [q / c for q, c in zip(zsum, counts)]
    p = [s / c for s, c in zip(sums, counts)]
    return x, p


@dataclass
class Calibrator:
    """Per-year maps from cumulative logits to calibrated cumulative risk (see module doc)."""

    method: str = "none"
    years: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, not {self.method!r}")

    @classmethod
    def fit(cls, logits: np.ndarray, targets: np.ndarray, mask: np.ndarray,
            method: str = "platt", weights: np.ndarray | None = None) -> "Calibrator":
        """Fit one map per year on the known entries.

        Parameters
        ----------
        logits, targets, mask : ``(N, T)`` arrays (mask 1 = the year's outcome is known).
        weights : optional ``(N, T)`` sample weights, e.g. inverse probability of censoring
            (:func:`BINDSLib.risk.metrics.ipcw_weights`): without them, cancer-free women
            censored early leave later years and the fitted risk comes out too high.
        """
        logits, targets, mask = (np.asarray(a, dtype=np.float64) for a in (logits, targets, mask))
        w_all = np.ones_like(logits) if weights is None else np.asarray(weights, dtype=np.float64)
        years = []
        for t in range(logits.shape[1]):
            known = (mask[:, t] > 0) & (w_all[:, t] > 0)
            z, y, w = logits[known, t], targets[known, t], w_all[known, t]
            entry = {"year": t + 1, "n": int(known.sum()), "events": int(y.sum())}
            if method == "isotonic":
                if len(z) == 0:
                    x, p = [0.0], [float(sigmoid(0.0))]
                else:
                    x, p = fit_isotonic(z, y, weights=w)
                entry.update(x=[float(v) for v in x], y=[float(v) for v in p])
            years.append(entry)
        if method == "platt":
            a, bs = fit_platt_years(logits, targets, mask, w_all)
            for entry, b in zip(years, bs):
                entry.update(a=a, b=b)
        cal = cls(method, years)
        falling = (np.diff(cal.apply(logits, hold=False), axis=1) < 0).any(axis=1)
        if falling.any():
            log.warning("calibration: the risk of %d of %d exams would fall from one year to the next; "
                        "the running maximum over years holds it", int(falling.sum()), len(falling))
        return cal

    def apply(self, logits: np.ndarray, hold: bool = True) -> np.ndarray:
        """Calibrated cumulative risk ``(N, T)`` from logits ``(N, T)``; non-decreasing in year
        (``hold=False``: each year's map alone, without the running maximum)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "none":
            p = sigmoid(z)
        else:
            if len(self.years) != z.shape[-1]:
                raise ValueError(f"calibration has {len(self.years)} years, logits have {z.shape[-1]}")
            cols = []
            for t, entry in enumerate(self.years):
                zt = z[..., t]
                if self.method == "platt":
                    cols.append(sigmoid(entry["a"] * zt + entry["b"]))
                else:
                    cols.append(np.interp(zt, entry["x"], entry["y"]))
            p = np.stack(cols, axis=-1)
        p = np.clip(p, P_MIN, 1 - P_MIN)
        return np.maximum.accumulate(p, axis=-1) if hold else p

    def to_json(self) -> dict:
        return {"method": self.method, "years": self.years}

    @classmethod
    def from_json(cls, d: dict | None) -> "Calibrator":
        if not d:
            return cls("none", [])
        return cls(d["method"], list(d.get("years", [])))

    def check(self, n_years: int) -> "Calibrator":
        """``ValueError`` unless inference can apply it to ``n_years`` yearly logits: one map per
        year, of finite numbers (Platt ``a`` > 0; isotonic knots ``x`` and risks ``y`` in [0, 1]
        of one length)."""
        if self.method == "none":
            return self
        if len(self.years) != n_years:
            raise ValueError(f"calibration has {len(self.years)} years, the model {n_years}")

        def finite(v):
            return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

        for t, entry in enumerate(self.years, 1):
            if not isinstance(entry, dict):
                raise ValueError(f"calibration year {t} must be an object")
            if self.method == "platt" and not (finite(entry.get("a")) and entry["a"] > 0 and finite(entry.get("b"))):
                raise ValueError(f"calibration year {t}: a (> 0) and b must be finite numbers")
            if self.method == "isotonic":
                x, y = entry.get("x"), entry.get("y")
                if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) >= 1
                        and all(map(finite, x + y)) and all(0.0 <= v <= 1.0 for v in y)):
                    raise ValueError(f"calibration year {t}: x and y must be lists of one length, y in [0, 1]")
        return self
