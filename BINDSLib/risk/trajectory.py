"""How a woman's risk moves across her dated exams: pure functions on (dates, risks).

Time is in years since the first exam (days / 365.25). All metrics are on one horizon's
cumulative risk (the 5-year risk by default), as absolute probabilities (0.01 = 1 %):

* ``slope_per_year`` -- least-squares line through (years, risk); needs 2 exams.
* ``change_from_first`` -- last risk minus first risk.
* ``change_last_years`` -- last risk minus the risk at the earliest exam within the last
  ``window_years`` (2) before the last exam, with one month of tolerance for screening
  schedules; ``None`` if no earlier exam lies in that window.
* ``acceleration_per_year2`` -- second derivative of the least-squares parabola (``2 c2``);
  needs 3 exams at distinct times.

Exams of one date are one time point, at the highest of their risks (the most cautious, and
independent of the order they were given in).

Flags (:func:`risk_flags`): the latest 5-year risk at or above the NCCN threshold (1.7 %)
-> "consider supplemental MRI (NCCN 2026)"; the change over the last 2 years at or above a
configurable rise (0.5 percentage points by default; not clinically validated).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .config import NCCN_MRI_THRESHOLD_5Y

DAYS_PER_YEAR = 365.25
#: Tolerance added to the look-back window (annual exams drift by days to weeks), in days: the
#: longest calendar month, added to the window's whole days (two years: 731 with a 29 February),
#: so that two years and one month, whichever months and leap days, is inside.
WINDOW_TOLERANCE_DAYS = 31
#: Default absolute rise of the 5-year risk over the window that raises a flag.
DEFAULT_RISE_THRESHOLD = 0.005
#: Risks are reported with this many decimals (report.json, risk.csv); flags compare them so.
ROUND_DECIMALS = 6


def years_since_first(dates: Sequence[_dt.date]) -> np.ndarray:
    """``(N,)`` float years of each date after the first (dates must be ascending)."""
    if not dates:
        return np.zeros(0)
    if any(b < a for a, b in zip(dates, dates[1:])):
        raise ValueError("exam dates must be in ascending order")
    return np.array([(d - dates[0]).days / DAYS_PER_YEAR for d in dates], dtype=np.float64)


def slope_per_year(years: Sequence[float], risks: Sequence[float]) -> float | None:
    """Least-squares slope of risk against years; ``None`` with fewer than 2 distinct times."""
    x = np.asarray(years, dtype=np.float64)
    y = np.asarray(risks, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    xc = x - x.mean()
    return float(np.sum(xc * (y - y.mean())) / np.sum(xc * xc))


def change_from_first(risks: Sequence[float]) -> float | None:
    """Last risk minus first; ``None`` with fewer than 2 exams."""
    return None if len(risks) < 2 else float(risks[-1] - risks[0])


def change_last_years(years: Sequence[float], risks: Sequence[float],
                      window_years: float = 2.0) -> float | None:
    """Last risk minus the risk at the earliest exam within ``window_years`` before the last.

    An exam counts as within the window when it lies at most ``ceil(window_years * 365.25) + 31``
    days before the last (two years and a calendar month: at most 762 days).
    ``None`` when only the last exam lies in the window.
    """
    x = np.asarray(years, dtype=np.float64)
    if len(x) < 2:
        return None
    days = np.rint((x[-1] - x[:-1]) * DAYS_PER_YEAR)  # (years_since_first counts whole days)
    inside = np.flatnonzero(days <= math.ceil(window_years * DAYS_PER_YEAR) + WINDOW_TOLERANCE_DAYS)
    if len(inside) == 0:
        return None
    return float(risks[-1] - risks[int(inside[0])])


def acceleration(years: Sequence[float], risks: Sequence[float]) -> float | None:
    """``2 c2`` of the least-squares parabola ``c0 + c1 x + c2 x^2`` (per year squared).

    ``None`` with fewer than 3 distinct times.
    """
    x = np.asarray(years, dtype=np.float64)
    y = np.asarray(risks, dtype=np.float64)
    if len(np.unique(x)) < 3:
        return None
    xc = x - x.mean()  # centring keeps the fit well conditioned; c2 is unchanged
    c2 = np.polyfit(xc, y, 2)[0]
    return float(2.0 * c2)


@dataclass(frozen=True)
class TrajectoryMetrics:
    """Trajectory of one horizon's risk over a woman's exams (see module docstring)."""

    horizon_years: int
    n_exams: int
    first_risk: float | None
    last_risk: float | None
    slope_per_year: float | None
    change_from_first: float | None
    change_last_years: float | None
    window_years: float
    acceleration_per_year2: float | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def trajectory_metrics(dates: Sequence[_dt.date], risks: Sequence[float], horizon_years: int = 5,
                       window_years: float = 2.0) -> TrajectoryMetrics:
    """All trajectory metrics of ``risks`` (one per exam, dates ascending)."""
    if len(dates) != len(risks):
        raise ValueError(f"{len(dates)} dates but {len(risks)} risks")
    n = len(risks)
    x = years_since_first(list(dates))
    r = [round(float(v), ROUND_DECIMALS) for v in risks]  # (the risks as reported)
    if len(set(x.tolist())) < len(x):  # exams of one date are one time point: its highest risk
        at = {}
        for xi, ri in zip(x.tolist(), r):
            at[xi] = max(at.get(xi, ri), ri)
        x, r = np.array(list(at)), list(at.values())
    def reported(v):  # a difference of risks as the risks are (0.005, not 0.005000000000000001)
        return None if v is None else round(v, ROUND_DECIMALS)

    return TrajectoryMetrics(
        horizon_years=horizon_years, n_exams=n,
        first_risk=r[0] if r else None, last_risk=r[-1] if r else None,
        slope_per_year=slope_per_year(x, r), change_from_first=reported(change_from_first(r)),
        change_last_years=reported(change_last_years(x, r, window_years)), window_years=window_years,
        acceleration_per_year2=acceleration(x, r))


@dataclass(frozen=True)
class Flag:
    """A finding for the reader: a stable ``code`` and a sentence."""

    code: str
    message: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def risk_flags(metrics: TrajectoryMetrics, threshold: float = NCCN_MRI_THRESHOLD_5Y,
               rise_threshold: float = DEFAULT_RISE_THRESHOLD) -> list[Flag]:
    """Flags for the latest exam: above the MRI threshold; risen beyond ``rise_threshold``."""
    from ..outputs.report import told_apart

    flags = []
    last = metrics.last_risk
    # compared as reported (risks are written with 6 decimals): a risk shown equal to the
    # threshold is flagged, and a rise of 0.5 points is not 0.4999999 points
    if last is not None and round(last, ROUND_DECIMALS) >= threshold:
        shown, limit = told_apart(last, threshold, 2, 6, scale=100)  # (1.7004% >= 1.7000%, not 1.70% twice)
        flags.append(Flag("consider_supplemental_mri",
                          f"{metrics.horizon_years}-year risk {shown}% >= {limit}%: consider supplemental MRI "
                          "(NCCN 2026)"))
    rise = metrics.change_last_years
    if rise is not None and rise > 0 and round(rise, ROUND_DECIMALS) >= rise_threshold:  # (no change is no rise)
        shown, limit = told_apart(rise, rise_threshold, 2, 6, scale=100)
        flags.append(Flag("rising_risk",
                          f"{metrics.horizon_years}-year risk rose by {shown} percentage points over the last "
                          f"{metrics.window_years:g} years (flag at {limit})"))
    return flags
