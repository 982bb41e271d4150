"""``--model auto``: which bundle reads which study, and a bundle never uses a branch it was
not trained on."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from BINDSLib.cli import main
from BINDSLib.errors import InputError, ModelError
from BINDSLib.model.selection import BundleInfo, bundle_info, choose_bundle
from BINDSLib.studyfolder import write_study_folder
from BINDSLib.synthetic import make_study

DEMO = BundleInfo("binds-diagnosis-demo", Path("demo"), ("MG", "US", "MR"), True)
US_REAL = BundleInfo("binds-us-busi", Path("us"), ("US",), False)
MG_REAL = BundleInfo("binds-mg-mias", Path("mg"), ("MG",), False)
ALL = [MG_REAL, DEMO, US_REAL]


def _real(study):
    return dataclasses.replace(study, synthetic=False)


@pytest.fixture(scope="module")
def studies():
    return {"all": make_study(3), "us": make_study(4, modalities=("US",)),
            "mg": make_study(5, modalities=("MG",)), "mr": make_study(6, modalities=("MR",)),
            "mg_us": make_study(7, modalities=("MG", "US"))}


def test_synthetic_study_goes_to_the_demo_bundle(studies):
    for s in studies.values():
        assert s.synthetic
        c = choose_bundle(s, ALL)
        assert c.bundle is DEMO and c.unused == () and c.warning is None


def test_real_studies_go_to_the_real_bundle_of_their_modality(studies):
    assert choose_bundle(_real(studies["us"]), ALL).bundle is US_REAL
    assert choose_bundle(_real(studies["mg"]), ALL).bundle is MG_REAL
    c = choose_bundle(_real(studies["mg_us"]), ALL)  # both readable: ultrasound first
    assert c.bundle is US_REAL
    assert set(c.unused) == {im.label for im in studies["mg_us"].images if im.modality.value == "MG"}
    assert c.unused and c.warning is None


def test_a_bundle_reading_more_of_the_study_wins(studies):
    both = BundleInfo("real-mg-us", Path("mgus"), ("MG", "US"), False)
    assert choose_bundle(_real(studies["mg_us"]), ALL + [both]).bundle is both


def test_a_bundle_earlier_on_the_search_path_wins_a_tie(studies):
    mine = BundleInfo("zz-my-us", Path("mine"), ("US",), False)
    assert choose_bundle(_real(studies["us"]), [mine] + ALL).bundle is mine
    assert choose_bundle(_real(studies["us"]), ALL + [mine]).bundle is US_REAL


def test_real_mri_falls_back_to_the_demo_bundle_with_a_warning(studies):
    c = choose_bundle(_real(studies["mr"]), ALL)
    assert c.bundle is DEMO and "mean nothing" in c.warning


def test_no_usable_bundle_is_a_clear_error(studies):
    with pytest.raises(ModelError, match="no installed bundle reads MR"):
        choose_bundle(_real(studies["mr"]), [US_REAL, MG_REAL])
    with pytest.raises(ModelError, match="synthetic"):
        choose_bundle(studies["us"], [US_REAL])


def test_bundle_info_reads_metadata():
    b = bundle_info(Path("x"), {"name": "n", "binds": {"modalities": ["us", "MG"],
                                                       "training_data": {"synthetic": False}}})
    assert (b.name, b.modalities, b.synthetic) == ("n", ("MG", "US"), False)
    old = bundle_info(Path("y"), {"binds": {}})  # older bundles: every modality, synthetic
    assert (old.name, old.modalities, old.synthetic) == ("y", ("MG", "US", "MR"), True)


def _us_only_bundle(src: Path, root: Path) -> Path:
    dst = root / "test-us-real"
    shutil.copytree(src, dst)
    meta_path = dst / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["name"] = "test-us-real"
    meta["binds"]["modalities"] = ["US"]
    meta["binds"]["training_data"] = {"synthetic": False}
    meta_path.write_text(json.dumps(meta))
    return dst


def test_predict_never_uses_modalities_the_bundle_was_not_trained_on(diagnosis_bundle, tmp_path, studies):
    from BINDSLib.model.inference import DiagnosisModel

    model = DiagnosisModel.from_bundle(_us_only_bundle(diagnosis_bundle, tmp_path), device="cpu")
    assert model.modalities == ("US",)
    pred = model.predict(studies["mg_us"], saliency="none")
    assert pred.modalities == ("US",)
    assert {o.modality for o in pred.images.values()} == {"US"}
    with pytest.raises(InputError, match="test-us-real reads US images"):
        model.predict(studies["mg"], saliency="none")


def test_diagnose_auto_picks_per_study_and_says_so(diagnosis_bundle, tmp_path, monkeypatch, studies):
    models = tmp_path / "models"
    models.mkdir()
    _us_only_bundle(diagnosis_bundle, models)
    monkeypatch.setenv("BINDS_MODEL_PATH", str(models))
    real = write_study_folder(dataclasses.replace(_real(studies["mg_us"]), study_id="real-1"),
                              tmp_path / "real")
    out = tmp_path / "out-real"
    assert main(["diagnose", str(real), "--out", str(out), "--device", "cpu", "--no-summary"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "test-us-real"
    notes = " ".join(report["notes"])
    assert "model chosen automatically: test-us-real" in notes
    mg_labels = [im.label for im in studies["mg_us"].images if im.modality.value == "MG"]
    assert mg_labels and all(lbl in notes for lbl in mg_labels)
    assert {p.name.split(".")[0] for p in out.glob("*.seg.nrrd")} == {
        im.label for im in studies["mg_us"].images if im.modality.value == "US"}

    synth = write_study_folder(studies["us"], tmp_path / "synth")
    out2 = tmp_path / "out-synth"
    assert main(["diagnose", str(synth), "--out", str(out2), "--device", "cpu", "--no-summary"]) == 0
    report2 = json.loads((out2 / "report.json").read_text())
    assert report2["model"]["name"] == "binds-diagnosis-demo"
    assert any("synthetic study" in n for n in report2["notes"])


def test_binds_models_says_what_each_diagnosis_bundle_reads(diagnosis_bundle, tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    models.mkdir()
    _us_only_bundle(diagnosis_bundle, models)
    monkeypatch.setenv("BINDS_MODEL_PATH", str(models))
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["bundles"]}
    assert rows["test-us-real"]["modalities"] == ["US"] and rows["test-us-real"]["training_data"] == "real"
    assert rows["binds-diagnosis-demo"]["training_data"] == "synthetic"
    assert "modalities" not in rows["binds-risk-demo"]


def test_bundle_info_reads_modalities_as_the_model_does():
    b = bundle_info(Path("x"), {"binds": {"modalities": "US", "training_data": {"synthetic": False}}})
    assert b.modalities == ("US",)


def test_evaluate_a_one_modality_bundle_without_subtypes(diagnosis_bundle, tmp_path):
    """Studies the bundle cannot read are left out and counted; no subtype metrics without a
    subtype head (both crashed before)."""
    from BINDSLib.model.evaluation import evaluate
    from BINDSLib.model.inference import DiagnosisModel

    path = _us_only_bundle(diagnosis_bundle, tmp_path)
    meta_path = path / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["binds"]["subtype_trained"] = False
    meta_path.write_text(json.dumps(meta))
    model = DiagnosisModel.from_bundle(path, device="cpu")
    studies = [make_study(20 + i, modalities=("US",), diagnosis=("malignant", "benign")[i % 2]) for i in range(8)]
    studies += [make_study(40, modalities=("MG",))]
    m = evaluate(model, studies, tmp_path / "eval", n_bootstrap=20, saliency="none")
    assert m["n"] == 8 and m["n_left_out_unreadable"] == 1
    assert "subtype_macro_auc" not in m and 0.0 <= m["auc"] <= 1.0


def test_shipped_one_view_mammography_bundle_reads_the_mlo_view_of_a_four_view_exam():
    from BINDSLib.bundle import find_bundle, read_metadata
    from BINDSLib.model.config import DiagnosisConfig
    from BINDSLib.model.preprocess import select_mg
    from test_model_cases import make_case

    meta = read_metadata(find_bundle("binds-mg-mias"))
    cfg = DiagnosisConfig.from_json(meta["binds"]["model_config"])
    assert cfg.mg_max_views == 1 and cfg.mg_views == ("MLO",)  # trained on mini-MIAS MLO films
    kept, notes = select_mg(make_case(0, True, ("MG",)), cfg.mg_max_views, cfg.mg_views)
    assert [im.label for im in kept] == ["MG_L_MLO"] and len(notes) == 3
    # it reads the more suspicious MLO film, compared with the other breast (1.1.0)
    assert cfg.mg_select == "finding" and cfg.bilateral_weight == 1.0
    study = make_case(0, True, ("MG",))
    suspicion = {"MG_L_CC": 9.0, "MG_L_MLO": -1.0, "MG_R_CC": 0.0, "MG_R_MLO": 2.0}
    kept, _ = select_mg(study, cfg.mg_max_views, cfg.mg_views, suspicion=suspicion)
    assert [im.label for im in kept] == ["MG_R_MLO"]  # the preferred view first, then suspicion
    kept, _ = select_mg(study, cfg.mg_max_views, cfg.mg_views, frozenset({"MG_L_CC"}), suspicion)
    assert [im.label for im in kept] == ["MG_L_CC"]  # the user's outline first of all
    kept, _ = select_mg(study, 2, (), suspicion={"MG_R_CC": 1.0, "MG_L_MLO": 3.0})
    assert [im.label for im in kept] == ["MG_L_MLO", "MG_R_CC"]  # kept in slot order


def test_mg_select_finding_reads_the_most_suspicious_film():
    """``mg_select: "finding"``: a study with more mammograms than slots keeps the film with
    the highest finding logit encoded alone, compared with the other breast."""
    import numpy as np

    from BINDSLib.study import Study
    from test_model_cases import make_case, tiny_model

    full = make_case(4, True, ("MG",))
    mlo = [im for im in full.images if im.role.view == "MLO"]
    plain = tiny_model(mg_max_views=4)
    alone = {im.label: plain.mg_suspicion(Study("x", images=[im]))[im.label] for im in mlo}
    model = tiny_model({"calibration": {"finding_reference": -0.4}}, mg_max_views=1, mg_select="finding",
                       bilateral_weight=0.5)
    study = Study("two", images=list(mlo))
    got = model.mg_suspicion(study)
    for lab, other in (("MG_L_MLO", "MG_R_MLO"), ("MG_R_MLO", "MG_L_MLO")):
        assert got[lab] == pytest.approx(alone[lab] - 0.5 * (alone[other] + 0.4), rel=1e-5)
    best = max(got, key=got.get)
    assert best == "MG_R_MLO"  # with these weights: not the film slot order would read
    pred = model.predict(study, saliency="none")
    assert list(pred.images) == [best]
    assert any(n.startswith("mammograms ranked by finding score compared with the other breast: " + best)
               for n in pred.notes)
    # the finding probability is the read film's score against the other breast
    assert pred.finding_probability == pytest.approx(1 / (1 + np.exp(-got[best])), rel=1e-4)
    # mg_select "order" (the default) reads the first film in slot order, unranked
    model.config = dataclasses.replace(model.config, mg_select="order")
    pred = model.predict(study, saliency="none")
    assert list(pred.images) == ["MG_L_MLO"] and not any("ranked" in n for n in pred.notes)
    with pytest.raises(ValueError, match="mg_select must be one of"):
        dataclasses.replace(model.config, mg_select="best")


def test_auto_passes_over_a_bundle_whose_weights_do_not_load(diagnosis_bundle, tmp_path, monkeypatch, studies,
                                                           caplog):
    """A damaged copy first on the search path (weights changed since their SHA-256 was
    written) is passed over with a warning; the next bundle that fits reads the study."""
    models = tmp_path / "models"
    models.mkdir()
    _us_only_bundle(diagnosis_bundle, models)
    broken = models / "test-us-broken"
    shutil.copytree(models / "test-us-real", broken)
    meta = json.loads((broken / "configs" / "metadata.json").read_text())
    meta["name"] = "test-us-broken"
    (broken / "configs" / "metadata.json").write_text(json.dumps(meta))
    with open(broken / "models" / "model.pt", "ab") as f:
        f.write(b"changed")
    monkeypatch.setenv("BINDS_MODEL_PATH", str(models))
    real = write_study_folder(dataclasses.replace(_real(studies["us"]), study_id="real-us"), tmp_path / "real")
    with caplog.at_level("WARNING"):
        assert main(["diagnose", str(real), "--out", str(tmp_path / "out"), "--device", "cpu", "--no-summary"]) == 0
    assert "ignoring bundle test-us-broken for --model auto:" in caplog.text
    assert "weights do not match the SHA-256" in caplog.text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["model"]["name"] == "test-us-real"
