"""``binds risk``: per-exam table, trajectory, flags, report.json / CSV / PNG, identifiers."""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest

from BINDSLib.cli import main
from BINDSLib.errors import InputError
from BINDSLib.risk.calibration import Calibrator
from BINDSLib.risk.report import plot_trajectory, write_png
from BINDSLib.study import ExamHistory
from BINDSLib.studyfolder import read_history, write_history, write_study_folder
from test_risk_support import make_exam, tiny_bundle


@pytest.fixture(scope="module")
def exams(tmp_path_factory):
    root = tmp_path_factory.mktemp("exams")
    paths = []
    for i, year in enumerate([2019, 2020, 2021]):
        drop = [("R", "MLO")] if i == 2 else ()
        paths.append(write_study_folder(make_exam(i, dt.date(year, 3, 1), drop=drop,
                                                  study_id=f"ACC-{i}", patient_id="Jane Doe"),
                                        root / f"e{i}", keep_identifiers=True))
    return paths


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("b") / "risk-tiny")


def test_risk_writes_report_csv_and_plot(exams, bundle, tmp_path, capsys):
    out = tmp_path / "out"
    # given out of date order: the table is sorted by date
    rc = main(["risk", str(exams[2]), str(exams[0]), str(exams[1]), "--model", str(bundle), "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[1].startswith("2019-03-01") and "trajectory over 3 exam(s)" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "binds.risk_report" and report["schema_version"] == 1
    assert [e["exam_date"] for e in report["exams"]] == ["2019-03-01", "2020-03-01", "2021-03-01"]
    assert report["thresholds"]["supplemental_mri_5y"] == 0.017
    five = [e["cumulative_risk"]["5"] for e in report["exams"]]
    assert report["trajectory"]["last_risk"] == pytest.approx(five[-1], abs=1e-6)
    assert report["trajectory"]["change_from_first"] == pytest.approx(five[-1] - five[0], abs=1e-5)
    assert any("R-MLO" in w for w in report["warnings"])
    assert report["exams"][2]["breast_risk"]["R"] is not None  # R-CC still there
    rows = list(csv.DictReader((out / "risk.csv").open()))
    assert len(rows) == 3 and float(rows[0]["risk_5y"]) == pytest.approx(five[0], abs=1e-6)
    # no identifiers by default
    text = (out / "report.json").read_text() + (out / "risk.csv").read_text()
    assert "Jane" not in text and "ACC-" not in text and report["woman_id"].startswith("anon-")
    import SimpleITK as sitk

    png = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "trajectory.png")))
    assert png.ndim == 3 and png.shape[2] in (3, 4) and png.dtype == np.uint8
    # refuses to overwrite
    assert main(["risk", str(exams[0]), "--model", str(bundle), "--out", str(out)]) == 5


def test_keep_identifiers_and_history_folder(exams, bundle, tmp_path):
    from BINDSLib.studyfolder import read_study_folder

    hist = ExamHistory("W-42", [read_study_folder(p) for p in exams], followup_end=dt.date(2022, 3, 1))
    hpath = write_history(hist, tmp_path / "woman")
    out = tmp_path / "out"
    assert main(["risk", str(hpath), "--model", str(bundle), "--out", str(out), "--keep-identifiers"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["exams"]) == 3 and {e["exam_id"] for e in report["exams"]} == {"ACC-0", "ACC-1", "ACC-2"}
    # history.json and an exam's study.json disagreeing on its date: refused, naming both dates
    doc = json.loads((hpath / "history.json").read_text())
    doc["exams"][1]["study_date"] = "2020-04-01"
    (hpath / "history.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"history.json: invalid history file: .* is dated 2020-04-01 here but "
                                         r"2020-03-01 in its study.json"):
        read_history(hpath)


def test_flags_for_high_and_rising_risk(exams, tmp_path, capsys):
    # calibration pushes every risk above 1.7 %: the MRI flag must appear
    high = Calibrator("platt", [{"year": y, "a": 1.0, "b": 4.0} for y in range(1, 6)])
    b = tiny_bundle(tmp_path / "high", calibration=high)
    out = tmp_path / "out"
    assert main(["risk", *map(str, exams), "--model", str(b), "--out", str(out),
                 "--rise-threshold", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    rising = report["trajectory"]["change_last_years"] > 0  # any rise reaches a threshold of 0
    assert [f["code"] for f in report["flags"]] == ["consider_supplemental_mri"] + ["rising_risk"] * rising
    assert report["thresholds"]["rise_2y"] == 0
    text = capsys.readouterr().out
    assert "consider supplemental MRI (NCCN 2026)" in text
    assert f"latest 5-year risk {100 * report['trajectory']['last_risk']:.2f}%, threshold 1.70%" in text
    from BINDSLib.risk.report import percent_texts

    assert percent_texts(0.016996, 0.017) == ("1.6996%", "1.7000%")
    assert percent_texts(0.02, 0.017) == ("2.00%", "1.70%") and percent_texts(0.017, 0.017) == ("1.70%", "1.70%")


def test_an_output_that_is_or_holds_an_input_is_refused_and_the_input_kept(bundle, tmp_path):
    exam = write_study_folder(make_exam(5, dt.date(2020, 1, 1)), tmp_path / "exams" / "exam")
    before = sorted(p.relative_to(exam) for p in exam.rglob("*"))
    for out in (exam, exam.parent):  # the exam itself, the folder holding it
        assert main(["risk", str(exam), "--model", str(bundle), "--out", str(out), "--overwrite"]) == 5
        assert sorted(p.relative_to(exam) for p in exam.rglob("*")) == before
    assert main(["risk", str(exam), "--model", str(bundle), "--out", str(exam / "risk")]) == 0  # inside: fine


def test_exams_given_twice_or_without_a_standard_view_are_refused_naming_the_folder(exams, bundle, tmp_path, capsys):
    from BINDSLib.study import Image, Modality, Role, Study

    out = str(tmp_path / "o")
    assert main(["risk", str(exams[0]), str(exams[1]), str(exams[0]), "--model", str(bundle), "--out", out]) == 3
    assert f"is also given as {exams[0]}" in capsys.readouterr().err
    hist = write_history(ExamHistory("W-1", [make_exam(i, dt.date(2018 + i, 1, 1), study_id=f"h{i}")
                                             for i in range(2)]), tmp_path / "woman")
    copy = write_study_folder(make_exam(1, dt.date(2019, 1, 1), study_id="h1"), tmp_path / "h1-copy")
    from BINDSLib.study import pseudonym

    # the exam named as in the outputs: a pseudonym, unless --keep-identifiers
    assert main(["risk", str(hist), str(copy), "--model", str(bundle), "--out", out]) == 3
    err = capsys.readouterr().err
    assert f"exam {pseudonym('h1')} of 2019-01-01 is also given as" in err and "exam h1 " not in err
    assert main(["risk", str(hist), str(copy), "--model", str(bundle), "--out", out, "--keep-identifiers"]) == 3
    assert "exam h1 of 2019-01-01 is also given as" in capsys.readouterr().err
    im = make_exam(3).images[0]  # a mammogram without a view
    folder = write_study_folder(Study("noview", [Image(im.voxels, im.geometry, Role(Modality.MG, laterality="L"))],
                                      study_date=dt.date(2020, 1, 1)), tmp_path / "noview")
    assert main(["risk", str(folder), "--model", str(bundle), "--out", out]) == 3
    assert f"{folder}: the exam has no standard mammography view" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", [["--threshold", "1.7"], ["--threshold", "nan"], ["--rise-threshold", "-1"],
                                    ["--window-years", "0"], ["--window-years", "inf"], ["--window-years", "1e308"],
                                    ["--device", "gpu0"]])
def test_out_of_range_options_are_usage_errors(exams, bundle, tmp_path, option, capsys):
    with pytest.raises(SystemExit) as e:
        main(["risk", str(exams[0]), "--model", str(bundle), "--out", str(tmp_path / "o"), *option])
    assert e.value.code == 2 and option[0] in capsys.readouterr().err


def test_undated_exams_are_refused(bundle, tmp_path, capsys):
    a = write_study_folder(make_exam(1, None, study_id="ACC-SECRET-1"), tmp_path / "a")
    c = write_study_folder(make_exam(2, None, study_id="ACC-SECRET-2"), tmp_path / "c")
    assert main(["risk", str(a), str(c), "--model", str(bundle), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert f"2 exam(s) without a date, in {a}, {c}" in err and "SECRET" not in err  # the folders, not the IDs


@pytest.mark.parametrize("backend", ["numpy", "matplotlib"])
def test_plot_backends_draw_the_threshold_line(backend, tmp_path):
    if backend == "matplotlib":
        pytest.importorskip("matplotlib")
    dates = [dt.date(2019, 1, 1), dt.date(2020, 1, 1), dt.date(2021, 1, 1)]
    img = plot_trajectory(dates, [0.01, 0.012, 0.02], 0.017, {"L": [0.01, 0.011, 0.012], "R": [None] * 3},
                          size_px=(300, 400), backend=backend)
    assert img.shape == (300, 400, 3) and img.dtype == np.uint8
    red = (img[..., 0] > 180) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.sum() > 50  # the dashed threshold line
    write_png(tmp_path / "p.png", img)
    assert (tmp_path / "p.png").stat().st_size > 100


def test_dicom_exams_score_like_their_study_folders(bundle, tmp_path):
    """binds phantom writes each exam as a study folder and as DICOM: both must give one risk."""
    pytest.importorskip("BINDSLib.io.dicom")
    from BINDSLib.risk.inference import RiskModel
    from BINDSLib.risk.preprocess import load_exam
    from BINDSLib.synthetic import write_phantoms

    try:
        write_phantoms(tmp_path, 1, seed=3, longitudinal=True, dicom=True, n_exams=1)
    except Exception as e:  # noqa: BLE001 - DICOM writing is another module's
        pytest.skip(f"DICOM phantoms unavailable: {e}")
    (folder,) = sorted((tmp_path / "woman-0000").glob("*_*"))
    (dicom,) = sorted((tmp_path / "woman-0000-dicom").glob("*_*"))
    model = RiskModel.from_bundle(bundle, device="cpu")
    a = model.score_exam(load_exam(folder))
    b = model.score_exam(load_exam(dicom))
    assert b.views_present == a.views_present and b.exam_date == a.exam_date
    assert np.allclose(a.cumulative_risk, b.cumulative_risk, atol=1e-4)


def test_a_folder_of_women_is_refused_pointing_to_one_woman_and_to_cohort(bundle, tmp_path, capsys):
    """binds phantom --longitudinal's folder holds many women; risk scores one."""
    women = tmp_path / "women"
    for w in range(2):
        write_history(ExamHistory(f"W-{w}", [make_exam(2 * w + i, dt.date(2018 + i, 1, 1), study_id=f"w{w}e{i}")
                                             for i in range(2)]), women / f"woman-{w}")
    (women / "manifest.csv").write_text("woman,study_folder,exam_date\n")
    assert main(["risk", str(women), "--model", str(bundle), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert "holds the exam histories of 2 women (woman-0, woman-1)" in err
    assert f"give her folder (e.g. {women / 'woman-0'})" in err and f"binds cohort {women / 'manifest.csv'}" in err
    assert not (tmp_path / "o").exists()
    assert main(["risk", str(women / "woman-1"), "--model", str(bundle), "--out", str(tmp_path / "o")]) == 0
    # a folder holding one woman's history is hers; beside study folders it is named
    (tmp_path / "one").mkdir()
    (women / "woman-0").rename(tmp_path / "one" / "woman-0")
    assert main(["risk", str(tmp_path / "one"), "--model", str(bundle), "--out", str(tmp_path / "o1")]) == 0
    assert json.loads((tmp_path / "o1" / "report.json").read_text())["trajectory"]["n_exams"] == 2
    write_study_folder(make_exam(9, dt.date(2021, 1, 1)), tmp_path / "one" / "other")
    assert main(["risk", str(tmp_path / "one"), "--model", str(bundle), "--out", str(tmp_path / "o2")]) == 3
    assert "holds the exam histories of 1 woman (woman-0) and 1 study folder(s)" in capsys.readouterr().err


def test_the_flag_is_on_the_5_year_risk_whatever_the_bundle_horizon(exams, tmp_path, capsys):
    """A bundle predicting 10 years is flagged, tabled and plotted on its 5-year risk; one that
    stops before 5 years is refused, naming the bundle."""
    import dataclasses

    import torch

    from BINDSLib.risk.config import PRESETS
    from BINDSLib.risk.inference import save_risk_bundle
    from BINDSLib.risk.network import RiskNetwork

    def bundle_for(years):
        torch.manual_seed(0)
        net = RiskNetwork(dataclasses.replace(PRESETS["tiny"], max_followup=years))
        return save_risk_bundle(tmp_path / f"b{years}", net, Calibrator("none"), name=f"risk-{years}y")

    ten = bundle_for(10)
    out = tmp_path / "ten"
    assert main(["risk", *map(str, exams), "--model", str(ten), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["horizon_years"] == 5 and report["years"] == list(range(1, 11))
    five = [e["cumulative_risk"]["5"] for e in report["exams"]]
    assert five[-1] < report["exams"][-1]["cumulative_risk"]["10"]  # (so the two are told apart)
    assert report["trajectory"]["last_risk"] == pytest.approx(five[-1], abs=1e-6)
    # the flag at a threshold between the 5- and the 10-year risk: not raised
    threshold = (five[-1] + report["exams"][-1]["cumulative_risk"]["10"]) / 2
    assert main(["risk", *map(str, exams), "--model", str(ten), "--out", str(tmp_path / "t"),
                 "--threshold", f"{threshold:.6f}", "--rise-threshold", "1"]) == 0
    assert json.loads((tmp_path / "t" / "report.json").read_text())["flags"] == []
    table = capsys.readouterr().out
    assert "L 5y%" in table and "5-year risk trajectory" in table
    left = table.splitlines()[1].split()[11]  # date, 10 years, then the left breast's column
    assert float(left) == pytest.approx(100 * report["exams"][0]["breast_risk"]["L"]["5"], abs=0.006)
    assert main(["risk", str(exams[0]), "--model", str(bundle_for(3)), "--out", str(tmp_path / "three")]) == 4
    err = capsys.readouterr().err
    assert "predicts the risk for years 1-3 only; binds risk needs the 5-year risk" in err and "b3" in err
    assert not (tmp_path / "three").exists()


def test_exams_of_one_date_give_one_result_in_any_order_with_a_warning(bundle, tmp_path, capsys):
    first = write_study_folder(make_exam(0, dt.date(2019, 3, 1), study_id="A"), tmp_path / "e0")
    same = [write_study_folder(make_exam(k, dt.date(2021, 3, 1), study_id=f"S{k}"), tmp_path / f"s{k}")
            for k in (1, 2)]
    reports = []
    for n, order in enumerate(([first, *same], [same[1], first, same[0]])):
        assert main(["risk", *map(str, order), "--model", str(bundle), "--out", str(tmp_path / f"o{n}")]) == 0
        reports.append(json.loads((tmp_path / f"o{n}" / "report.json").read_text()))
    assert reports[0]["exams"] == reports[1]["exams"] and reports[0]["trajectory"] == reports[1]["trajectory"]
    assert any("share the date 2021-03-01: the trajectory takes the highest risk" in w for w in reports[0]["warnings"])
    last_day = [e["cumulative_risk"]["5"] for e in reports[0]["exams"][1:]]
    assert reports[0]["trajectory"]["last_risk"] == pytest.approx(max(last_day), abs=1e-6)


def test_hostile_history_manifest_and_risk_bundle_metadata(exams, bundle, tmp_path, capsys):
    """Hand-made inputs a risk run reads: each a clear error naming the file, never exit 1."""
    from BINDSLib.errors import ModelError
    from BINDSLib.risk.cohort import read_manifest
    from BINDSLib.risk.inference import RiskModel

    from BINDSLib.studyfolder import read_study_folder

    hpath = write_history(ExamHistory("W-42", [read_study_folder(p) for p in exams[:1]]), tmp_path / "woman")
    doc = json.loads((hpath / "history.json").read_text())
    for bad in (123, None):
        doc["woman_id"] = bad
        (hpath / "history.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match="'woman_id' must be non-empty text"):
            read_history(hpath)
    doc["woman_id"] = "W-42"
    for key, bad, message in (("schema", "binds.study", "not a BINDS exam history"),
                              ("exams", [{"study_folder": "../elsewhere"}], "study_folder '../elsewhere' must be "
                                                                           "relative and inside the history folder")):
        (hpath / "history.json").write_text(json.dumps({**doc, key: bad}))
        with pytest.raises(InputError, match=message):
            read_history(hpath)
    # a manifest with a stray quote: one cell swallows the rest of the file
    manifest = tmp_path / "m.csv"
    manifest.write_text("exam_id,path\na,x\n" + 'b,"y\n' + "".join(f"c{i},z{i}\n" for i in range(20000)))
    with pytest.raises(InputError, match=r"m.csv: line \d+: .*unclosed quote"):
        read_manifest(manifest)
    # risk bundle metadata a hand edit broke: refused when loaded (exit 4), not a wrong flag
    import shutil

    edits = {"negative threshold": lambda b: b.update(thresholds={"supplemental_mri_5y": -1}),
             "threshold as text": lambda b: b.update(thresholds={"supplemental_mri_5y": "abc"}),
             "two calibrated years": lambda b: b.update(calibration={"method": "platt", "years": [{"a": 1, "b": 0}] * 2}),
             "coefficient as text": lambda b: b.update(calibration={"method": "platt",
                                                                    "years": [{"a": "x", "b": 0}] * 5})}
    for n, (name, edit) in enumerate(edits.items()):
        copy = tmp_path / f"bundle{n}"
        shutil.copytree(bundle, copy)
        meta = json.loads((copy / "configs" / "metadata.json").read_text())
        edit(meta["binds"])
        (copy / "configs" / "metadata.json").write_text(json.dumps(meta))
        with pytest.raises(ModelError, match="invalid risk bundle metadata"):
            RiskModel.from_bundle(copy, device="cpu")
        assert main(["risk", str(exams[0]), "--model", str(copy), "--out", str(tmp_path / f"out{n}")]) == 4, name
    assert "Traceback" not in capsys.readouterr().err


def test_exams_after_the_cancer_date_are_left_out_and_said_so(bundle, tmp_path, capsys):
    exams = [make_exam(i, dt.date(2016 + i, 1, 1), study_id=f"ex{i}") for i in range(4)]
    hist = write_history(ExamHistory("W-3", exams, cancer_date=dt.date(2017, 1, 1)), tmp_path / "MRN-123456")
    out = tmp_path / "out"
    assert main(["risk", str(hist), "--model", str(bundle), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["exams"]) == 2  # 2016 and the diagnosis day's exam; 2018 and 2019 left out
    assert any("2 exam(s) after the woman's cancer date left out: 2018-01-01, 2019-01-01" in w
               for w in report["warnings"])
    assert "MRN-123456" not in json.dumps(report)  # (a folder's name may be the woman's record number)
    capsys.readouterr()
    # only exams after it: refused
    late = write_history(ExamHistory("W-4", exams[2:], cancer_date=dt.date(2017, 1, 1)), tmp_path / "late")
    assert main(["risk", str(late), "--model", str(bundle), "--out", str(tmp_path / "o2")]) == 3
    assert "every exam given is after the woman's cancer date" in capsys.readouterr().err


def test_an_exam_with_nothing_to_read_is_named_by_its_pseudonym(bundle):
    from BINDSLib.risk.inference import RiskModel
    from BINDSLib.study import pseudonym

    exam = make_exam(0, dt.date(2020, 1, 1), study_id="1.2.840.99.7")
    for im in exam.images:
        im.voxels = np.zeros_like(im.voxels)  # every view constant: left out as missing
    model = RiskModel.from_bundle(bundle, device="cpu")
    with pytest.raises(InputError, match=f"exam {pseudonym('1.2.840.99.7')} has no readable standard") as e:
        model.score_exams([exam])
    assert "1.2.840.99.7" not in str(e.value)
    with pytest.raises(InputError, match="exam 1.2.840.99.7 has no readable standard"):
        model.score_exams([exam], keep_identifiers=True)
    exam.study_id = "L"  # an ID that is also a word of the message: only the exam's name is replaced
    with pytest.raises(InputError, match=rf"exam {pseudonym('L')} has no readable standard mammography view "
                                         rf"\(MG_L_CC is constant; MG_L_MLO is constant; MG_R_CC"):
        model.score_exams([exam])


def test_exams_of_two_women_are_refused_unless_said_to_be_one_womans(bundle, tmp_path, capsys):
    """A trajectory mixing two women's exams is nobody's: refused, naming the women by pseudonym
    and their folders; --same-woman scores them as one woman's (an ID changed), with a warning.
    A history's exams are one woman's whatever their IDs, and a pseudonym is its ID."""
    from BINDSLib.study import pseudonym

    a = [write_study_folder(make_exam(i, dt.date(2019 + i, 3, 1), study_id=f"A{i}", patient_id="MRN-1"),
                            tmp_path / f"a{i}", keep_identifiers=True) for i in range(2)]
    b = write_study_folder(make_exam(5, dt.date(2022, 3, 1), study_id="B0", patient_id="MRN-2"),
                           tmp_path / "b0", keep_identifiers=True)
    anonymous = write_study_folder(make_exam(6, dt.date(2023, 3, 1), study_id="C0", patient_id=None), tmp_path / "c0")
    out = tmp_path / "out"
    assert main(["risk", *map(str, [*a, anonymous, b]), "--model", str(bundle), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert (f"the exams carry the patient IDs of 2 women ({pseudonym('MRN-1')} in {a[0]}, {a[1]}; "
            f"{pseudonym('MRN-2')} in {b})") in err and "--same-woman" in err
    assert "MRN-1" not in err and not out.exists()
    assert main(["risk", *map(str, [*a, b]), "--model", str(bundle), "--out", str(out), "--keep-identifiers"]) == 3
    assert "(MRN-1 in" in capsys.readouterr().err

    assert main(["risk", *map(str, [*a, b]), "--model", str(bundle), "--out", str(out), "--same-woman"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["exams"]) == 3
    assert "the exams carry the patient IDs of 2 women; scored as one woman's (--same-woman)" in report["warnings"]

    # one woman's exams, an exam without an ID among them: no warning
    assert main(["risk", *map(str, [*a, anonymous]), "--model", str(bundle), "--out", str(tmp_path / "o1")]) == 0
    assert not any("women" in w for w in json.loads((tmp_path / "o1" / "report.json").read_text())["warnings"])
    # a history under a pseudonymous woman_id whose exams carry another ID, beside an exam of
    # MRN-1 (the ID the pseudonym stands for): one woman
    exams = [make_exam(i, dt.date(2015 + i, 3, 1), study_id=f"H{i}", patient_id="old-record") for i in range(2)]
    hist = write_history(ExamHistory(pseudonym("MRN-1"), exams), tmp_path / "hist")
    assert main(["risk", str(hist), str(a[0]), "--model", str(bundle), "--out", str(tmp_path / "o2")]) == 0
    # and the same history beside the other woman's exam: refused
    assert main(["risk", str(hist), str(b), "--model", str(bundle), "--out", str(tmp_path / "o3")]) == 3
    assert "patient IDs of 2 women" in capsys.readouterr().err


def test_a_dicom_folder_of_a_womans_exams_is_read_as_her_exams(bundle, tmp_path, capsys):
    """binds phantom --longitudinal --dicom writes a woman's exams as one DICOM folder: binds risk
    reads its studies as her exams (as her study-folder history), while a cohort manifest row,
    which names one exam, still refuses a folder of several."""
    pytest.importorskip("BINDSLib.io.dicom")
    from BINDSLib.risk.preprocess import load_exam
    from BINDSLib.synthetic import write_phantoms

    write_phantoms(tmp_path / "w", 1, seed=3, longitudinal=True, dicom=True, n_exams=2)
    reports = []
    for name in ("woman-0000-dicom", "woman-0000"):
        out = tmp_path / f"out-{name}"
        assert main(["risk", str(tmp_path / "w" / name), "--model", str(bundle), "--out", str(out)]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    dicom, folders = ([(e["exam_date"], e["cumulative_risk"]["5"]) for e in r["exams"]] for r in reports)
    assert len(dicom) == 2 and [d for d, _ in dicom] == [d for d, _ in folders]
    assert np.allclose([r for _, r in dicom], [r for _, r in folders], atol=1e-4)
    with pytest.raises(InputError, match="holds 2 mammography exams; give one exam per folder"):
        load_exam(tmp_path / "w" / "woman-0000-dicom")
    # one exam that a site split into two studies (its CC views under another StudyInstanceUID)
    # would be scored as two half-exams: refused
    import pydicom

    folder = tmp_path / "w" / "woman-0000-dicom"
    split = sorted(p for p in folder.rglob("*") if p.is_file() and pydicom.dcmread(p).get("ViewPosition") == "CC")
    exam_dates = {pydicom.dcmread(p).StudyDate for p in split}
    first = [p for p in split if pydicom.dcmread(p).StudyDate == min(exam_dates)]
    assert len(first) == 2
    for p in first:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["split"])
        ds.save_as(p)
    capsys.readouterr()
    assert main(["risk", str(folder), "--model", str(bundle), "--out", str(tmp_path / "split")]) == 3
    assert "several of one date" in capsys.readouterr().err and not (tmp_path / "split").exists()


def test_blank_views_a_future_date_and_a_rise_near_its_threshold_are_said(bundle, exams, tmp_path, capsys):
    """From the risk audit: an exam whose four views are blank is refused naming its folder and
    why; an exam dated after today is a warning (it would be the latest, the one the MRI flag
    reads); the recent rise is printed beside its threshold with the decimals that tell them
    apart (+0.50 beside a threshold of +0.50, unflagged, read as a rise at the threshold)."""
    import dataclasses

    from BINDSLib.study import Study

    ex = make_exam(5, dt.date(2020, 1, 1), study_id="blank")
    blank = Study("blank", [dataclasses.replace(im, voxels=np.zeros_like(im.voxels)) for im in ex.images],
                  study_date=ex.study_date)
    folder = write_study_folder(blank, tmp_path / "blank")
    assert main(["risk", str(folder), "--model", str(bundle), "--out", str(tmp_path / "o1")]) == 3
    err = capsys.readouterr().err
    assert f"{folder}: the exam has no readable standard mammography view (" in err and "is constant" in err

    later = dt.date.today() + dt.timedelta(days=100)
    ahead = write_study_folder(make_exam(6, later, study_id="typo", patient_id="Jane Doe"), tmp_path / "ahead",
                               keep_identifiers=True)
    out = tmp_path / "o2"
    assert main(["risk", *map(str, exams), str(ahead), "--model", str(bundle), "--out", str(out)]) == 0
    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert any(w.startswith(f"1 exam(s) dated after today ({later} in {ahead})") for w in warnings)
    capsys.readouterr()
    # a date no screening exam can have (a mistyped year) is refused, naming it; nothing is written
    for n, day in enumerate((dt.date.today() + dt.timedelta(days=400), dt.date(1026, 5, 1), dt.date(9999, 12, 31))):
        bad = write_study_folder(make_exam(7, day, study_id=f"typo{n}", patient_id="Jane Doe"), tmp_path / f"bad{n}",
                                 keep_identifiers=True)
        assert main(["risk", *map(str, exams), str(bad), "--model", str(bundle), "--out", str(tmp_path / "o5")]) == 3
        assert f"exam date(s) no screening exam can have ({day} in {bad})" in capsys.readouterr().err
        assert not (tmp_path / "o5").exists()

    out = tmp_path / "o3"
    assert main(["risk", *map(str, exams), "--model", str(bundle), "--out", str(out)]) == 0
    change = json.loads((out / "report.json").read_text())["trajectory"]["change_last_years"]
    capsys.readouterr()
    near = change + 4e-7 if change >= 0 else change - 4e-7  # the same to 2 decimals of a point
    assert main(["risk", *map(str, exams), "--model", str(bundle), "--out", str(tmp_path / "o4"),
                 "--rise-threshold", f"{abs(near):.9f}"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("rise over the last 2 years"))
    shown, limit = line.split(" points, threshold +")
    assert float(shown.split()[-1]) != float(limit.split()[0])  # told apart
