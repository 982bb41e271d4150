"""Per-year calibration of cumulative risk, stored as plain numbers in the bundle metadata.

Each year ``t`` has its own map from the network's cumulative logit ``z_t`` to a probability,
fitted on the known (uncensored) exams of a held-out set, weighted by the inverse probability
of censoring so that the absolute risk is that of the whole cohort:

* ``platt``: ``p = sigmoid(a z + b)`` with ``a > 0`` (Platt 1999, with his smoothed targets
  ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)`` so that few events do not give 0 or 1);
* ``isotonic``: a non-decreasing step function of ``z`` (pool-adjacent-violators), linearly
  interpolated between block centres and clipped to [1e-4, 1 - 1e-4];
* ``none``: ``p = sigmoid(z)``.

Both maps are non-decreasing in ``z``, so the order of exams within a year is kept. Separate
maps per year could cross; :meth:`Calibrator.apply` takes the running maximum over years so the
calibrated risk is still non-decreasing from year 1 to year 5.

JSON form (``metadata.json`` -> ``binds`` -> ``calibration``)::

    {"method": "platt", "years": [{"year": 1, "a": 1.02, "b": -0.1, "n": 812, "events": 9}, ...]}
    {"method": "isotonic", "years": [{"year": 1, "x": [...], "y": [...], "n": .., "events": ..}]}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("platt", "isotonic", "none")
P_MIN = 1e-4


def sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_platt(z: np.ndarray, y: np.ndarray, iterations: int = 100,
              weights: np.ndarray | None = None) -> tuple[float, float]:
    """Platt scaling ``sigmoid(a z + b)`` by Newton's method; ``a`` kept positive.

    Parameters
    ----------
    z : ``(N,)`` logits; y : ``(N,)`` 0/1 targets; weights : optional ``(N,)`` sample weights
    (e.g. inverse probability of censoring).

    Returns
    -------
    (a, b). With a single class, or if the fit would reverse the order (``a <= 0``), only the
    intercept is fitted (``a = 1``).
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    sw = np.ones_like(z) if weights is None else np.asarray(weights, dtype=np.float64)
    n_pos = float((sw * y).sum())
    n_neg = float((sw * (1 - y)).sum())
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def newton(x: np.ndarray) -> np.ndarray:
        w = np.zeros(x.shape[1])
        for _ in range(iterations):
            p = sigmoid(x @ w)
            grad = x.T @ (sw * (p - t))
            hess = x.T @ (x * (sw * p * (1 - p))[:, None]) + 1e-9 * np.eye(x.shape[1])
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < 1e-10:
                break
        return w

    if len(z) >= 2 and n_pos > 0 and n_neg > 0 and np.ptp(z) > 0:
        a, b = newton(np.stack([z, np.ones_like(z)], axis=1))
        if a > 0 and np.isfinite(a) and np.isfinite(b):
            return float(a), float(b)
    return 1.0, (newton_offset(z, t, weights=sw) if len(z) else 0.0)


def newton_offset(z: np.ndarray, t: np.ndarray, iterations: int = 100, weights=None) -> float:
    """Intercept ``b`` of ``sigmoid(z + b)`` fitting targets ``t`` (optionally weighted)."""
    sw = np.ones_like(z) if weights is None else weights
    b = 0.0
    for _ in range(iterations):
        p = sigmoid(z + b)
        g = float((sw * (p - t)).sum())
        h = float((sw * p * (1 - p)).sum()) + 1e-9
        b -= g / h
        if abs(g / h) < 1e-10:
            break
    return b


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
            if method == "platt":
                a, b = fit_platt(z, y, weights=w)
                entry.update(a=a, b=b)
            elif method == "isotonic":
                if len(z) == 0:
                    x, p = [0.0], [float(sigmoid(0.0))]
                else:
                    x, p = fit_isotonic(z, y, weights=w)
                entry.update(x=[float(v) for v in x], y=[float(v) for v in p])
            years.append(entry)
        return cls(method, years)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated cumulative risk ``(N, T)`` from logits ``(N, T)``; non-decreasing in year."""
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
        return np.maximum.accumulate(p, axis=-1)

    def to_json(self) -> dict:
        return {"method": self.method, "years": self.years}

    @classmethod
    def from_json(cls, d: dict | None) -> "Calibrator":
        if not d:
            return cls("none", [])
        return cls(d["method"], list(d.get("years", [])))
