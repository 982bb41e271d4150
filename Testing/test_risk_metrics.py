"""C-index, time-dependent AUC, calibration: hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from BINDSLib.risk.calibration import Calibrator, fit_isotonic, fit_platt
from BINDSLib.risk.metrics import (
    auc, calibration_by_year, censoring_survival, concordance_index, evaluate, time_dependent_auc,
)


def test_harrell_c_index_by_hand():
    # times 1(event) 2(censored) 3(event) 4(censored); comparable pairs: (0,1),(0,2),(0,3),(2,3)
    times = [1, 2, 3, 4]
    events = [1, 0, 1, 0]
    scores = [0.9, 0.5, 0.3, 0.3]
    # (0,1) 0.9>0.5 yes; (0,2) yes; (0,3) yes; (2,3) tie -> 0.5  => 3.5/4
    assert concordance_index(scores, times, events, horizon=None) == pytest.approx(3.5 / 4)
    assert concordance_index([0.1, 0.2, 0.3, 0.4], times, events, horizon=None) == pytest.approx(0.0)
    # horizon 2.5: the event at 3 becomes censored -> pairs (0,1),(0,2),(0,3) -> 1.0
    assert concordance_index(scores, times, events, horizon=2.5) == pytest.approx(1.0)
    assert math.isnan(concordance_index([1, 2], [1, 2], [0, 0]))


def test_uno_c_index_weights_pairs_by_censoring():
    times = [1, 2, 3, 4]
    events = [1, 0, 1, 0]
    scores = [0.9, 0.5, 0.3, 0.3]
    g = censoring_survival(times, events)
    # censoring KM: drop at 2 (1 of 3 at risk) and at 4 (1 of 1): G(1-)=1, G(3-)=2/3
    assert g(np.array([1.0, 3.0])).tolist() == pytest.approx([1.0, 2 / 3])
    w0, w2 = 1.0, 1 / (2 / 3) ** 2
    expected = (3 * w0 + 0.5 * w2) / (3 * w0 + 1 * w2)
    assert concordance_index(scores, times, events, horizon=None, ipcw=True) == pytest.approx(expected)


def test_time_dependent_auc_by_hand():
    times = [0.5, 1.5, 2.0, 3.0, 0.8]
    events = [1, 1, 0, 0, 0]
    scores = [0.8, 0.4, 0.5, 0.1, 0.9]
    # year 1: case {0}, controls t>1: {1,2,3}; 0.8 beats all -> 1.0 (the woman censored at 0.8 is out)
    assert time_dependent_auc(scores, times, events, 1) == pytest.approx(1.0)
    # year 2: cases {0,1}, controls {3}: both beat 0.1 -> 1.0 ; subject 2 (censored at 2) is out
    assert time_dependent_auc(scores, times, events, 2) == pytest.approx(1.0)
    # year 1.6 with another control ordering: cases {0,1}, controls {2,3}: pairs 0>2,0>3,1<2,1>3 -> 3/4
    assert time_dependent_auc(scores, times, events, 1.6) == pytest.approx(0.75)
    assert auc([0.5], [0.5, 0.2]) == pytest.approx(0.75)
    assert math.isnan(auc([], [0.1]))


def test_calibration_by_year_by_hand():
    probs = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]])
    targets = np.array([[0, 0], [0, 1], [1, 1], [1, 1]])
    mask = np.array([[1, 1], [1, 1], [1, 1], [1, 0]])
    cal = calibration_by_year(probs, targets, mask, n_bins=2)
    assert cal[0]["n"] == 4 and cal[0]["events"] == 2
    assert cal[0]["mean_predicted"] == pytest.approx(0.4) and cal[0]["observed"] == pytest.approx(0.5)
    assert cal[0]["brier"] == pytest.approx((0.01 + 0.09 + 0.25 + 0.09) / 4)
    assert cal[0]["bins"] == [{"n": 2, "mean_predicted": pytest.approx(0.2), "observed": 0.0},
                              {"n": 2, "mean_predicted": pytest.approx(0.6), "observed": 1.0}]
    assert cal[1]["n"] == 3 and cal[1]["observed"] == pytest.approx(2 / 3)


def test_platt_recovers_a_known_map():
    rng = np.random.default_rng(0)
    z = rng.normal(-3, 1.5, 20000)
    p = 1 / (1 + np.exp(-(0.7 * z + 0.4)))
    y = rng.random(len(z)) < p
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.7, abs=0.07) and b == pytest.approx(0.4, abs=0.15)
    # one class only: slope 1, intercept only
    a1, _ = fit_platt(z[:50], np.zeros(50))
    assert a1 == 1.0


def test_isotonic_is_non_decreasing_and_pools_violators():
    x, p = fit_isotonic(np.array([1, 2, 3, 4.0]), np.array([0, 1, 0, 1.0]))
    assert p == [0.0, 0.5, 1.0] and x == [1.0, 2.5, 4.0]


def test_calibrator_fit_apply_and_json_round_trip():
    rng = np.random.default_rng(1)
    logits = np.sort(rng.normal(-3, 1, (500, 5)), axis=1)
    targets = (rng.random((500, 5)) < 0.1).astype(float)
    targets = np.maximum.accumulate(targets, axis=1)
    mask = np.ones_like(targets)
    mask[:250, 3:] = 0
    for method in ("platt", "isotonic", "none"):
        cal = Calibrator.fit(logits, targets, mask, method) if method != "none" else Calibrator()
        back = Calibrator.from_json(cal.to_json())
        p = back.apply(logits)
        assert np.allclose(p, cal.apply(logits))
        assert np.all(np.diff(p, axis=1) >= 0)
        if method != "none":
            assert [e["n"] for e in cal.years] == [500, 500, 500, 250, 250]


def test_evaluate_returns_all_metrics():
    rng = np.random.default_rng(2)
    n = 200
    risk = rng.random(n)
    times = np.where(risk > 0.8, rng.uniform(0, 5, n), rng.uniform(1, 8, n))
    events = (risk > 0.8).astype(int)
    probs = np.sort(np.stack([risk * k / 10 for k in range(1, 6)], 1), axis=1)
    out = evaluate(probs, times, events, np.zeros((n, 5)), np.ones((n, 5)))
    assert out["c_index"] > 0.9 and set(out["auc"]) == {"1", "2", "3", "4", "5"}
    assert len(out["calibration"]) == 5


def test_ipcw_weights_give_the_kaplan_meier_incidence():
    from BINDSLib.risk.metrics import ipcw_weights

    times, events = [1, 2, 3, 4], [1, 0, 1, 0]
    w = ipcw_weights(times, events, [1, 3])
    assert w[:, 0].tolist() == [1, 1, 1, 1]
    assert w[:, 1].tolist() == pytest.approx([1, 0, 1.5, 1.5])  # censored at 2: out; others 1/G
    y3 = np.array([1, 0, 1, 0])
    # KM: S(1) = 3/4, S(3) = 3/4 * 1/2 -> incidence by 3 years = 5/8
    assert np.average(y3, weights=w[:, 1]) == pytest.approx(5 / 8)
    cal = calibration_by_year(np.full((4, 2), 0.5), np.stack([[1, 0, 0, 0], y3], 1),
                              np.ones((4, 2)), weights=w)
    assert cal[1]["observed"] == pytest.approx(5 / 8) and cal[1]["n"] == 3


def test_weighted_platt_equals_duplicated_samples():
    rng = np.random.default_rng(3)
    z = rng.normal(-2, 1, 300)
    y = (rng.random(300) < 1 / (1 + np.exp(-z))).astype(float)
    w = rng.integers(1, 4, 300).astype(float)
    a_w, b_w = fit_platt(z, y, weights=w)
    a_d, b_d = fit_platt(np.repeat(z, w.astype(int)), np.repeat(y, w.astype(int)))
    assert a_w == pytest.approx(a_d, rel=1e-6) and b_w == pytest.approx(b_d, rel=1e-6)


def test_platt_years_share_a_slope(caplog):
    """One slope for all years, an intercept per year: known maps are recovered, and years whose
    own fits would cross at low risk (the demo bundle's year 4 and 5) do not cross."""
    from BINDSLib.risk.calibration import fit_platt_years, sigmoid

    rng = np.random.default_rng(4)
    n = 40000
    h = rng.normal(-3.0, 1.2, n)
    z = h[:, None] + np.cumsum(rng.uniform(0.3, 0.6, (n, 5)), axis=1)  # cumulative logits, increasing
    true_b = np.array([-0.2, -0.3, -0.5, -0.6, -0.8])  # (falling: the logits rise faster than the rate)
    u = rng.random(n)[:, None]
    y = np.maximum.accumulate((u < sigmoid(0.8 * z + true_b)).astype(float), axis=1)  # nested events
    a, b = fit_platt_years(z, y, np.ones_like(z))
    assert a == pytest.approx(0.8, abs=0.08) and b == pytest.approx(true_b.tolist(), abs=0.25)
    # year 5 whose own fit is much steeper than year 4's: separate maps cross, one slope does not
    y5 = (rng.random(n) < sigmoid(2.0 * z[:, 4] + 0.7)).astype(float)
    y_cross = np.column_stack([y[:, :4], np.maximum(y[:, 3], y5)])
    own4, own5 = fit_platt(z[:, 3], y_cross[:, 3]), fit_platt(z[:, 4], y_cross[:, 4])
    separate = [sigmoid(own4[0] * z[:, 3] + own4[1]), sigmoid(own5[0] * z[:, 4] + own5[1])]
    assert np.any(separate[1] < separate[0])
    a2, b2 = fit_platt_years(z, y_cross, np.ones_like(z))
    p = sigmoid(a2 * z + np.array(b2))
    assert np.all(np.diff(p, axis=1) > 0)
    with caplog.at_level("WARNING"):
        cal = Calibrator.fit(z, y_cross, np.ones_like(z), "platt")
    assert [e["a"] for e in cal.years] == [a2] * 5 and [e["b"] for e in cal.years] == b2
    assert "would fall" not in caplog.text
    # a year with nothing known takes its neighbours' intercept; no events at all: slope 1
    m = np.ones_like(z)
    m[:, 2] = 0
    _, b3 = fit_platt_years(z, y, m)
    assert b3[2] == pytest.approx((b3[1] + b3[3]) / 2)
    assert fit_platt_years(z[:100], np.zeros((100, 5)), np.ones((100, 5)))[0] == 1.0
    assert fit_platt_years(z[:0], np.zeros((0, 5)), np.zeros((0, 5))) == (1.0, [0.0] * 5)


def test_calibration_says_when_the_running_maximum_holds_a_risk(caplog):
    """Isotonic maps of separate years can fall from one year to the next for some exams: the
    fit says how many, and the applied risk is held non-decreasing."""
    z = np.array([[-3.0, -2.9], [-1.0, 1.0], [0.0, 0.1], [1.0, 2.0]] * 20)
    y = np.array([[0, 0], [0, 1], [1, 1], [1, 1]] * 20, dtype=float)
    with caplog.at_level("WARNING"):
        iso = Calibrator.fit(z, y, np.ones_like(z), "isotonic")
    raw = iso.apply(z, hold=False)
    falls = int((np.diff(raw, axis=1) < 0).any(axis=1).sum())
    assert falls > 0 and f"the risk of {falls} of 80 exams would fall from one year to the next" in caplog.text
    assert np.all(np.diff(iso.apply(z), axis=1) >= 0)


def test_censoring_at_the_time_of_a_diagnosis_comes_after_it():
    """Events first at a tied time (the usual convention): the women diagnosed at t are not at
    risk of censoring at t, so that the IPCW rate is the Kaplan-Meier incidence with ties too."""
    times = [1.0, 1.0, 1.0, 2.0, 3.0]
    events = [1, 0, 0, 1, 0]
    g = censoring_survival(times, events)
    # at t=1: 5 at risk, 1 diagnosed first -> 4 at risk of censoring, 2 censored: G = 1 - 2/4
    assert g(np.array([1.5])).tolist() == pytest.approx([0.5])
