"""A ``binds risk`` output folder in real MRML (slicer-core): the per-exam table, the trajectory
plot with the 1.7% line; exam folders from a DICOM database."""

import datetime
import json
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "BINDS"))

from BINDSLib.fsutil import json_dumps  # noqa: E402
from BINDSLib.risk.inference import ExamRisk  # noqa: E402
from BINDSLib.risk.report import build_report  # noqa: E402
from BINDSLib.risk.trajectory import risk_flags, trajectory_metrics  # noqa: E402
from BINDSSlicerLib import riskresults as rr  # noqa: E402
from BINDSSlicerLib import scene as sc  # noqa: E402
from BINDSSlicerLib.results import tableRows  # noqa: E402

DATES = [datetime.date(2019, 7, 2), datetime.date(2020, 7, 1), datetime.date(2021, 12, 31)]
RISKS = [(0.002, 0.004, 0.007, 0.010, 0.012), (0.003, 0.006, 0.010, 0.014, 0.016),
         (0.004, 0.008, 0.013, 0.018, 0.021)]


def write_risk_outputs(folder, breast=True):
    exams = [ExamRisk(f"anon-e{n}", date, risks,
                      {"L": tuple(r * 1.2 for r in risks), "R": tuple(r * 0.8 for r in risks) if n else None}
                      if breast else {"L": None, "R": None},
                      ("L-CC", "L-MLO", "R-CC", "R-MLO") if n else ("L-CC", "L-MLO"),
                      () if n else ("right breast views missing",))
             for n, (date, risks) in enumerate(zip(DATES, RISKS))]
    five = [e.risk(5) for e in exams]
    trajectory = trajectory_metrics(DATES, five)
    thresholds = {"supplemental_mri_5y": 0.017, "rise_2y": 0.005}
    report = build_report(exams, trajectory, risk_flags(trajectory, 0.017, 0.005),
                          {"name": "risk-test", "version": "1"}, thresholds, "anon-woman")
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json_dumps(report), encoding="utf-8")
    return json.loads((folder / "report.json").read_text())


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def column(table_node, name):
    array = table_node.GetTable().GetColumnByName(name)
    assert array is not None, name
    return [array.GetValue(i) for i in range(array.GetNumberOfTuples())]


def test_decimal_year():
    assert rr.decimalYear("2019-01-01") == 2019.0
    assert rr.decimalYear("2020-07-02") == pytest.approx(2020 + 183 / 366)
    assert rr.decimalYear("2021-12-31") == pytest.approx(2021 + 364 / 365)


def test_exam_table(scene, tmp_path):
    report = write_risk_outputs(tmp_path / "out")
    results = rr.loadRiskResults(scene, tmp_path / "out")
    rows = tableRows(results.examTable)
    table = results.examTable.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert names == ["Exam date", "Exam", "1-year risk (%)", "2-year risk (%)", "3-year risk (%)", "4-year risk (%)",
                     "5-year risk (%)", "Left 5-year (%)", "Right 5-year (%)", "Views", "Warnings"]
    assert rows[0][:2] == ("2019-07-02", "anon-e0") and rows[0][-2:] == ("L-CC L-MLO", "right breast views missing")
    assert rows[2][:2] == ("2021-12-31", "anon-e2")
    # the risks are numbers (sorted as numbers in the table view); a breast without views is NaN
    numbers = [[table.GetValue(r, c).ToDouble() for c in range(2, 9)] for r in range(3)]
    assert all(table.GetColumn(c).IsA("vtkDoubleArray") for c in range(2, 9))
    assert numbers[0][:6] == [0.2, 0.4, 0.7, 1.0, 1.2, 1.44] and np.isnan(numbers[0][6])
    assert numbers[2][:5] == [0.4, 0.8, 1.3, 1.8, 2.1] and numbers[2][6] == 1.68
    assert json.loads(results.examTable.GetAttribute(rr.REPORT_JSON_ATTRIBUTE)) == report
    assert results.flags and "consider supplemental MRI" in results.flags[0]


def test_trajectory_plot_with_the_threshold_line(scene, tmp_path):
    write_risk_outputs(tmp_path / "out")
    results = rr.loadRiskResults(scene, tmp_path / "out", name="Woman A")
    x = column(results.trajectoryTable, "Exam date (year)")
    assert x == pytest.approx([rr.decimalYear(d.isoformat()) for d in DATES])
    assert column(results.trajectoryTable, "5-year risk (%)") == pytest.approx([1.2, 1.6, 2.1])
    left = column(results.trajectoryTable, "Left breast 5-year risk (%)")
    assert left == pytest.approx([1.44, 1.92, 2.52])
    right = column(results.trajectoryTable, "Right breast 5-year risk (%)")
    assert np.isnan(right[0]) and right[1:] == pytest.approx([1.28, 1.68])
    # the threshold: a horizontal line at 1.7% spanning every exam
    tx = column(results.thresholdTable, "Exam date (year)")
    assert tx[0] < min(x) and tx[1] > max(x)
    assert column(results.thresholdTable, "Threshold (%)") == pytest.approx([1.7, 1.7])
    chart = results.chart
    assert chart.GetName() == "Woman A trajectory chart"
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [s.GetName() for s in series] == ["5-year risk", "1.7% (consider supplemental MRI)",
                                             "Left breast 5-year risk", "Right breast 5-year risk"]
    risk, line = series[0], series[1]
    assert risk.GetTableNode() is results.trajectoryTable and risk.GetYColumnName() == "5-year risk (%)"
    assert risk.GetXColumnName() == "Exam date (year)"
    assert line.GetTableNode() is results.thresholdTable
    assert line.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    assert line.GetColor() == pytest.approx(rr.THRESHOLD_COLOR) and risk.GetColor() == pytest.approx(rr.RISK_COLOR)
    assert chart.GetXAxisTitle() == "Exam date (year)" and "risk (%)" in chart.GetYAxisTitle()
    lo, hi = chart.GetYAxisRange()
    assert lo == 0 and hi >= 2.1
    # all under one folder of the subject hierarchy
    children = set(sc.itemChildrenNodes(scene, results.folderItem))
    assert {results.examTable, results.trajectoryTable, results.thresholdTable, chart, *series} == children


def test_show_uses_a_plot_and_table_layout(scene, tmp_path):
    write_risk_outputs(tmp_path / "out", breast=False)
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    selection = scene.AddNewNodeByClass("vtkMRMLSelectionNode")
    plot_view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    plot_view.SetLayoutName("PlotView1")
    results = rr.loadRiskResults(scene, tmp_path / "out")
    assert set(results.series) == {"risk", "threshold"}  # no per-breast risk, no per-breast series
    rr.showRiskResults(scene, results)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView
    assert selection.GetActivePlotChartID() == results.chart.GetID()
    assert selection.GetActiveTableID() == results.examTable.GetID()
    assert plot_view.GetPlotChartNodeID() == results.chart.GetID()


def test_not_a_risk_report(scene, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"schema": "binds.report"}))
    with pytest.raises(ValueError, match="not a BINDS risk report"):
        rr.loadRiskResults(scene, tmp_path)


class FakeDicomDatabase:
    def __init__(self, root):
        self.files = {}
        for study in ("st1", "st2", "st3"):
            for series, modality in (("mg", "MG"), ("sr", "SR")):
                paths = []
                for n in range(2):
                    p = root / f"{study}-{series}-{n}.dcm"
                    p.write_text(f"{study} {series} {n}")
                    paths.append(str(p))
                self.files[(study, series)] = (paths, modality if study != "st3" else "US")

    def studiesForPatient(self, patient):
        assert patient == "patient-1"
        return ["st1", "st2", "st3"]

    def seriesForStudy(self, study):
        return [f"{study}/mg", f"{study}/sr"]

    def filesForSeries(self, series):
        study, name = series.split("/")
        return self.files[(study, name)][0]

    def fileValue(self, path, tag):
        assert tag == "0008,0060"
        for paths, modality in self.files.values():
            if path in paths:
                return modality if "-mg-" in path else "SR"


def test_exam_folders_from_the_dicom_database(tmp_path):
    db = FakeDicomDatabase(tmp_path)
    exams = rr.examFoldersFromDicomDatabase(db, "patient-1", tmp_path / "exams")
    assert [Path(e).name for e in exams] == ["exam-000", "exam-001"]  # the US study has no MG series
    files = sorted(Path(exams[1]).iterdir())
    assert [f.read_text() for f in files] == ["st2 mg 0", "st2 mg 1"]


def test_patients_of_the_dicom_database_are_offered_with_labels_that_pick_one_each():
    class Database:
        names = {"p1": "Anonymous", "p2": "Anonymous", "p3": "Doe^Jane", "p4": ""}

        def nameForPatient(self, p):
            return self.names[p]

        def studiesForPatient(self, p):
            return ["s"] * (2 if p == "p2" else 1)

    labels = rr.patientChoices(Database(), ["p1", "p2", "p3", "p4"])
    assert labels == ["Anonymous (1 studies)", "Anonymous (2 studies)", "Doe^Jane (1 studies)", "p4 (1 studies)"]
    Database.studiesForPatient = lambda self, p: ["s"]  # the same name and count: the key tells them apart
    labels = rr.patientChoices(Database(), ["p1", "p2", "p3"])
    assert labels == ["Anonymous (1 studies) [p1]", "Anonymous (1 studies) [p2]", "Doe^Jane (1 studies)"]
    assert len(set(labels)) == 3


def test_a_run_without_inputs_is_refused_before_anything_is_installed_or_written(scene, tmp_path):
    from BINDSSlicerLib import runs

    run = runs.RiskRun(scene, [], str(tmp_path / "work"))
    with pytest.raises(ValueError, match="no exam"):
        run.checkInputs()
    with pytest.raises(ValueError, match="exam folder not found"):
        runs.RiskRun(scene, [str(tmp_path / "gone")], str(tmp_path / "work")).checkInputs()
    with pytest.raises(ValueError, match="no volume has a role"):
        runs.DiagnosisRun(scene, [], str(tmp_path / "work")).checkInputs()
    assert not (tmp_path / "work").exists()


def test_real_risk_run_end_to_end(scene, tmp_path):
    """The real ``python -m BINDSLib risk`` in the background (tiny bundle of test_risk_support) on
    three dated exams given out of order: the table and the plot follow the exam dates."""
    from BINDSLib.studyfolder import write_study_folder
    from BINDSSlicerLib import runs
    from test_risk_support import make_exam, tiny_bundle

    bundle = tiny_bundle(tmp_path / "risk-tiny")
    exams = [write_study_folder(make_exam(i, datetime.date(year, 3, 1), study_id=f"ACC-{i}"), tmp_path / f"e{i}")
             for i, year in enumerate([2019, 2020, 2021])]
    run = runs.RiskRun(scene, [exams[2], exams[0], exams[1]], str(tmp_path / "work"), model=str(bundle),
                       device="cpu", python=sys.executable)
    run.start().wait(timeout=120)
    assert run.error is None, run.errorDetails
    results = run.results
    assert [row[0] for row in tableRows(results.examTable)] == ["2019-03-01", "2020-03-01", "2021-03-01"]
    assert all(row[1].startswith("anon-") for row in tableRows(results.examTable))  # pseudonymised
    x = column(results.trajectoryTable, "Exam date (year)")
    assert x == sorted(x) and len(x) == 3
    five = column(results.trajectoryTable, "5-year risk (%)")
    expected = [100 * e["cumulative_risk"]["5"] for e in results.report["exams"]]
    assert five == pytest.approx(expected)
    assert column(results.thresholdTable, "Threshold (%)") == pytest.approx([1.7, 1.7])


def test_one_undated_exam_is_plotted_today_and_several_are_refused_before_any_node(scene, tmp_path):
    """binds risk scores a single exam without a date (an anonymised DICOM exam); its results
    load, plotted at today's date as trajectory.png does. Undated exams among several (which
    binds risk refuses) fail before any node is added."""
    report = write_risk_outputs(tmp_path / "one")
    report["exams"] = [dict(report["exams"][0], exam_date=None)]
    (tmp_path / "one" / "report.json").write_text(json.dumps(report))
    results = rr.loadRiskResults(scene, tmp_path / "one")
    today = rr.decimalYear(datetime.date.today().isoformat())
    assert column(results.trajectoryTable, "Exam date (year)") == [pytest.approx(today)]
    before = scene.GetNumberOfNodes()
    report = write_risk_outputs(tmp_path / "three")
    report["exams"][1]["exam_date"] = None
    (tmp_path / "three" / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="without a date cannot be plotted: anon-e1"):
        rr.loadRiskResults(scene, tmp_path / "three")
    assert scene.GetNumberOfNodes() == before


def test_the_default_name_carries_the_woman_so_two_women_are_told_apart(scene, tmp_path):
    write_risk_outputs(tmp_path / "out")
    results = rr.loadRiskResults(scene, tmp_path / "out")
    assert results.chart.GetName() == "BINDS risk anon-woman trajectory chart"
    assert results.examTable.GetName() == "BINDS risk anon-woman exams"


@pytest.mark.parametrize("edit", [lambda r: r["exams"][1].update(exam_date="2020-07-01T10:00:00"),
                                  lambda r: r["thresholds"].update(supplemental_mri_5y=None),
                                  lambda r: r.update(horizon_years="five")])
def test_a_hand_edited_report_that_cannot_be_read_adds_no_node(scene, tmp_path, edit):
    report = write_risk_outputs(tmp_path / "out")
    edit(report)
    (tmp_path / "out" / "report.json").write_text(json.dumps(report))
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="a value of the risk report cannot be read"):
        rr.loadRiskResults(scene, tmp_path / "out")
    assert scene.GetNumberOfNodes() == before


def test_the_chart_holds_a_breast_risk_above_the_exam_risk(scene, tmp_path):
    """A bundle whose breast head is not calibrated may put a breast above the exam: its series
    stays on the chart (the y range is fixed)."""
    report = write_risk_outputs(tmp_path / "out")
    report["exams"][1]["breast_risk"]["L"] = {"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.5, "5": 0.6}
    (tmp_path / "out" / "report.json").write_text(json.dumps(report))
    results = rr.loadRiskResults(scene, tmp_path / "out")
    assert results.chart.GetYAxisRange()[1] >= 60.0


def test_a_second_run_for_the_same_woman_is_told_apart_from_the_first(scene, tmp_path):
    write_risk_outputs(tmp_path / "out")
    first = rr.loadRiskResults(scene, tmp_path / "out", name="Woman A")
    second = rr.loadRiskResults(scene, tmp_path / "out", name="Woman A")
    third = rr.loadRiskResults(scene, tmp_path / "out", name="Woman A")
    names = [(r.examTable.GetName(), r.trajectoryTable.GetName(), r.thresholdTable.GetName(), r.chart.GetName())
             for r in (first, second, third)]
    assert names[0] == ("Woman A exams", "Woman A trajectory", "Woman A threshold line", "Woman A trajectory chart")
    assert names[1] == ("Woman A (2) exams", "Woman A (2) trajectory", "Woman A (2) threshold line",
                        "Woman A (2) trajectory chart")
    assert names[2][3] == "Woman A (3) trajectory chart"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert [sh.GetItemName(r.folderItem) for r in (first, second, third)] == ["Woman A", "Woman A (2)", "Woman A (3)"]
    # the first run's chart still plots its own tables
    assert first.series["risk"].GetTableNodeID() == first.trajectoryTable.GetID()
