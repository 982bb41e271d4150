"""``binds calibrate``: refitting a bundle's calibration (Platt fit, refit, the new bundle)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from BINDSLib.bundle import load_bundle, sha256_file
from BINDSLib.cli import main
from BINDSLib.commands.calibrate import next_version
from BINDSLib.model.calibration import fit_platt, fit_temperature, operating_points, refit
from BINDSLib.studyfolder import write_study_folder
from test_model_cases import make_case


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_fit_platt_recovers_temperature_and_bias():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 40000)
    y = (rng.random(z.size) < _sigmoid(z / 2.0 + 1.5)).astype(int)
    t, b = fit_platt(z, y)
    assert t == pytest.approx(2.0, rel=0.05) and b == pytest.approx(1.5, abs=0.08)
    # no bias in the data: the fit agrees with the temperature-only fit
    y0 = (rng.random(z.size) < _sigmoid(z / 3.0)).astype(int)
    t0, b0 = fit_platt(z, y0)
    assert b0 == pytest.approx(0.0, abs=0.06) and t0 == pytest.approx(fit_temperature(z, y0), rel=0.03)
    assert fit_platt(z[:5], np.ones(5)) == (1.0, 0.0)  # one class: nothing to fit
    # separable labels: Platt's smoothed targets keep the fit finite, no step at the boundary
    zs = np.r_[rng.normal(-6, 1, 20), rng.normal(6, 1, 10)]
    ys = np.r_[np.zeros(20), np.ones(10)].astype(int)
    ts, bs = fit_platt(zs, ys)
    assert 0.05 < ts < 20.0 and abs(bs) < 5
    p = _sigmoid(zs / ts + bs)
    assert p[ys == 1].mean() == pytest.approx(11 / 12, abs=0.03) and p[ys == 0].mean() == pytest.approx(1 / 22, abs=0.03)
    assert fit_temperature(zs, ys) == pytest.approx(0.05, rel=1e-3)  # the plain fit runs to its bound


def _rows():
    rng = np.random.default_rng(1)
    rows = []
    for i, d in enumerate(["malignant"] * 30 + ["benign"] * 40 + ["normal"] * 20):
        mal = d == "malignant"
        rows.append({"study_id": f"s{i}", "diagnosis": d, "malignant": float(mal),
                     "malignancy_logit": rng.normal(2.0 if mal else -1.0, 2.0),
                     "finding_logit": rng.normal(6.0 if d != "normal" else 1.0, 3.0)})
    rows.append({"study_id": "unlabelled", "diagnosis": "", "malignant": math.nan,
                 "malignancy_logit": 50.0, "finding_logit": 50.0})
    return rows


def test_refit_fits_each_part_on_its_own_labels():
    rows = _rows()
    old_cal = {"method": "temperature", "temperature": 1.0, "finding_reference": -3.0}
    old_ops = {"default": {"threshold": 0.5, "criterion": "youden"}}
    cal, ops, fitted = refit(rows, old_cal, old_ops)
    labelled = rows[:-1]
    z = np.array([r["malignancy_logit"] for r in labelled])
    y = np.array([r["malignant"] for r in labelled]).astype(int)
    assert cal["temperature"] == fit_temperature(z, y)  # malignant vs every other labelled study
    expected = operating_points(_sigmoid(z / cal["temperature"]), y)
    assert ops.keys() == expected.keys() == {"default", "high_sensitivity"}
    for k in expected:  # the same points (the sigmoid computed another way: equal to rounding)
        assert ops[k]["threshold"] == pytest.approx(expected[k]["threshold"], rel=1e-12)
        assert {**ops[k], "threshold": 0} == {**expected[k], "threshold": 0}
    f = np.array([r["finding_logit"] for r in labelled])
    ab = np.array([r["diagnosis"] != "normal" for r in labelled]).astype(int)
    assert (cal["finding_temperature"], cal["finding_bias"]) == fit_platt(f, ab)
    assert cal["finding_reference"] == -3.0  # kept
    assert fitted["temperature"]["old"] == 1.0 and fitted["temperature"]["n_malignant"] == 30
    assert fitted["finding_bias"]["n_normal"] == 20 and fitted["finding_bias"]["old"] is None
    # one part only: the other keeps the bundle's values, operating points included
    cal_f, ops_f, fitted_f = refit(rows, old_cal, old_ops, ("finding",))
    assert cal_f["temperature"] == 1.0 and ops_f == old_ops and set(fitted_f) == {"finding_temperature", "finding_bias"}
    no_normal = [r for r in rows if r["diagnosis"] != "normal"]
    with pytest.raises(ValueError, match="abnormal and normal studies .found 70 abnormal, 0 normal"):
        refit(no_normal, old_cal, old_ops, ("finding",))
    with pytest.raises(ValueError, match="parts to refit"):
        refit(rows, old_cal, old_ops, ("subtype",))


def test_next_version():
    assert next_version("1.4.0") == "1.4.1" and next_version("2") == "3" and next_version("0.1rc") == "0.1rc.1"


def test_calibrate_writes_a_recalibrated_copy(tmp_path, tiny_bundle):
    data = tmp_path / "data"
    for i, mal in enumerate([True, False, True, None, False, None, True, None]):
        write_study_folder(make_case(i, mal, ("US",)), data / f"case{i}")
    out = tmp_path / "recal"
    args = ["calibrate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(out)]
    assert main(args) == 0
    old, new = load_bundle(tiny_bundle), load_bundle(out)  # loads: the SHA-256 still matches
    assert new.sha256 == old.sha256 == sha256_file(out / "models" / "model.pt")
    assert new.version == "1" and new.binds["version"] == "1" and "recalibrated" in new.metadata["changelog"]["1"].lower()
    cal = new.binds["calibration"]
    assert cal["previous"] == old.binds["calibration"] and cal["n"] == 8 and "binds calibrate" in cal["fitted_on"]
    assert new.binds["operating_point"] == new.binds["operating_points"]["default"]
    assert new.binds["outputs"]["finding_probability"] == "calibrated (temperature)"
    readme = (out / "docs" / "README.md").read_text()
    assert readme.startswith("# tiny 1\n") and "## 1: recalibrated" in readme
    # the new bundle's probabilities follow the fitted calibration
    scored = tmp_path / "scored"
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--out", str(scored),
                 "--bootstrap", "5", "--saliency", "none"]) == 0
    rows = list(csv.DictReader(open(scored / "predictions.csv")))
    for r in rows:
        assert float(r["malignancy_probability"]) == pytest.approx(
            _sigmoid(float(r["malignancy_logit"]) / cal["temperature"]), rel=1e-4)
        assert float(r["finding_probability"]) == pytest.approx(
            _sigmoid(float(r["finding_logit"]) / cal["finding_temperature"] + cal["finding_bias"]), rel=1e-4)
    # and it minimises the NLL of the labels it was fitted on: any other bias fits worse
    f = np.array([float(r["finding_logit"]) for r in rows])
    ab = np.array([r["diagnosis"] != "normal" for r in rows], float)

    def nll(b):
        a = f / cal["finding_temperature"] + b
        return float(np.mean(np.logaddexp(0, a) - ab * a))
    assert nll(cal["finding_bias"]) <= min(nll(cal["finding_bias"] + 0.3), nll(cal["finding_bias"] - 0.3))
    assert main(args) == 5  # exists: --overwrite needed
    inside = out / "docs" / "again"
    assert main(["calibrate", "--model", str(out), "--data", str(data), "--out", str(inside)]) == 5
    assert not inside.exists() and sorted(p.name for p in (out / "docs").iterdir()) == ["README.md"]


def test_calibrate_refuses_data_without_both_classes(tmp_path, tiny_bundle, capsys):
    data = tmp_path / "data"
    for i, mal in enumerate([True, False, True]):
        write_study_folder(make_case(i, mal, ("US",)), data / f"case{i}")
    out = tmp_path / "recal"
    code = main(["calibrate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(out),
                 "--fit", "finding"])
    err = capsys.readouterr().err
    assert code == 3 and str(data) in err and "found 3 abnormal, 0 normal" in err
    assert not out.exists() and not any(p.name.startswith(".recal") for p in tmp_path.iterdir())
