"""``binds calibrate``: refitting a bundle's calibration (Platt fit, refit, the new bundle)."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest

from BINDSLib.bundle import FINDING_CALIBRATED, load_bundle, sha256_file
from BINDSLib.cli import main
from BINDSLib.commands.calibrate import next_version
from BINDSLib.model.calibration import MissingClassError, fit_platt, fit_temperature, operating_points, refit
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
                     "abnormal": float(d != "normal"),
                     "malignancy_logit": rng.normal(2.0 if mal else -1.0, 2.0),
                     "finding_logit": rng.normal(6.0 if d != "normal" else 1.0, 3.0)})
    rows.append({"study_id": "unlabelled", "diagnosis": "", "malignant": math.nan, "abnormal": math.nan,
                 "malignancy_logit": 50.0, "finding_logit": 50.0})
    # a pathology record but no diagnosis: abnormal (as training counts it), malignancy unknown
    rows.append({"study_id": "pathology-only", "diagnosis": "", "malignant": math.nan, "abnormal": 1.0,
                 "malignancy_logit": 3.0, "finding_logit": 7.0})
    rows.append({"study_id": "no-logit", "diagnosis": "normal", "malignant": 0.0, "abnormal": 0.0,
                 "malignancy_logit": math.nan, "finding_logit": math.nan})
    return rows


def test_refit_fits_each_part_on_its_own_labels():
    rows = _rows()
    old_cal = {"method": "temperature", "temperature": 1.0, "finding_reference": -3.0}
    old_ops = {"default": {"threshold": 0.5, "criterion": "youden"}}
    cal, ops, fitted = refit(rows, old_cal, old_ops)
    labelled = rows[:90]
    z = np.array([r["malignancy_logit"] for r in labelled])
    y = np.array([r["malignant"] for r in labelled]).astype(int)
    assert cal["temperature"] == fit_temperature(z, y)  # malignant vs every other labelled study
    # the operating points are those inference reproduces: its probabilities, bit for bit
    assert ops == operating_points(1.0 / (1.0 + np.exp(-(z / cal["temperature"]))), y)
    assert set(ops) == {"default", "high_sensitivity"}
    f = np.array([r["finding_logit"] for r in labelled + rows[91:92]])
    ab = np.array([r["abnormal"] for r in labelled + rows[91:92]]).astype(int)
    assert (cal["finding_temperature"], cal["finding_bias"]) == fit_platt(f, ab)
    assert cal["finding_reference"] == -3.0  # kept
    assert fitted["temperature"]["old"] == 1.0 and fitted["temperature"]["n_malignant"] == 30
    assert fitted["temperature"]["n_other"] == 60 and fitted["temperature"]["at_bound"] is False
    assert fitted["finding_bias"]["n_normal"] == 20 and fitted["finding_bias"]["n_abnormal"] == 71
    assert fitted["finding_bias"]["old"] is None
    # one part only: the other keeps the bundle's values, operating points included
    cal_f, ops_f, fitted_f = refit(rows, old_cal, old_ops, ("finding",))
    assert cal_f["temperature"] == 1.0 and ops_f == old_ops and set(fitted_f) == {"finding_temperature", "finding_bias"}
    no_normal = [r for r in rows if r["diagnosis"] != "normal"]
    with pytest.raises(MissingClassError, match="abnormal and normal studies .found 71 abnormal, 0 normal") as e:
        refit(no_normal, old_cal, old_ops, ("finding",))
    assert e.value.part == "finding"
    with pytest.raises(MissingClassError, match="found 0 malignant, 60 other"):
        refit([r for r in rows if r["diagnosis"] != "malignant"], old_cal, old_ops, ("malignancy",))
    with pytest.raises(ValueError, match="parts to refit"):
        refit(rows, old_cal, old_ops, ("subtype",))


def test_next_version():
    assert next_version("1.4.0") == "1.4.1" and next_version("2") == "3" and next_version("0.1rc") == "0.1rc.1"


@pytest.fixture()
def labelled_folder(tmp_path):
    data = tmp_path / "data"
    for i, mal in enumerate([True, False, True, None, False, None, True, None]):
        write_study_folder(make_case(i, mal, ("US",)), data / f"case{i}")
    return data


def test_calibrate_writes_a_recalibrated_copy(tmp_path, tiny_bundle, labelled_folder):
    data, out = labelled_folder, tmp_path / "recal"
    args = ["calibrate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(out)]
    assert main(args) == 0
    old, new = load_bundle(tiny_bundle), load_bundle(out)  # loads: the SHA-256 still matches
    assert new.sha256 == old.sha256 == sha256_file(out / "models" / "model.pt")
    note = new.metadata["changelog"]["1"]
    assert new.version == "1" and new.binds["version"] == "1" and note.startswith("Recalibrated from tiny 0")
    assert new.metadata["changelog"]["0"] == old.metadata["changelog"]["0"]
    cal = new.binds["calibration"]
    assert cal["previous"] == old.binds["calibration"]
    # where each part was fitted, on how many labelled studies (3 malignant / 5 other; 5 / 3)
    assert cal["n"] == 8 and cal["finding_n"] == 8 and cal["fitted_on"] == cal["finding_fitted_on"]
    assert cal["fitted_on"] == f"binds calibrate: {data}"
    assert new.binds["operating_point"] == new.binds["operating_points"]["default"]
    assert new.binds["outputs"]["finding_probability"] == FINDING_CALIBRATED
    # this random network's finding logits hardly differ: the fit runs to its bound, and says so
    assert cal["finding_temperature"] == pytest.approx(0.05, rel=1e-3) and "barely constrain" in note
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
    # fitted on these studies' logits and labels
    f = np.array([float(r["finding_logit"]) for r in rows])
    ab = np.array([float(r["abnormal"]) for r in rows]).astype(int)
    assert (cal["finding_temperature"], cal["finding_bias"]) == pytest.approx(fit_platt(f, ab), rel=1e-4)
    assert main(args) == 5  # exists: --overwrite needed


def test_calibrate_one_part_keeps_the_other(tmp_path, tiny_bundle, labelled_folder):
    finding, malignancy = tmp_path / "finding", tmp_path / "malignancy"
    base = ["calibrate", "--model", str(tiny_bundle), "--data", str(labelled_folder)]
    assert main(base + ["--out", str(finding), "--fit", "finding", "--version", "0.f"]) == 0
    assert main(base + ["--out", str(malignancy), "--fit", "malignancy"]) == 0
    old = load_bundle(tiny_bundle).binds
    f, m = load_bundle(finding), load_bundle(malignancy)
    assert f.version == "0.f" and m.version == "1"
    # finding only: the malignancy calibration and the operating point as they were
    assert f.binds["calibration"]["temperature"] == old["calibration"]["temperature"]
    assert "fitted_on" not in f.binds["calibration"] and "finding_fitted_on" in f.binds["calibration"]
    assert f.binds["operating_point"] == old["operating_point"] and "operating_points" not in f.binds
    # malignancy only: no finding calibration appears, the operating points are new
    assert "finding_temperature" not in m.binds["calibration"] and "finding_probability" not in m.binds.get("outputs", {})
    assert set(m.binds["operating_points"]) == {"default", "high_sensitivity"}
    assert m.binds["calibration"]["n"] == 8 and "finding_n" not in m.binds["calibration"]


def test_calibrate_in_place_and_refusals(tmp_path, tiny_bundle, labelled_folder, monkeypatch, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny_bundle, models / "tiny")
    (models / "other.txt").write_text("keep me")
    base = ["calibrate", "--model", str(models / "tiny"), "--data", str(labelled_folder)]
    # an output holding the bundle (with --overwrite it would delete it), one inside it, an
    # existing version: refused before any prediction, nothing written
    import BINDSLib.model.evaluation as evaluation

    def no_prediction(*a, **k):
        raise AssertionError("predicted before refusing")
    monkeypatch.setattr(evaluation, "predict_dataset", no_prediction)
    assert main(base + ["--out", str(models), "--overwrite"]) == 5
    assert "holds the bundle" in capsys.readouterr().err
    assert main(base + ["--out", str(models / "tiny" / "docs" / "again")]) == 5
    assert main(base + ["--out", str(tmp_path / "v0"), "--version", "0"]) == 3
    assert "version 0 is already in the changelog" in capsys.readouterr().err
    assert sorted(p.name for p in models.iterdir()) == ["other.txt", "tiny"]
    assert sorted(p.name for p in (models / "tiny" / "docs").iterdir()) == ["README.md"]
    assert not (tmp_path / "v0").exists()
    monkeypatch.undo()
    # in place: the bundle's own folder, replaced atomically, also with its own case list
    cases = models / "tiny" / "docs" / "validation_cases.csv"
    cases.write_text("study_id\n" + "".join(f"case{i}\n" for i in range(8)))
    assert main(base + ["--cases", str(cases), "--out", str(models / "tiny"), "--overwrite"]) == 0
    assert load_bundle(models / "tiny").version == "1" and (models / "other.txt").read_text() == "keep me"
    assert sorted(p.name for p in models.iterdir()) == ["other.txt", "tiny"]


def test_calibrate_refuses_data_without_both_classes(tmp_path, tiny_bundle, capsys):
    data = tmp_path / "data"
    for i, mal in enumerate([True, False, True]):
        write_study_folder(make_case(i, mal, ("US",)), data / f"case{i}")
    out = tmp_path / "recal"
    code = main(["calibrate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3 and str(data) in err and "found 3 abnormal, 0 normal" in err
    assert "--fit malignancy refits the malignancy probability only" in err
    assert not out.exists() and not any(p.name.startswith(".recal") for p in tmp_path.iterdir())
    # malignant studies alone: neither part can be fitted, and no other --fit is suggested
    malignant = tmp_path / "malignant"
    for i in (0, 2):
        write_study_folder(make_case(i, True, ("US",)), malignant / f"case{i}")
    assert main(["calibrate", "--model", str(tiny_bundle), "--data", str(malignant), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "calibration needs" in err and "--fit" not in err


def test_case_lists_naming_studies_the_data_lacks(tmp_path, tiny_bundle, labelled_folder, capsys, caplog):
    cases = tmp_path / "cases.csv"
    cases.write_text("study_id\ncase0\ncase1\ncase3\nnot-there\n")
    base = ["calibrate", "--model", str(tiny_bundle), "--data", str(labelled_folder), "--cases", str(cases)]
    with caplog.at_level("WARNING"):
        assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert f"{cases}: 1 of the 4 listed studies are not in {labelled_folder}: not-there" in caplog.text
    assert load_bundle(tmp_path / "a").binds["calibration"]["n"] == 3
    # a spreadsheet's "CSV UTF-8" starts with a byte-order mark: its header is still study_id
    cases.write_text("\ufeffstudy_id\ncase0\ncase1\ncase3\n", encoding="utf-8")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(base + ["--out", str(tmp_path / "bom")]) == 0
    assert "listed studies are not in" not in caplog.text  # (not the header read as a study ID)
    assert load_bundle(tmp_path / "bom").binds["calibration"]["n"] == 3
    cases.write_text("study_id\nx1\nx2\n")
    assert main(base + ["--out", str(tmp_path / "b")]) == 3
    assert f"none of the 2 studies listed in {cases} is in {labelled_folder}" in capsys.readouterr().err
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit) as e:
            main(base + ["--out", str(tmp_path / "c"), "--limit", bad])
        assert e.value.code == 2


def _youden(p1, p2, y, band, t):
    from BINDSLib.model.inference import in_uncertainty_band

    inside = np.array([in_uncertainty_band(v, band) for v in p1])
    d = np.where(inside, p2, p1) >= t
    return d[y == 1].mean() + (~d[y == 0]).mean(), int(inside.sum())


def test_fit_uncertainty_band_reads_the_mri_where_it_helps():
    from BINDSLib.model.calibration import fit_uncertainty_band

    # stage 1 / stage 2 probabilities: A (malignant) and B (benign) are put right by the MRI, E and
    # F put wrong by it, H, C, D right either way; threshold 0.5
    p1 = np.array([0.05, 0.10, 0.12, 0.20, 0.70, 0.80, 0.90])  # D E H A B F C
    p2 = np.array([0.10, 0.60, 0.10, 0.80, 0.30, 0.40, 0.90])
    y = np.array([0, 0, 0, 1, 0, 1, 1])
    band, info = fit_uncertainty_band(p1, p2, y, 0.5)
    assert band == pytest.approx((0.16, 0.75))  # A and B inside; E, F and H (no change) outside
    assert _youden(p1, p2, y, band, 0.5) == (2.0, 2)
    assert info["fitted"] == {"sensitivity": 1.0, "specificity": 1.0, "n_stage2": 2}
    assert info["stage2"] == pytest.approx({"sensitivity": 2 / 3, "specificity": 3 / 4, "n_stage2": 7})
    assert info["stage1"] == pytest.approx({"sensitivity": 2 / 3, "specificity": 3 / 4, "n_stage2": 0})
    assert (info["n"], info["n_malignant"], info["n_other"]) == (7, 3, 4)
    # the MRI changes nothing for the better: an empty band at the threshold, no MRI read
    band, info = fit_uncertainty_band(p1, p1, y, 0.5)
    assert band == (0.5, 0.5) and info["fitted"]["n_stage2"] == 0
    # only a stage-1 positive is put right: the band still holds the threshold
    band, _ = fit_uncertainty_band([0.05, 0.7, 0.9], [0.05, 0.3, 0.9], [0, 0, 1], 0.5)
    assert band == pytest.approx((0.375, 0.8))
    # equal stage-1 probabilities are inside or outside together (no edge between them)
    band, _ = fit_uncertainty_band([0.3, 0.3, 0.9], [0.9, 0.7, 0.9], [1, 0, 1], 0.5)
    assert band == (0.5, 0.5)  # reading both: the malignant one put right, the benign one wrong
    # a stage-1 probability of exactly 0 or 1 (a saturated sigmoid) is never strictly inside a band
    band, info = fit_uncertainty_band([0.0, 0.2, 0.9], [0.9, 0.1, 0.9], [1, 0, 1], 0.5)
    assert band == (0.5, 0.5) and info["fitted"]["n_stage2"] == 0
    band, info = fit_uncertainty_band([0.1, 0.6, 1.0], [0.1, 0.2, 0.1], [1, 0, 0], 0.5)
    assert band == pytest.approx((0.35, 0.8)) and info["fitted"]["n_stage2"] == 1  # 0.6 put right; 1.0 stays out
    with pytest.raises(ValueError, match="found 0 malignant, 3 other"):
        fit_uncertainty_band(p1[:3], p2[:3], y[:3], 0.5)


def test_fit_uncertainty_band_is_the_best_band():
    from BINDSLib.model.calibration import fit_uncertainty_band

    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(8, 40))
        y = (rng.random(n) < 0.4).astype(int)
        p1 = np.round(1 / (1 + np.exp(-(rng.normal(0, 2.5, n) + 1.2 * (2 * y - 1)))), 2)  # ties, 0 and 1 too
        p2 = 1 / (1 + np.exp(-(rng.normal(0, 1.0, n) + 2.0 * (2 * y - 1))))
        t = float(rng.choice([0.3, 0.5, 0.6]))
        if y.min() == y.max():
            continue
        band, info = fit_uncertainty_band(p1, p2, y, t)
        assert band[0] <= t <= band[1]
        j, reads = _youden(p1, p2, y, band, t)
        assert info["fitted"]["n_stage2"] == reads
        assert info["fitted"]["sensitivity"] + info["fitted"]["specificity"] == pytest.approx(j)
        # every band holding the threshold with edges anywhere: none does better, or as well with fewer reads
        # (a band lies within [0, 1]: check_uncertainty_band)
        edges = np.unique(np.clip(np.r_[0.0, 1.0, t, p1, (p1[:-1] + p1[1:]) / 2, p1 + 1e-9, p1 - 1e-9], 0.0, 1.0))
        for lo in edges[edges <= t]:
            for hi in edges[edges >= t]:
                j2, r2 = _youden(p1, p2, y, (lo, hi), t)
                assert j2 < j + 1e-12 and (j2 < j - 1e-12 or r2 >= reads), (trial, lo, hi)


def _band_by_double_loop(p1, p2, y, threshold):
    """The band as the first implementation found it: every (start, end) pair in turn, the first
    of equal keys kept (the reference for the vectorised fit, tie-breaking included)."""
    p1, p2, y = np.asarray(p1, float), np.asarray(p2, float), np.asarray(y, int)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    order = np.argsort(p1, kind="stable")
    s1, d1, d2, yy = p1[order], p1[order] >= threshold, p2[order] >= threshold, y[order] == 1
    n = s1.size
    base_tp, base_tn = int((d1 & yy).sum()), int((~d1 & ~yy).sum())
    gain_tp = np.r_[0, np.cumsum((d2.astype(int) - d1.astype(int)) * yy)]
    gain_tn = np.r_[0, np.cumsum(((~d2).astype(int) - (~d1).astype(int)) * ~yy)]
    best = None
    for i in range(n + 1):
        if i > 0 and s1[i - 1] > threshold:
            break
        if 0 < i < n and s1[i - 1] == s1[i]:
            continue
        for j in range(i, n + 1):
            if (j < n and s1[j] < threshold) or (i < j < n and s1[j - 1] == s1[j]):
                continue
            if i < j and ((i == 0 and s1[0] <= 0.0) or (j == n and s1[-1] >= 1.0)):
                continue
            tp, tn = base_tp + gain_tp[j] - gain_tp[i], base_tn + gain_tn[j] - gain_tn[i]
            lo = 0.0 if i == 0 else min((s1[i - 1] + s1[i]) / 2, threshold) if i < n else threshold
            hi = 1.0 if j == n else max((s1[j - 1] + s1[j]) / 2, threshold) if j > 0 else threshold
            if i == j:
                lo = hi = threshold
            key = (-(tp / n_pos + tn / n_neg), j - i, (threshold - lo) + (hi - threshold))
            if best is None or key < best[0]:
                best = (key, (float(lo), float(hi)))
    return best[1]


def test_fit_uncertainty_band_is_the_double_loops_band():
    """The vectorised fit gives exactly the band of the plain double loop, ties, probabilities
    of 0 and 1 and thresholds at the edges included."""
    from BINDSLib.model.calibration import fit_uncertainty_band

    rng = np.random.default_rng(11)
    checked = 0
    for trial in range(600):
        n = int(rng.integers(2, 30))
        y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
        if y.min() == y.max():
            continue
        p1 = [rng.random(n), np.round(rng.random(n), 1), rng.choice([0.0, 0.2, 0.5, 0.5, 0.7, 1.0], n)][trial % 3]
        p2 = rng.random(n) if trial % 2 else rng.choice([0.0, 0.5, 1.0], n)
        t = float(rng.choice([0.0, 0.2, 0.5, 0.7, 1.0]))
        assert fit_uncertainty_band(p1, p2, y, t)[0] == _band_by_double_loop(p1, p2, y, t), trial
        checked += 1
    assert checked > 400


def test_refit_band_uses_the_two_stage_rows():
    rows = []
    rng = np.random.default_rng(4)
    for i in range(60):
        mal = i % 3 == 0
        z2 = rng.normal(2.0 if mal else -2.0, 1.0)
        rows.append({"study_id": f"s{i}", "malignant": float(mal), "abnormal": 1.0,
                     "malignancy_logit": z2, "stage1_logit": z2 + rng.normal(0, 2.0), "finding_logit": 0.0})
    rows.append({"study_id": "us-only", "malignant": 1.0, "abnormal": 1.0, "malignancy_logit": -9.0,
                 "stage1_logit": math.nan, "finding_logit": 0.0})
    cal = {"temperature": 2.0}
    ops = {"default": {"threshold": 0.4}}
    new_cal, new_ops, fitted = refit(rows, cal, ops, ("band",))
    assert new_cal == cal and new_ops == ops  # the probabilities' calibration untouched
    from BINDSLib.model.calibration import fit_uncertainty_band

    two = rows[:60]
    p1 = _sigmoid(np.array([r["stage1_logit"] for r in two]) / 2.0)
    p2 = _sigmoid(np.array([r["malignancy_logit"] for r in two]) / 2.0)
    band, info = fit_uncertainty_band(p1, p2, np.array([r["malignant"] for r in two]).astype(int), 0.4)
    assert fitted["uncertainty_band"]["new"] == list(band) and fitted["uncertainty_band"]["n"] == 60
    # with the malignancy refit as well: the band on the new temperature and threshold
    cal2, ops2, fitted2 = refit(rows, cal, ops, ("malignancy", "band"))
    assert fitted2["uncertainty_band"]["threshold"] == ops2["default"]["threshold"] != 0.4
    with pytest.raises(MissingClassError, match="both stages.*found 0 malignant, 0 other") as e:
        refit(rows[60:], cal, ops, ("band",))
    assert e.value.part == "band"


def test_calibrate_fits_the_band_the_staged_decision_uses(tmp_path, tiny_bundle, labelled_folder, capsys):
    data = tmp_path / "two-stage"
    for i, mal in enumerate([True, False, True, None, False, None, True, False, True, False]):
        write_study_folder(make_case(i, mal, ("US", "MR")), data / f"case{i}")
    out = tmp_path / "band"
    assert main(["calibrate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(out),
                 "--fit", "band"]) == 0
    stdout = capsys.readouterr().out
    old, new = load_bundle(tiny_bundle).binds, load_bundle(out).binds
    band = new["uncertainty_band"]
    assert "uncertainty_band" not in old and band != [0.02, 0.98]
    assert "uncertainty_band 0.02-0.98 -> " in stdout and "on 10 studies with both stages" in stdout
    # the probabilities' calibration and the operating point as they were
    assert new["calibration"]["temperature"] == old["calibration"]["temperature"]
    assert new["operating_point"] == old["operating_point"] and new["calibration"]["band_n"] == 10
    assert "metrics recorded by training" in (out / "docs" / "README.md").read_text().split("## 1: recalibrated")[1]
    assert "still hold" in (out / "docs" / "README.md").read_text()
    # scored with the new bundle: the MRI read exactly inside the band, and the decision as good as
    # any band could make it on these studies
    scored = tmp_path / "scored"
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--out", str(scored),
                 "--bootstrap", "5", "--saliency", "none"]) == 0
    rows = list(csv.DictReader(open(scored / "predictions.csv")))
    p1 = np.array([float(r["stage1_probability"]) for r in rows])
    p2 = np.array([float(r["malignancy_probability"]) for r in rows])
    y = np.array([float(r["malignant"]) for r in rows]).astype(int)
    assert [int(r["stage2_used"]) for r in rows] == [int(band[0] < v < band[1]) for v in p1]
    j, reads = _youden(p1, p2, y, band, 0.5)
    for lo in np.r_[0.0, np.sort(p1), 0.5]:
        for hi in np.r_[np.sort(p1), 0.5, 1.0]:
            if lo <= 0.5 <= hi:
                j2, r2 = _youden(p1, p2, y, (lo, hi), 0.5)
                assert j2 <= j + 1e-12 and (j2 < j - 1e-12 or r2 >= reads)
    # ultrasound-only studies have no second stage: refused, naming what is missing
    code = main(["calibrate", "--model", str(tiny_bundle), "--data", str(labelled_folder),
                 "--out", str(tmp_path / "none"), "--fit", "band"])
    err = capsys.readouterr().err
    assert code == 3 and "needs malignant and other labelled studies with both stages" in err
    assert "--fit" not in err and not (tmp_path / "none").exists()
    # with the malignancy refit too: one new bundle with both
    both = tmp_path / "both"
    assert main(["calibrate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(both),
                 "--fit", "malignancy", "--fit", "band"]) == 0
    b = load_bundle(both).binds
    assert "uncertainty_band" in b and "operating_points" in b and "finding_temperature" not in b["calibration"]
    # the band alone keeps the calibration that came before as "previous"; a later malignancy
    # refit keeps the band and says it was fitted on the old probabilities
    again = tmp_path / "again"
    assert main(["calibrate", "--model", str(both), "--data", str(data), "--out", str(again), "--fit", "band"]) == 0
    assert load_bundle(again).binds["calibration"]["previous"] == b["calibration"]["previous"]
    capsys.readouterr()
    assert main(["calibrate", "--model", str(again), "--data", str(data), "--out", str(tmp_path / "m"),
                 "--fit", "malignancy"]) == 0
    assert "was fitted on the old probabilities and is kept as it is: refit it with --fit band" in capsys.readouterr().out
    assert load_bundle(tmp_path / "m").binds["uncertainty_band"] == load_bundle(again).binds["uncertainty_band"]


def test_studies_the_model_separates_perfectly_are_refused_for_the_malignancy_part(
        tmp_path, tiny_bundle, labelled_folder, monkeypatch, capsys):
    """On studies the model separates perfectly the temperature runs to the end of its range and
    the threshold to 1: such a bundle would call every probability below 1 benign. Refused,
    nothing written; the finding part (Platt's smoothed targets) still fits."""
    import BINDSLib.model.evaluation as ev

    real = ev.predict_dataset

    def separable(model, studies, **kw):
        rows, *rest = real(model, studies, **kw)
        for r in rows:
            r["malignancy_logit"] = 40.0 if r["malignant"] == 1 else -40.0
        return (rows, *rest)

    monkeypatch.setattr(ev, "predict_dataset", separable)
    out = tmp_path / "recal"
    args = ["calibrate", "--model", str(tiny_bundle), "--data", str(labelled_folder), "--out", str(out)]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "the model separates these 3 malignant and 5 other studies perfectly" in err and "--fit finding" in err
    assert not out.exists()
    assert main(args + ["--fit", "finding"]) == 0
    # a report says when its finding probability is not calibrated, and not once it is
    import json

    for bundle, said in ((tiny_bundle, True), (out, False)):
        report_dir = tmp_path / f"dx-{said}"
        assert main(["diagnose", str(labelled_folder / "case0"), "--model", str(bundle), "--out", str(report_dir),
                     "--no-summary"]) == 0
        notes = json.loads((report_dir / "report.json").read_text())["notes"]
        assert any(n.startswith("finding probability not calibrated") for n in notes) == said


def test_overlapping_classes_of_small_logits_are_calibrated_not_refused():
    """A temperature at the bottom of its range is refused only when the classes separate: small
    logits of overlapping classes also drive it there, and their threshold is a usable one."""
    from BINDSLib.commands.calibrate import _check_separable

    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.55).astype(float)
    z = 0.03 * (y - 0.5) + 0.01 * rng.standard_normal(200)
    rows = [{"malignancy_logit": a, "malignant": b, "finding_logit": math.nan, "abnormal": math.nan}
            for a, b in zip(z, y)]
    _, ops, fitted = refit(rows, {}, {}, ("malignancy",))
    assert fitted["temperature"]["new"] == pytest.approx(0.05, rel=1e-2) and not fitted["temperature"]["separable"]
    assert 0.0 < ops["default"]["threshold"] < 1.0
    _check_separable(fitted, "here")  # no error
    rows = [dict(r, malignancy_logit=10.0 if r["malignant"] else -10.0) for r in rows]
    _, _, fitted = refit(rows, {}, {}, ("malignancy",))
    with pytest.raises(Exception, match="separates these"):
        _check_separable(fitted, "here")
