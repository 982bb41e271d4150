"""Metrics, calibration, operating points and plots of the diagnosis model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from BINDSLib.model.calibration import compare_with_other_breast, fit_temperature, operating_points
from BINDSLib.model.metrics import (
    auc, biopsy_reduction, bootstrap_ci, dice, ece, finite_json, macro_auc, pointing_hit,
    reliability_bins, roc_points, sensitivity_specificity, threshold_for_sensitivity,
    youden_threshold,
)
from BINDSLib.model.plots import reliability_png, roc_png


def test_auc_and_roc():
    s = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    assert auc(s, y) == pytest.approx(0.75)
    assert math.isnan(auc(s, np.ones(4)))
    fpr, tpr, thr = roc_points(s, y)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    # trapezoid area of the points equals the AUC
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    assert macro_auc(np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 2, 0]), 3) == pytest.approx(1.0)


def test_thresholds_and_sensitivity():
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1])
    t = threshold_for_sensitivity(s, y, 1.0)
    assert t == pytest.approx(0.3)
    assert sensitivity_specificity(s, y, t) == (1.0, pytest.approx(2 / 3))
    assert threshold_for_sensitivity(s, y, 0.6) == pytest.approx(0.7)
    assert youden_threshold(s, y) in (0.3, 0.7)


def test_ece_and_bins():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 0, 1, 1])
    assert ece(p, y) == pytest.approx(0.1)
    assert ece(np.full(4, 0.5), np.array([0, 1, 0, 1])) == pytest.approx(0.0)
    bins = reliability_bins(p, y)
    assert sum(b["n"] for b in bins) == 4 and bins[9]["positive_rate"] == 1.0


def test_temperature_recovers_the_true_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z / 2.5))).astype(int)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.1)
    assert fit_temperature(z, np.zeros(4000)) == 1.0
    ops = operating_points(1 / (1 + np.exp(-z / 2.5)), y, 0.98)
    assert ops["high_sensitivity"]["sensitivity"] >= 0.98
    assert ops["default"]["criterion"] == "youden"


def test_compare_with_other_breast_as_inference_does():
    films = [("A", "L", "MLO"), ("A", "R", "MLO"), ("A", "R", "CC"), ("B", "L", "MLO"), None,
             ("C", "L", "CC"), ("C", "R", "MLO"), ("D", "L", "MLO"), ("D", "R", "MLO")]
    f = [1.0, 3.0, 10.0, 2.0, 5.0, 0.0, 4.0, 7.0, float("nan")]
    got = compare_with_other_breast(f, films, weight=0.5, reference=-1.0)
    assert got[0] == pytest.approx(1.0 - 0.5 * (3.0 + 1.0))  # the same view of the other breast
    assert got[1] == got[2] - 7.0 == pytest.approx(3.0 - 0.5 * (1.0 + 1.0))  # both R films vs L MLO
    assert got[3] == 2.0 and got[4] == 5.0  # no other breast; not a one-film mammogram
    assert got[5] == pytest.approx(0.0 - 0.5 * (4.0 + 1.0))  # another view when no same view
    assert got[7] == 7.0 and np.isnan(got[8])  # a non-finite partner is no partner


def test_biopsy_reduction_known_case():
    cal_s = np.array([0.1, 0.2, 0.5, 0.6, 0.9])
    cal_y = np.array([0, 0, 1, 0, 1])
    test_s = np.array([0.05, 0.3, 0.45, 0.55, 0.95])
    test_y = np.array([0, 0, 0, 1, 1])
    r = biopsy_reduction(cal_s, cal_y, test_s, test_y, target=1.0)
    assert r["threshold"] == pytest.approx(0.5)
    assert r["spared_fraction"] == pytest.approx(1.0) and r["test_sensitivity"] == 1.0


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    s = y + rng.normal(0, 1, 200)
    lo, hi = bootstrap_ci(auc, s, y, n=200, seed=0, stratify=y)
    assert lo < auc(s, y) < hi and hi - lo < 0.2


def test_wilson_interval_of_a_proportion():
    from BINDSLib.model.metrics import wilson_ci

    z2 = 1.959963984540054 ** 2
    # at 0 or n successes the interval is closed-form: [0, z^2 / (n + z^2)] and its mirror
    assert wilson_ci(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    assert wilson_ci(10, 10) == (pytest.approx(10 / (10 + z2)), 1.0)
    lo, hi = wilson_ci(8, 15)  # a pointing game of 8 of 15 images
    assert lo == pytest.approx(0.3012, abs=1e-4) and hi == pytest.approx(0.7519, abs=1e-4)
    assert lo < 8 / 15 < hi and wilson_ci(8, 15, level=0.5)[1] < hi
    assert all(math.isnan(v) for v in wilson_ci(0, 0))


def test_dice_pointing_and_json():
    a = np.zeros((1, 4, 4), np.uint8)
    a[0, :2, :2] = 1
    b = np.zeros_like(a)
    b[0, :2, :1] = 1
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 2))
    sal = np.zeros((1, 4, 4))
    sal[0, 1, 1] = 1
    assert pointing_hit(sal, a) and not pointing_hit(sal, b)
    assert finite_json({"a": float("nan"), "b": [np.float32(1.5), np.int64(2)]}) == {"a": None, "b": [1.5, 2]}


@pytest.mark.parametrize("use_matplotlib", [False, True])
def test_plots_are_png(tmp_path, use_matplotlib):
    import SimpleITK as sitk

    if use_matplotlib:
        pytest.importorskip("matplotlib")
    roc = roc_png(tmp_path / "roc.png", {"a": (np.array([0, 0.5, 1]), np.array([0, 0.8, 1]))},
                  use_matplotlib=use_matplotlib)
    rel = reliability_png(tmp_path / "rel.png", reliability_bins(np.array([0.1, 0.8]), np.array([0, 1])),
                          use_matplotlib=use_matplotlib)
    for p in (roc, rel):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = sitk.ReadImage(str(p))
        assert img.GetNumberOfComponentsPerPixel() in (3, 4) and img.GetSize()[0] >= 300


def test_non_finite_scores_and_labels_and_flat_maps_are_not_scored():
    """A NaN score made MONAI's AUC rank it first (0.75 here, 0.5 without it); a NaN label became
    -2**63 and counted as positive; a flat saliency map 'pointed' at its first voxel."""
    assert math.isnan(auc([0.1, math.nan, 0.5, 0.4], [0, 1, 0, 1]))
    assert auc([0.1, 0.5, 0.4], [0, 0, 1]) == 0.5
    for fn, args in ((sensitivity_specificity, ([0.2, 0.7, 0.9], [0, 1, math.nan], 0.5)),
                     (roc_points, ([0.2, 0.7, 0.9], [0, 1, math.nan])),
                     (sensitivity_specificity, ([0.2, 0.7], [0, 2], 0.5))):
        with pytest.raises(ValueError, match="labels must be 0 or 1"):
            fn(*args)
    lesion = np.zeros((1, 3, 3), np.uint8)
    lesion[0, 0, 0] = 1
    assert not pointing_hit(np.zeros((1, 3, 3)), lesion)
    assert not pointing_hit(np.full((1, 3, 3), math.nan), lesion)
    sal = np.full((1, 3, 3), math.nan)
    sal[0, 0, 0] = 0.3
    sal[0, 1, 1] = 0.1
    assert pointing_hit(sal, lesion)  # the finite maximum
    assert pointing_hit(np.where(lesion > 0, 0.9, 0.1), lesion)
