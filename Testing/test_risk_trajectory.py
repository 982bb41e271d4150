"""Trajectory metrics and flags against hand-computed values."""

from __future__ import annotations

import datetime as dt

import pytest

from BINDSLib.risk.trajectory import (
    acceleration, change_from_first, change_last_years, risk_flags, slope_per_year,
    trajectory_metrics, years_since_first,
)

YEARS = [0.0, 1.0, 2.0, 3.0]
RISKS = [0.010, 0.012, 0.013, 0.017]


def test_hand_computed_example():
    # slope: sum((x-1.5)(y-0.013)) = 0.0045+0.0005+0+0.006 = 0.011 over sum((x-1.5)^2) = 5
    assert slope_per_year(YEARS, RISKS) == pytest.approx(0.0022)
    assert change_from_first(RISKS) == pytest.approx(0.007)
    # last 2 years: the earliest exam within 2 years (+31 days) of year 3 is year 1
    assert change_last_years(YEARS, RISKS) == pytest.approx(0.017 - 0.012)
    # parabola: quadratic contrast (1,-1,-1,1) . y / 4 = 0.002/4 = 0.0005 = c2 -> 2 c2
    assert acceleration(YEARS, RISKS) == pytest.approx(0.001)


def test_edge_cases():
    assert slope_per_year([0.0], [0.01]) is None
    assert change_from_first([0.01]) is None
    assert acceleration([0.0, 1.0], [0.01, 0.02]) is None
    assert change_last_years([0.0, 3.0], [0.01, 0.02]) is None      # nothing in the window
    assert change_last_years([0.0, 2.05], [0.01, 0.02]) == pytest.approx(0.01)  # tolerance
    assert acceleration([0, 1, 2, 3], [0.0, 0.01, 0.02, 0.03]) == pytest.approx(0.0, abs=1e-12)


def test_dates_become_years_and_metrics_follow():
    # 4-year gaps of 1461 days are exactly 4.0 years of 365.25 days
    dates = [dt.date(2000, 1, 1), dt.date(2004, 1, 1), dt.date(2008, 1, 1), dt.date(2012, 1, 1)]
    assert years_since_first(dates).tolist() == [0.0, 4.0, 8.0, 12.0]
    m = trajectory_metrics(dates, RISKS, window_years=8.0)
    assert m.slope_per_year == pytest.approx(0.0022 / 4)
    assert m.acceleration_per_year2 == pytest.approx(0.001 / 16)
    assert m.change_last_years == pytest.approx(0.005)  # window of 8 years reaches back to 2004
    assert m.n_exams == 4 and m.first_risk == 0.010 and m.last_risk == 0.017
    with pytest.raises(ValueError, match="ascending"):
        years_since_first([dt.date(2001, 1, 1), dt.date(2000, 1, 1)])


def test_flags():
    dates = [dt.date(2019, 1, 1), dt.date(2020, 1, 1), dt.date(2021, 1, 1)]
    high = trajectory_metrics(dates, [0.010, 0.012, 0.017])
    codes = [f.code for f in risk_flags(high, threshold=0.017, rise_threshold=0.005)]
    assert codes == ["consider_supplemental_mri", "rising_risk"]
    assert "consider supplemental MRI (NCCN 2026)" in risk_flags(high)[0].message
    low = trajectory_metrics(dates, [0.010, 0.012, 0.0169])
    assert [f.code for f in risk_flags(low, rise_threshold=0.01)] == []


def test_exams_of_one_date_are_one_time_point_at_their_highest_risk():
    """Two exams of one day: the metrics and flags do not depend on their order."""
    dates = [dt.date(2019, 1, 1), dt.date(2021, 1, 1), dt.date(2021, 1, 1)]
    for risks in ([0.010, 0.018, 0.016], [0.010, 0.016, 0.018]):
        m = trajectory_metrics(dates, risks)
        assert m.n_exams == 3 and m.last_risk == 0.018
        assert m.change_from_first == pytest.approx(0.008) and m.change_last_years == pytest.approx(0.008)
        assert m.slope_per_year == pytest.approx(0.008 / 2.0, rel=1e-3)  # two time points
        assert [f.code for f in risk_flags(m)] == ["consider_supplemental_mri", "rising_risk"]


def test_the_window_holds_two_years_and_a_calendar_month_and_no_change_is_no_rise():
    """From the risk audit: 2 years and 1 calendar month (761 days, across a 29 February too)
    was outside the window's "one month" tolerance of 1/12 year (30.4 days); and a rise
    threshold of 0 flagged an unchanged risk as "rose by 0.00 points"."""
    for first, last in ((dt.date(2018, 1, 1), dt.date(2020, 2, 1)), (dt.date(2018, 3, 1), dt.date(2020, 3, 31)),
                        (dt.date(2019, 1, 31), dt.date(2021, 2, 28)),
                        (dt.date(2023, 3, 1), dt.date(2025, 4, 1)), (dt.date(2022, 7, 31), dt.date(2024, 8, 31))):  # 762 days
        m = trajectory_metrics([first, last], [0.010, 0.016])
        assert m.change_last_years == 0.006, (first, last)
    assert trajectory_metrics([dt.date(2023, 3, 1), dt.date(2025, 4, 2)], [0.01, 0.016]).change_last_years is None
    same = trajectory_metrics([dt.date(2019, 1, 1), dt.date(2020, 1, 1)], [0.012, 0.012])
    assert same.change_last_years == 0.0 and risk_flags(same, threshold=1, rise_threshold=0) == []
    up = trajectory_metrics([dt.date(2019, 1, 1), dt.date(2020, 1, 1)], [0.012, 0.012001])
    assert [f.code for f in risk_flags(up, threshold=1, rise_threshold=0)] == ["rising_risk"]
    # the flags' numbers are told apart from their thresholds (hostile-input audit: "rose by 0.19
    # ... (flag at 0.19)")
    (flag,) = risk_flags(trajectory_metrics([dt.date(2019, 1, 1), dt.date(2020, 1, 1)], [0.01, 0.011910]),
                         threshold=1, rise_threshold=0.0019)
    assert "rose by 0.191 percentage points" in flag.message and "(flag at 0.190)" in flag.message
    (flag,) = risk_flags(trajectory_metrics([dt.date(2019, 1, 1)], [0.017004]), threshold=0.017)
    assert "5-year risk 1.7004% >= 1.7000%" in flag.message


def test_flags_compare_risks_as_they_are_reported():
    """A risk reported equal to the threshold (6 decimals) is flagged; a rise of 0.5 points
    computed as 0.004999999999999999 is a rise of 0.5 points."""
    dates = [dt.date(2019, 1, 1), dt.date(2021, 1, 1)]
    at = trajectory_metrics(dates, [0.010, 0.05690396])
    assert [f.code for f in risk_flags(at, threshold=0.056904, rise_threshold=1)] == ["consider_supplemental_mri"]
    assert risk_flags(trajectory_metrics(dates, [0.010, 0.0569034]), threshold=0.056904, rise_threshold=1) == []
    rise = trajectory_metrics(dates, [0.010, 0.015])
    assert 0.015 - 0.010 < 0.005  # (in floating point)
    assert rise.change_last_years == 0.005 and rise.change_from_first == 0.005  # reported as the risks are
    assert [f.code for f in risk_flags(rise, threshold=1)] == ["rising_risk"]
    # risks reported as 0.010000 and 0.015000: a rise of 0.5 points, whatever the digits behind them
    behind = trajectory_metrics(dates, [0.0100004, 0.0149996])
    assert [f.code for f in risk_flags(behind, threshold=1)] == ["rising_risk"]
