"""`binds evaluate`: metrics from predictions, and the command on study folders, BUSI and
mini-MIAS (the last two skip when ../shared/data is absent)."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from BINDSLib.cli import main
from BINDSLib.model.evaluation import biopsy_analysis, compute_metrics
from BINDSLib.model.metrics import wilson_ci
from BINDSLib.studyfolder import write_study_folder
from test_model_cases import make_case


def _row(i, diagnosis, p, subtype="", finding=None):
    return {"study_id": f"s{i}", "diagnosis": diagnosis,
            "malignant": {"malignant": 1.0, "benign": 0.0, "normal": 0.0}[diagnosis],
            "abnormal": float(diagnosis != "normal"),
            "subtype": subtype, "malignancy_probability": p, "lesion_score": p,
            "finding_probability": p if finding is None else finding,
            **{f"p_{s}": (0.7 if s == (subtype or "luminal_a") else 0.1)
               for s in ("luminal_a", "luminal_b", "her2_enriched", "triple_negative")}}


def test_compute_metrics_known_values():
    rows = [_row(0, "benign", 0.1, finding=0.8), _row(1, "benign", 0.6, finding=0.5),
            _row(2, "malignant", 0.4, "luminal_a", finding=0.9),
            _row(3, "malignant", 0.9, "triple_negative", finding=0.7), _row(4, "normal", 0.05, finding=0.3),
            _row(5, "normal", 0.2, finding=0.45)]
    m = compute_metrics(rows, threshold=0.5, n_bootstrap=50)
    assert m["n"] == 6 and m["n_malignant"] == 2 and m["n_benign"] == 2 and m["n_normal"] == 2
    assert m["auc"] == pytest.approx(0.75)  # malignant vs benign only
    # abnormal (4) vs normal (2) by the finding probability: every abnormal case above both normals
    assert m["auc_abnormal"] == pytest.approx(1.0)
    # by the malignancy probability: every abnormal case above both normals except 0.1 < 0.2
    assert m["auc_abnormal_malignancy"] == pytest.approx(7 / 8)
    assert m["auc_abnormal_ci95"][0] <= 1.0 and len(m["auc_abnormal_malignancy_ci95"]) == 2
    # calibration of the finding probability against "abnormal" (1, 1, 1, 1, 0, 0)
    assert m["brier_finding"] == pytest.approx((0.2**2 + 0.5**2 + 0.1**2 + 0.3**2 + 0.3**2 + 0.45**2) / 6)
    assert m["brier_finding_base_rate"] == pytest.approx(4 / 6 * 2 / 6)
    assert m["ece_finding"] == pytest.approx((0.2 + 0.5 + 0.1 + 0.3 + 0.3 + 0.45) / 6)  # one case per bin
    assert m["sensitivity"] == 0.5 and m["specificity"] == pytest.approx(3 / 4)
    assert m["subtype_macro_auc"] == pytest.approx(1.0)
    assert len(m["auc_ci95"]) == 2
    json.dumps(m, allow_nan=False)


def test_studies_labelled_by_their_pathology_record_alone_are_lesions():
    """A study with a pathology record and no diagnosis is a malignant or benign lesion, as
    training reads it: in the AUC, the class counts and the biopsy figures."""
    rows = [_row(0, "benign", 0.1), _row(1, "benign", 0.6), _row(2, "malignant", 0.4), _row(3, "malignant", 0.9),
            _row(4, "normal", 0.05)]
    full = compute_metrics(rows, threshold=0.5, n_bootstrap=20)
    for r in rows[:4]:
        r["diagnosis"] = ""  # (the label from the pathology record: malignant and abnormal stay)
    m = compute_metrics(rows, threshold=0.5, n_bootstrap=20)
    assert (m["n_malignant"], m["n_benign"], m["n_normal"]) == (2, 2, 1)
    assert m["auc"] == full["auc"] == pytest.approx(0.75) and m["auc_ci95"] == full["auc_ci95"]
    assert m["biopsy_reduction"] == full["biopsy_reduction"]


def test_a_study_without_a_malignancy_probability_is_left_out_and_counted():
    rows = [_row(0, "benign", 0.1), _row(1, "benign", 0.6), _row(2, "malignant", 0.4), _row(3, "malignant", 0.9),
            _row(4, "benign", math.nan), _row(5, "normal", 0.2), _row(6, "normal", 0.05)]
    m = compute_metrics(rows, threshold=0.5, n_bootstrap=20)
    ref = compute_metrics(rows[:4] + rows[5:], threshold=0.5, n_bootstrap=20)
    assert m["n_no_probability"] == 1 and "n_no_probability" not in ref
    from BINDSLib.commands.evaluate import summary

    assert "; 1 without a malignancy probability, left out of every figure" in summary(m).splitlines()[0]
    for key in ("auc", "auc_malignant_vs_rest", "sensitivity", "specificity", "ece", "auc_abnormal_malignancy"):
        assert m[key] == pytest.approx(ref[key]), key
    json.dumps(m, allow_nan=False)


def test_the_recommendation_tells_probability_and_threshold_apart():
    from BINDSLib.diagnose import recommendation
    from BINDSLib.errors import ModelError

    assert recommendation(0.4321, 0.43236850)[1].startswith("malignancy probability 0.4321 < 0.4324: short-interval")
    assert recommendation(0.43237, 0.43236850)[1].startswith("malignancy probability 0.432370 >= 0.432368: biopsy")
    assert recommendation(0.9, 0.432)[1].startswith("malignancy probability 0.900 >= 0.432")
    assert recommendation(0.432, 0.432)[0] == "biopsy"
    with pytest.raises(ModelError, match="no malignancy probability"):
        recommendation(math.nan, 0.432)


def test_auc_abnormal_leaves_out_studies_without_a_finding_probability():
    """A NaN finding probability is left out (and counted), not ranked as if it were a score."""
    from BINDSLib.commands.evaluate import summary

    rows = [_row(0, "benign", 0.5, finding=0.8), _row(1, "malignant", 0.5, finding=0.6),
            _row(2, "malignant", 0.5, finding=math.nan), _row(3, "normal", 0.5, finding=0.7),
            _row(4, "normal", 0.5, finding=0.1)]
    m = compute_metrics(rows, threshold=0.5, n_bootstrap=20)
    # 0.8 and 0.6 against 0.7 and 0.1: 3 of 4 pairs; with the NaN scored it would not be 3/4
    assert m["auc_abnormal"] == pytest.approx(3 / 4)
    assert m["n_auc_abnormal_left_out"] == 1
    assert all(math.isfinite(v) for v in m["auc_abnormal_ci95"])
    assert m["brier_finding"] == pytest.approx((0.2**2 + 0.4**2 + 0.7**2 + 0.1**2) / 4)
    assert "1 without a finding probability left out" in summary(m)
    assert "n_auc_abnormal_left_out" not in compute_metrics(rows[:2] + rows[3:], threshold=0.5, n_bootstrap=20)
    json.dumps(m, allow_nan=False)


def test_pointing_game_by_finding_type_scores_each_type_against_its_own_circles():
    """A film with a circumscribed mass and a spiculated one, the saliency maximum in the first:
    the study's pointing hit is 1, the CIRC hit 1, the SPIC hit 0 (not a hit by association)."""
    from types import SimpleNamespace

    from BINDSLib.model.evaluation import predict_dataset
    from BINDSLib.study import Diagnosis, Finding, Geometry, Image, Role, Study

    def film(label, findings, peak):
        im = Image(np.zeros((1, 64, 64), np.float32), Geometry(), Role.parse(f"MG_{label}_MLO"), findings=findings)
        sal = np.zeros((1, 64, 64), np.float32)
        sal[0, peak[1], peak[0]] = 1.0
        return im, sal

    circ, spic = Finding("CIRC", "B", 16, 16, 5), Finding("SPIC", "M", 48, 48, 5)
    cases = {"two": film("L", (circ, spic), (16, 16)),       # hit on the CIRC circle only
             "one": film("R", (spic,), (48, 47)),             # one type: as the study's hit
             "none": film("L", (Finding("CALC", "B"),), (5, 5)),  # no circle: no reference
             "mixed": film("R", (circ, Finding("CALC", "M")), (16, 16))}  # the CALC has no circle

    class Model:
        threshold, modalities = 0.5, ("MG",)

        def predict(self, study, **kw):
            im = study.images[0]
            out = SimpleNamespace(lesion_probability_max=0.5, lesion_mask=np.zeros(im.shape, np.uint8),
                                  saliency=cases[study.study_id][1])
            return SimpleNamespace(malignancy_probability=0.5, finding_probability=0.5, malignancy_logit=0.0,
                                   finding_logit=0.0, finding_compared=None, modalities=["MG"],
                                   subtype_probabilities={},
                                   contributions={}, combination_probabilities={}, images={im.label: out})

    studies = [Study(k, [im], diagnosis=Diagnosis.MALIGNANT) for k, (im, _) in cases.items()]
    rows, _, hits = predict_dataset(Model(), studies)
    by_id = {r["study_id"]: r for r in rows}
    assert by_id["two"]["pointing_hit"] == 1.0 and hits == [True, True, True]
    assert by_id["two"]["pointing_hit_CIRC"] == 1.0 and by_id["two"]["pointing_hit_SPIC"] == 0.0
    assert by_id["one"]["pointing_hit_SPIC"] == 1.0 and by_id["one"]["findings"] == "SPIC"
    assert math.isnan(by_id["none"]["pointing_hit"]) and math.isnan(by_id["none"]["pointing_hit_CALC"])
    # the CIRC circle is hit; the CALC beside it has no place of its own, so no hit of its own
    assert by_id["mixed"]["pointing_hit"] == 1.0 and by_id["mixed"]["pointing_hit_CIRC"] == 1.0
    assert math.isnan(by_id["mixed"]["pointing_hit_CALC"])
    by = compute_metrics(rows, threshold=0.5, n_bootstrap=10)["by_finding"]
    assert by["CIRC"]["pointing_game"] == 1.0 and by["CIRC"]["n_pointing_game"] == 2
    # SPIC: missed in "two", hit in "one"; CALC: a type without a circle has no pointing game
    assert by["SPIC"]["pointing_game"] == 0.5 and by["SPIC"]["n_pointing_game"] == 2
    assert by["CALC"]["n"] == 2 and "pointing_game" not in by["CALC"]
    from BINDSLib.errors import InputError

    with pytest.raises(InputError, match="study ID 'two' occurs twice in the data"):
        predict_dataset(Model(), studies + studies[:1])


def test_mammograms_scored_without_the_other_breast_are_counted_and_named():
    from BINDSLib.commands.evaluate import summary

    rows = [dict(_row(i, d, 0.5, finding=f), finding_compared=c) for i, (d, f, c) in enumerate(
        [("benign", 0.8, 1), ("malignant", 0.6, 0), ("normal", 0.3, 1), ("normal", 0.2, 1), ("normal", 0.1, "")])]
    m = compute_metrics(rows, threshold=0.5, n_bootstrap=10)
    assert m["n_finding_compared"] == 3 and m["n_finding_not_compared"] == 1
    assert "note: 1 of 4 mammography studies scored alone, without a film of the other breast" in summary(m)
    plain = compute_metrics([dict(r, finding_compared="") for r in rows], threshold=0.5, n_bootstrap=10)
    assert "n_finding_not_compared" not in plain and "other breast" not in summary(plain)
    everyone = compute_metrics([dict(r, finding_compared=1) for r in rows], threshold=0.5, n_bootstrap=10)
    assert everyone["n_finding_not_compared"] == 0 and "note:" not in summary(everyone)


def test_biopsy_analysis_spares_benign_at_full_sensitivity():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200), np.ones(100)].astype(int)
    s = np.where(y == 1, rng.uniform(0.5, 1.0, 300), rng.uniform(0.0, 0.7, 300))
    r = biopsy_analysis(s, y, target=0.98, n_bootstrap=100)
    # malignant never below 0.5, benign uniform on [0, 0.7]: about 5/7 of benign are spared
    assert r["spared_fraction"] == pytest.approx(5 / 7, abs=0.12)
    assert r["spared_fraction_ci95"][0] <= r["spared_fraction"] <= r["spared_fraction_ci95"][1]
    assert r["n_calibration"] + r["n_test"] == 300
    assert "note" in biopsy_analysis(s[:3], y[:3])


def _hits(types: str, hit: float) -> dict:
    """A study's pointing-hit columns as predict_dataset writes them, one hit for all its types."""
    return {"pointing_hit": hit, **{f"pointing_hit_{t}": hit for t in filter(None, types.split(";"))}}


def test_metrics_by_finding_type():
    """Each finding type is ranked against every normal study, by the finding probability;
    a study with two types counts for both; studies without types add no entry."""
    from BINDSLib.commands.evaluate import summary

    spec = [("benign", 0.9, "CIRC", 1.0), ("malignant", 0.4, "CALC;CIRC", 0.0),
            ("malignant", 0.2, "CALC", math.nan), ("benign", 0.95, "", math.nan),
            ("normal", 0.3, "", math.nan), ("normal", 0.5, "", math.nan)]
    rows = []
    for i, (d, f, types, hit) in enumerate(spec):
        rows.append(dict(_row(i, d, 0.5, finding=f), findings=types, **_hits(types, hit)))
    m = compute_metrics(rows, threshold=0.5, n_bootstrap=20)
    by = m["by_finding"]
    assert set(by) == {"CALC", "CIRC"}
    # CIRC: 0.9 and 0.4 against the normals 0.3 and 0.5 -> 3 of 4 pairs ranked right
    assert by["CIRC"]["n"] == 2 and by["CIRC"]["auc_abnormal"] == pytest.approx(3 / 4)
    # CALC: 0.4 and 0.2 against 0.3 and 0.5 -> 1 of 4
    assert by["CALC"]["n"] == 2 and by["CALC"]["auc_abnormal"] == pytest.approx(1 / 4)
    # an unlabelled study is left out, a normal one counts as normal whatever types it lists
    unlabelled = dict(_row(9, "normal", 0.5, finding=0.99), diagnosis="", malignant=math.nan,
                      findings="CIRC;SPIC", **_hits("CIRC;SPIC", 1.0))
    typed_normal = dict(_row(8, "normal", 0.5, finding=0.1), findings="CIRC", **_hits("CIRC", math.nan))
    more = compute_metrics([unlabelled] + rows + [typed_normal], threshold=0.5, n_bootstrap=20)["by_finding"]
    assert set(more) == {"CALC", "CIRC"} and more["CIRC"]["n"] == 2 and more["CALC"]["n"] == 2
    assert more["CIRC"]["auc_abnormal"] == pytest.approx(5 / 6)  # 0.9, 0.4 vs 0.3, 0.5, 0.1
    assert more["CALC"]["auc_abnormal"] == pytest.approx(3 / 6)  # 0.4, 0.2 vs 0.3, 0.5, 0.1
    assert more["CIRC"]["pointing_game"] == pytest.approx(0.5)
    # without normal studies: no AUC, the pointing game still
    lesions = compute_metrics([r for r in rows if r["diagnosis"] != "normal"], threshold=0.5,
                              n_bootstrap=20)["by_finding"]
    assert "auc_abnormal" not in lesions["CIRC"] and lesions["CIRC"]["pointing_game"] == pytest.approx(0.5)
    assert by["CIRC"]["pointing_game"] == pytest.approx(0.5) and by["CIRC"]["n_pointing_game"] == 2
    assert by["CALC"]["pointing_game"] == 0.0 and by["CALC"]["n_pointing_game"] == 1
    assert len(by["CIRC"]["auc_abnormal_ci95"]) == 2
    # one image per study: the per-type pointing game is a proportion with a Wilson interval
    assert by["CIRC"]["pointing_game_ci95"] == pytest.approx(list(wilson_ci(1, 2)))
    assert by["CALC"]["pointing_game_ci95"] == pytest.approx([0.0, wilson_ci(0, 1)[1]])
    assert ("by finding type: CALC n=2 AUC vs normal 0.250 pointing game 0.00 of 1, "
            "CIRC n=2 AUC vs normal 0.750 pointing game 0.50 of 2") in summary(m)
    assert "by finding type: CALC n=2 pointing game 0.00 of 1, CIRC n=2 pointing game 0.50 of 2" in summary(
        compute_metrics([r for r in rows if r["diagnosis"] != "normal"], threshold=0.5, n_bootstrap=20))
    # no types (ultrasound, study folders without findings): no entry, no line
    plain = compute_metrics([dict(r, findings="") for r in rows], threshold=0.5, n_bootstrap=20)
    assert "by_finding" not in plain and "by finding type" not in summary(plain)
    # a study with two images with a reference: a mean, not a proportion, so no interval
    two = compute_metrics([dict(rows[0], **_hits("CIRC", 0.5))] + rows[1:], threshold=0.5, n_bootstrap=20)
    assert two["by_finding"]["CIRC"]["pointing_game"] == pytest.approx(0.25)
    assert "pointing_game_ci95" not in two["by_finding"]["CIRC"]
    json.dumps(m, allow_nan=False)


def test_dice_and_pointing_game_intervals():
    from BINDSLib.commands.evaluate import summary

    rows = [_row(i, d, p) for i, (d, p) in enumerate(
        [("benign", 0.1), ("benign", 0.2), ("malignant", 0.8), ("malignant", 0.9), ("normal", 0.1)])]
    dices, hits = [0.2, 0.4, 0.6, 0.9], [True, False, True, True]
    m = compute_metrics(rows, threshold=0.5, n_bootstrap=200, dices=dices, hits=hits)
    assert m["lesion_dice"] == pytest.approx(0.525) and m["n_lesion_dice"] == 4
    lo, hi = m["lesion_dice_ci95"]
    assert 0.2 <= lo < 0.525 < hi <= 0.9  # a bootstrap of the mean stays within the values
    assert m["pointing_game"] == 0.75 and m["pointing_game_ci95"] == pytest.approx(list(wilson_ci(3, 4)))
    text = summary(m)
    assert f"lesion Dice 0.525 (95% CI {lo:.3f}-{hi:.3f}; n=4)" in text
    assert "pointing game 0.750 (95% CI {:.3f}-{:.3f}; n=4)".format(*wilson_ci(3, 4)) in text
    assert "pointing game" not in summary(compute_metrics(rows, threshold=0.5, n_bootstrap=20))


def test_summary_warns_when_the_test_half_misses_the_target_sensitivity():
    from BINDSLib.commands.evaluate import summary

    rows = [_row(i, d, p) for i, (d, p) in enumerate(
        [("benign", 0.1), ("benign", 0.2), ("malignant", 0.8), ("malignant", 0.9), ("normal", 0.1)])]
    m = compute_metrics(rows, threshold=0.5, n_bootstrap=10)
    br = dict(m["biopsy_reduction"], spared_fraction=1.0, spared_fraction_ci95=[1.0, 1.0])
    met = summary({**m, "biopsy_reduction": dict(br, test_sensitivity=1.0)})
    short = summary({**m, "biopsy_reduction": dict(br, test_sensitivity=0.76)})
    assert "test-half sensitivity 1.000" in met and "below the target" not in met
    assert "test-half sensitivity 0.760 - below the target" in short


def test_evaluate_study_folders(tmp_path, tiny_bundle, capsys):
    data = tmp_path / "data"
    for i, (mal, mods) in enumerate([(True, ("MG", "US")), (False, ("US",)), (True, ("US", "MR")),
                                     (False, ("MG", "US", "MR")), (None, ("MG",)), (True, ("MG",))]):
        write_study_folder(make_case(i, mal, mods), data / f"case{i}")
    out = tmp_path / "out"
    args = ["evaluate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(out),
            "--combinations", "--bootstrap", "20"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 6 and m["layout"] == "study-folders" and m["schema"] == "binds.diagnosis_evaluation"
    for key in ("auc", "auc_ci95", "sensitivity", "specificity", "threshold", "ece",
                "lesion_dice", "pointing_game", "biopsy_reduction", "auc_by_combination", "auc_abnormal"):
        assert key in m, key
    assert m["auc_by_combination"]["US"]["n"] == 4 and m["auc_by_combination"]["MG+US+MR"]["n"] == 1
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 6 and {"study_id", "malignancy_probability", "p_luminal_a"} <= set(rows[0])
    for png in ("roc.png", "reliability.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 5  # exists: --overwrite needed
    # the bundle evaluated, or the data, is never the output (--overwrite would delete it)
    import shutil as _sh

    bundle = _sh.copytree(tiny_bundle, tmp_path / "bundle")
    before = sorted(p.name for p in bundle.rglob("*"))
    for out_dir in (bundle, data):
        assert main(["evaluate", "--model", str(bundle), "--data", str(data), "--out", str(out_dir),
                     "--overwrite", "--bootstrap", "20"]) == 5
        assert "is an input of this command" in capsys.readouterr().err
    assert sorted(p.name for p in bundle.rglob("*")) == before and (data / "case0" / "study.json").is_file()
    # two study folders carrying one study ID would count one study twice: refused, nothing written
    twin = make_case(0, True, ("MG", "US"))
    write_study_folder(twin, data / "case0-copy")
    assert main(["evaluate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(tmp_path / "twin"),
                 "--bootstrap", "20"]) == 3
    assert f"case0-copy: study ID '{twin.study_id}' is also that of case0" in capsys.readouterr().err
    assert not (tmp_path / "twin").exists()


def _subset(src, dst, csv_name, keep, extra_csv=None):
    dst.mkdir()
    with open(src / csv_name, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if keep(r)]
        fields = reader.fieldnames
    with open(dst / csv_name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        for col in ("image", "mask"):
            if r.get(col):
                (dst / r[col]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src / r[col], dst / r[col])
    if extra_csv:
        shutil.copy(src / extra_csv, dst / extra_csv)
    return rows


def test_evaluate_busi_layout(tmp_path, shared_data, tiny_bundle):
    counts = {"benign": 0, "malignant": 0, "normal": 0}

    def keep(r):
        counts[r["label"]] += 1
        return counts[r["label"]] <= 4
    _subset(shared_data / "busi", tmp_path / "busi", "manifest.csv", keep)
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(tiny_bundle), "--data", str(tmp_path / "busi"),
                 "--out", str(out), "--bootstrap", "20"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["layout"] == "busi" and m["n"] == 12 and m["n_normal"] == 4
    assert m["auc"] is not None and m["n_lesion_dice"] == 8 and m["n_pointing_game"] == 8
    # one image per BUSI study: the per-study columns are the values behind the means
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    dice = [float(r["lesion_dice"]) for r in rows if r["lesion_dice"]]
    hits = [float(r["pointing_hit"]) for r in rows if r["pointing_hit"]]
    assert len(dice) == len(hits) == 8 and all(r["lesion_dice"] == "" for r in rows if r["diagnosis"] == "normal")
    assert np.mean(dice) == pytest.approx(m["lesion_dice"], abs=1e-5)
    assert np.mean(hits) == pytest.approx(m["pointing_game"], abs=1e-9)


def test_evaluate_mini_mias_layout(tmp_path, shared_data, tiny_bundle):
    counts = {"benign": 0, "malignant": 0, "normal": 0}

    def keep(r):
        counts[r["label"]] += 1
        return counts[r["label"]] <= 3
    _subset(shared_data / "mini-mias", tmp_path / "mias", "images.csv", keep, extra_csv="findings.csv")
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(tiny_bundle), "--data", str(tmp_path / "mias"),
                 "--out", str(out), "--bootstrap", "20"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["layout"] == "mini-mias" and m["n"] == 9
    assert m["auc_abnormal"] is not None and m["auc"] is not None
    # auc_abnormal ranks the studies by the finding probability predictions.csv records
    from BINDSLib.model.metrics import auc

    rows = list(csv.DictReader(open(out / "predictions.csv")))
    finding = [float(r["finding_probability"]) for r in rows]
    assert all(0.0 < f < 1.0 for f in finding)
    assert m["auc_abnormal"] == pytest.approx(auc(finding, [r["diagnosis"] != "normal" for r in rows]), abs=1e-6)
    assert m["auc_abnormal_malignancy"] == pytest.approx(
        auc([float(r["malignancy_probability"]) for r in rows], [r["diagnosis"] != "normal" for r in rows]), abs=1e-5)
    assert m["n_pointing_game"] >= 1  # finding circles count as the lesion
    # per finding type: the types predictions.csv records, each against every normal study
    findings = {r["study_id"]: set(filter(None, r["findings"].split(";"))) for r in rows}
    assert all(bool(t) == (r["diagnosis"] != "normal") for r, t in zip(rows, findings.values()))
    normal = [r["diagnosis"] == "normal" for r in rows]
    assert set(m["by_finding"]) == set().union(*findings.values())
    for t, v in m["by_finding"].items():
        keep = [n or t in findings[r["study_id"]] for r, n in zip(rows, normal)]
        assert v["n"] == sum(keep) - sum(normal)
        assert v["auc_abnormal"] == pytest.approx(
            auc([f for f, k in zip(finding, keep) if k], [not n for n, k in zip(normal, keep) if k]), abs=1e-6)


def test_model_auto_is_the_bundle_diagnose_would_pick(tmp_path, shared_data):
    """The default --model auto: the real-image bundle of the data's modality (before, the
    synthetic demo bundle was evaluated on real images without a word); named in metrics.json."""
    from test_datasets import _mias_copy, _write_csv

    root = tmp_path / "mias"
    rows, _ = _mias_copy(shared_data, root, n=2)
    _write_csv(root / "images.csv", rows)
    (root / "findings.csv").write_text("image_id,abnormality,center_col,center_row,radius\n")
    assert main(["evaluate", "--data", str(root), "--bootstrap", "0", "--device", "cpu",
                 "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["model"]["name"] == "binds-mg-mias" and m["n"] == 2
    assert m["model_choice"].startswith("auto: binds-mg-mias (real MG images")
    assert main(["evaluate", "--synthetic", "2", "--bootstrap", "0", "--device", "cpu",
                 "--out", str(tmp_path / "syn")]) == 0
    assert json.loads((tmp_path / "syn" / "metrics.json").read_text())["model"]["name"] == "binds-diagnosis-demo"


def test_model_auto_names_the_studies_another_bundle_would_read(tmp_path, caplog):
    """A folder mixing synthetic and real studies is scored with the first study's bundle; the
    studies diagnose --model auto would give to another bundle are counted and named."""
    synthetic = make_case(0, True, ("US",))
    synthetic.study_id, synthetic.synthetic = "a-synthetic", True
    real = make_case(1, False, ("US",))
    real.study_id, real.synthetic = "b-real", False
    for st in (synthetic, real):
        write_study_folder(st, tmp_path / "data" / st.study_id)
    with caplog.at_level("WARNING"):
        assert main(["evaluate", "--data", str(tmp_path / "data"), "--bootstrap", "0", "--device", "cpu",
                     "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["model"]["name"] == "binds-diagnosis-demo" and m["n_model_choice_differs"] == 1
    assert "1 studies would be read by another bundle than binds-diagnosis-demo" in caplog.text
    assert "b-real" in caplog.text


def test_mr_sequences_sharing_one_map_count_once_in_dice_and_pointing_game():
    """The MR volumes of one grid share one lesion map and one saliency map: one Dice value and
    one pointing hit for them, not one per sequence."""
    from types import SimpleNamespace

    from BINDSLib.model.evaluation import predict_dataset
    from BINDSLib.study import Diagnosis, Geometry, Image, Role, Study

    mask = np.zeros((4, 16, 16), np.uint8)
    mask[1:3, 4:8, 4:8] = 1
    mg_mask = np.zeros((1, 16, 16), np.uint8)
    mg_mask[0, 2:6, 2:6] = 1
    images = [Image(np.ones((1, 16, 16), np.float32), Geometry(), Role.parse("MG_L_CC"), lesion_mask=mg_mask)]
    images += [Image(np.ones((4, 16, 16), np.float32), Geometry(), Role.parse(k), lesion_mask=mask)
               for k in ("MR_T1_PRE", "MR_DCE1", "MR_DCE2", "MR_T2")]
    mr_sal = np.zeros((4, 16, 16), np.float32)
    mr_sal[2, 5, 5] = 1  # in the lesion
    mr = SimpleNamespace(lesion_probability_max=0.5, lesion_mask=mask.copy(), saliency=mr_sal)
    mg_sal = np.zeros((1, 16, 16), np.float32)
    mg_sal[0, 12, 12] = 1  # outside it
    mg = SimpleNamespace(lesion_probability_max=0.5, lesion_mask=np.zeros_like(mg_mask), saliency=mg_sal)

    class Model:
        threshold, modalities = 0.5, ("MG", "MR")

        def predict(self, study, **kw):
            outs = {"MG_L_CC": mg, **{im.label: mr for im in study.images[1:]}}
            return SimpleNamespace(malignancy_probability=0.5, finding_probability=0.5, malignancy_logit=0.0,
                                   finding_logit=0.0, finding_compared=None, modalities=["MG", "MR"],
                                   subtype_probabilities={}, contributions={}, combination_probabilities={},
                                   images=outs)

    rows, dices, hits = predict_dataset(Model(), [Study("s", images, diagnosis=Diagnosis.MALIGNANT)])
    assert dices == [0.0, 1.0] and hits == [False, True]
    assert rows[0]["lesion_dice"] == 0.5 and rows[0]["pointing_hit"] == 0.5
    # with the reference masks given, each sequence's mask is a copy of its own; its saliency is still shared
    shared = mr.saliency

    class GivenModel(Model):
        def predict(self, study, **kw):
            p = super().predict(study, **kw)
            p.images = {k: (SimpleNamespace(lesion_probability_max=0.5, lesion_mask=mask.copy(), saliency=shared)
                            if k.startswith("MR") else o) for k, o in p.images.items()}
            return p

    _, dices, hits = predict_dataset(GivenModel(), [Study("s", images, diagnosis=Diagnosis.MALIGNANT)],
                                     given_masks=True)
    assert dices == [] and hits == [False, True]


def test_the_two_stage_decision_is_scored_as_diagnose_makes_it():
    """Stage 1 outside the uncertainty band decides alone; inside it, the MRI decides; a study
    without stage-1 images is read with its MRI. The all-modality figures stay as they were."""
    from types import SimpleNamespace

    from BINDSLib.model.evaluation import predict_dataset
    from BINDSLib.study import Diagnosis, Geometry, Image, Role, Study

    def image(key, depth=1):
        return Image(np.ones((depth, 8, 8), np.float32), Geometry(), Role.parse(key))

    # study -> (stage-1 probability, all-modality probability)
    probs = {"sure": (0.9, 0.3), "unsure": (0.5, 0.2), "mr_only": (None, 0.8), "us_only": (0.6, 0.6)}
    studies = [Study("sure", [image("US_L"), image("MR_T2", 4)], diagnosis=Diagnosis.BENIGN),
               Study("unsure", [image("MG_L_CC"), image("MR_T2", 4)], diagnosis=Diagnosis.BENIGN),
               Study("mr_only", [image("MR_T2", 4)], diagnosis=Diagnosis.MALIGNANT),
               Study("us_only", [image("US_R")], diagnosis=Diagnosis.MALIGNANT)]

    class Model:
        threshold, modalities, uncertainty_band = 0.45, ("MG", "US", "MR"), (0.25, 0.75)

        def predict(self, study, modalities=None, **kw):
            first, full = probs[study.study_id]
            p = full if modalities is None or "MR" in modalities else first
            return SimpleNamespace(malignancy_probability=p, finding_probability=0.5, malignancy_logit=0.0,
                                   finding_logit=0.0, finding_compared=None, modalities=[],
                                   images={study.images[0].label: SimpleNamespace(lesion_probability_max=0.1)},
                                   subtype_probabilities={}, contributions={}, combination_probabilities={})

    rows, _, _ = predict_dataset(Model(), studies, saliency="none")
    got = {r["study_id"]: (r["stage1_probability"], r["stage2_used"], r["decision_probability"], r["decision"])
           for r in rows}
    assert got["sure"] == (0.9, 0, 0.9, 1) and got["unsure"] == (0.5, 1, 0.2, 0)
    assert got["mr_only"][1:] == (1, 0.8, 1) and math.isnan(got["mr_only"][0])
    assert got["us_only"] == (0.6, 0, 0.6, 1)
    m = compute_metrics(rows, threshold=0.45, n_bootstrap=10)
    # all modalities: benign 0.3, 0.2 below, malignant 0.8, 0.6 above -> 1 / 1; staged: "sure" is a false positive
    assert (m["sensitivity"], m["specificity"]) == (1.0, 1.0)
    assert m["staged"] == {"sensitivity": 1.0, "specificity": 0.5, "n_stage2": 2, "stage2_share": 0.5}
    # a lesion given on the MRI (--given-masks) is read whatever stage 1 says, as diagnose does
    studies[0].images[1].lesion_mask = np.ones((4, 8, 8), np.uint8)
    rows, _, _ = predict_dataset(Model(), studies[:2], saliency="none", given_masks=True)
    assert [(r["stage2_used"], r["decision_probability"]) for r in rows] == [(1, 0.3), (1, 0.2)]


def test_a_failed_prediction_is_left_out_of_the_subtype_and_staged_figures():
    """A study whose prediction failed (no malignancy probability) is left out of every figure,
    the subtype AUC (where MONAI ranked its NaN probabilities first) and the two-stage decision
    included."""
    from BINDSLib.model.config import SUBTYPES
    from BINDSLib.model.evaluation import compute_metrics
    from BINDSLib.model.metrics import macro_auc

    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        st = int(rng.integers(0, len(SUBTYPES)))
        pr = rng.dirichlet(np.ones(len(SUBTYPES)))
        pr[st] += 0.5
        rows.append({"study_id": str(i), "malignant": 1.0, "abnormal": 1.0, "findings": "", "subtype": SUBTYPES[st],
                     "malignancy_probability": float(rng.uniform(0.5, 1)), "finding_probability": 0.9,
                     "lesion_score": 0.9, "decision_probability": 0.9, "stage2_used": int(i % 2),
                     **{f"p_{s}": float(v) for s, v in zip(SUBTYPES, pr / pr.sum())}})
    for i in range(3):
        rows.append({"study_id": f"b{i}", "malignant": 0.0, "abnormal": 1.0, "findings": "", "subtype": "",
                     "malignancy_probability": 0.2, "finding_probability": 0.8, "lesion_score": 0.8,
                     "decision_probability": 0.2, "stage2_used": 0, **{f"p_{s}": 0.25 for s in SUBTYPES}})
    rows[0].update(malignancy_probability=math.nan, **{f"p_{s}": math.nan for s in SUBTYPES})
    m = compute_metrics(rows, 0.5, n_bootstrap=10)
    kept = [r for r in rows[1:] if r["subtype"]]
    assert m["n_subtype"] == 29 and m["subtype_macro_auc"] == pytest.approx(macro_auc(
        np.array([[r[f"p_{s}"] for s in SUBTYPES] for r in kept]),
        np.array([SUBTYPES.index(r["subtype"]) for r in kept]), len(SUBTYPES)))
    assert m["staged"]["n_stage2"] == sum(r["stage2_used"] for r in rows[1:])
    assert m["staged"]["stage2_share"] == pytest.approx(m["staged"]["n_stage2"] / 32)
