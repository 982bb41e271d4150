"""A ``binds risk`` output folder in the scene: the per-exam table and the trajectory plot.

``report.json`` (schema ``binds.risk_report``, BINDSLib/risk/report.py) holds, per exam in date
order, the cumulative risks for years 1..5 and per breast, and the thresholds (5-year risk at
which supplemental MRI is suggested: 1.7%, NCCN 2026). This module adds:

* a table node with one row per exam (date, risks in percent, views, warnings);
* a plot chart of the 5-year risk against the exam date (decimal year) with the threshold as a
  dashed red line, and the per-breast risks when present; its data are two numeric table nodes.

Pure MRML: runs headless on slicer-core (Testing/test_scene_risk.py).
"""

import datetime
import json
import os

import slicer
import vtk

from . import scene as sc

OUTPUT_ATTRIBUTE = "BINDS.RiskOutput"  # "exams", "trajectory", "threshold", "chart", "series"
REPORT_JSON_ATTRIBUTE = "BINDS.ReportJSON"

RISK_COLOR = (0.12, 0.31, 0.61)
THRESHOLD_COLOR = (0.8, 0.0, 0.0)
BREAST_COLORS = {"L": (0.42, 0.66, 0.31), "R": (0.9, 0.57, 0.22)}


def readRiskReport(outputFolder):
    from .results import readReportFile

    report = readReportFile(outputFolder, "binds.risk_report", "risk report")
    path = os.path.join(outputFolder, "report.json")
    try:  # what the tables and the chart read, checked before any node is added
        for exam in report.get("exams") or []:
            if exam.get("exam_date"):
                decimalYear(exam["exam_date"])
        threshold(report)
        horizonYears(report)
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: a value of the risk report cannot be read ({e})") from None
    return report


def decimalYear(isoDate):
    """``2019-07-02`` -> 2019.5 (the date as a fraction of its year), for the plot's x axis."""
    date = datetime.date.fromisoformat(isoDate)
    start = datetime.date(date.year, 1, 1)
    days = (datetime.date(date.year + 1, 1, 1) - start).days
    return date.year + (date - start).days / days


def _risk(values, year):
    if values is None:
        return None
    value = values.get(str(year))
    return None if value is None else float(value)


def horizonYears(report):
    return int(report.get("horizon_years") or max(report.get("years") or [5]))


def threshold(report):
    return float(report.get("thresholds", {}).get("supplemental_mri_5y", 0.017))


def examRows(report):
    """Rows of the per-exam table: date, exam (text), risks 1..T years (%), per breast at the
    horizon (%; None without that breast) as numbers to 2 decimals (the table sorts them as
    numbers: :func:`examNumericColumns`), views, warnings (text)."""
    years = report.get("years") or list(range(1, horizonYears(report) + 1))
    horizon = horizonYears(report)
    rows = []
    for exam in report.get("exams", []):
        row = [exam.get("exam_date") or "", exam.get("exam_id", "")]
        row += [round(100 * _risk(exam["cumulative_risk"], y), 2) for y in years]
        for side in ("L", "R"):
            value = _risk((exam.get("breast_risk") or {}).get(side), horizon)
            row.append(None if value is None else round(100 * value, 2))
        row.append(" ".join(exam.get("views_present", [])))
        row.append(" | ".join(exam.get("warnings", [])))
        rows.append(tuple(row))
    return rows


def examColumns(report):
    return ["Exam date", "Exam"] + examNumericColumns(report) + ["Views", "Warnings"]


def examNumericColumns(report):
    """The per-exam table's risk columns (numbers, NaN for a breast without views)."""
    years = report.get("years") or list(range(1, horizonYears(report) + 1))
    horizon = horizonYears(report)
    return [f"{y}-year risk (%)" for y in years] + [f"Left {horizon}-year (%)", f"Right {horizon}-year (%)"]


def _setNumericColumns(tableNode, columns):
    """Fill a table node with double columns: ``[(name, values), ...]`` (None -> NaN)."""
    table = tableNode.GetTable()
    table.Initialize()
    for name, values in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(name)
        for value in values:
            array.InsertNextValue(float("nan") if value is None else float(value))
        table.AddColumn(array)
    tableNode.Modified()


def _addSeries(scene, chart, table, name, xColumn, yColumn, color, dashed=False, markers=True):
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName(xColumn)
    series.SetYColumnName(yColumn)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash if dashed
                        else slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle if markers
                          else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetColor(*color)
    series.SetAttribute(OUTPUT_ATTRIBUTE, "series")
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return series


class RiskResults:
    def __init__(self, report):
        self.report = report
        self.examTable = None
        self.trajectoryTable = None
        self.thresholdTable = None
        self.chart = None
        self.series = {}
        self.folderItem = 0

    @property
    def flags(self):
        return [flag.get("message", "") for flag in self.report.get("flags", [])]


#: the name of a risk run's nodes; the woman's (pseudonymous) ID is added to it
DEFAULT_NAME = "BINDS risk"


def _unusedName(scene, name):
    """``name``, or ``name (2)``, ``name (3)``... when an earlier run in the scene has it: a second
    run for a woman (an exam added, another model) is told apart from the first, which stays."""
    candidate, k = name, 2
    while scene.GetFirstNodeByName(f"{candidate} trajectory chart") is not None:
        candidate, k = f"{name} ({k})", k + 1
    return candidate


def loadRiskResults(scene, outputFolder, name=DEFAULT_NAME, parentItem=None):
    """Load a ``binds risk`` output folder as table and plot nodes under a subject hierarchy
    folder (under ``parentItem`` when given). Returns the :class:`RiskResults`."""
    from .results import setTableRows

    report = readRiskReport(outputFolder)
    exams = report.get("exams", [])
    if not exams:
        raise ValueError(f"{outputFolder}: the risk report has no exams")
    undated = [e.get("exam_id", "") for e in exams if not e.get("exam_date")]
    if undated and len(exams) > 1:  # before any node is added: all or nothing
        raise ValueError(f"{outputFolder}: exam(s) without a date cannot be plotted: {', '.join(undated)}")
    horizon = horizonYears(report)
    results = RiskResults(report)
    if name == DEFAULT_NAME and report.get("woman_id"):  # two women in one scene are told apart
        name = f"{name} {report['woman_id']}"
    name = _unusedName(scene, name)
    results.folderItem = sc.createFolder(scene, parentItem, name)

    examTable = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} exams")
    setTableRows(examTable, examRows(report), examColumns(report), numeric=examNumericColumns(report))
    examTable.SetUseColumnTitleAsColumnHeader(True)
    examTable.SetAttribute(OUTPUT_ATTRIBUTE, "exams")
    examTable.SetAttribute(REPORT_JSON_ATTRIBUTE, json.dumps(report, sort_keys=True))
    examTable.SetLocked(True)
    results.examTable = examTable

    # one undated exam (binds risk scores it alone): plotted today, as binds risk's trajectory.png
    x = [decimalYear(e.get("exam_date") or datetime.date.today().isoformat()) for e in exams]
    riskColumn = f"{horizon}-year risk (%)"
    columns = [("Exam date (year)", x), (riskColumn, [100 * _risk(e["cumulative_risk"], horizon) for e in exams])]
    breastColumns = {}
    for side, word in (("L", "Left"), ("R", "Right")):
        values = [_risk((e.get("breast_risk") or {}).get(side), horizon) for e in exams]
        if any(v is not None for v in values):
            breastColumns[side] = f"{word} breast {horizon}-year risk (%)"
            columns.append((breastColumns[side], [None if v is None else 100 * v for v in values]))
    trajectory = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} trajectory")
    _setNumericColumns(trajectory, columns)
    trajectory.SetAttribute(OUTPUT_ATTRIBUTE, "trajectory")
    results.trajectoryTable = trajectory

    line = 100 * threshold(report)
    margin = 0.25
    thresholdTable = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} threshold line")
    _setNumericColumns(thresholdTable, [("Exam date (year)", [min(x) - margin, max(x) + margin]),
                                        ("Threshold (%)", [line, line])])
    thresholdTable.SetAttribute(OUTPUT_ATTRIBUTE, "threshold")
    results.thresholdTable = thresholdTable

    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} trajectory chart")
    chart.SetTitle(f"{horizon}-year breast cancer risk (research use only)")
    chart.SetXAxisTitle("Exam date (year)")
    chart.SetYAxisTitle(f"{horizon}-year cumulative risk (%)")
    chart.SetLegendVisibility(True)
    chart.SetYAxisRangeAuto(False)
    # every series on the chart: a breast's risk may exceed the exam's (an uncalibrated breast head)
    top = max([1.5 * line] + [1.15 * v for _, values in columns[1:] for v in values if v is not None])
    chart.SetYAxisRange(0.0, top)
    chart.SetAttribute(OUTPUT_ATTRIBUTE, "chart")
    results.chart = chart
    results.series["risk"] = _addSeries(scene, chart, trajectory, f"{horizon}-year risk", "Exam date (year)",
                                        riskColumn, RISK_COLOR)
    results.series["threshold"] = _addSeries(
        scene, chart, thresholdTable, f"{line:g}% (consider supplemental MRI)", "Exam date (year)",
        "Threshold (%)", THRESHOLD_COLOR, dashed=True, markers=False)
    for side, column in breastColumns.items():
        results.series[side] = _addSeries(scene, chart, trajectory, column.replace(" (%)", ""),
                                          "Exam date (year)", column, BREAST_COLORS[side], dashed=True)

    for node in (examTable, trajectory, thresholdTable, chart, *results.series.values()):
        sc.placeUnder(scene, node, results.folderItem)
    return results


def showRiskResults(scene, results):
    """Layout with a plot and a table view, showing the trajectory chart and the exam table."""
    sc.setLayout(scene, slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
    sc.showPlotChart(scene, results.chart)
    sc.showTable(scene, results.examTable)


def patientChoices(database, patients):
    """One label per patient of Slicer's DICOM database, for a list to pick from: her name and
    number of studies, and her database key where names repeat (anonymised exams are often all
    "Anonymous"), so that every label picks one patient."""
    labels = [f"{database.nameForPatient(p) or p} ({len(database.studiesForPatient(p))} studies)" for p in patients]
    return [f"{label} [{p}]" if labels.count(label) > 1 else label for label, p in zip(labels, patients)]


def examFoldersFromDicomDatabase(database, patientUID, folder, modality="MG"):
    """One folder per study of a patient in Slicer's DICOM database, holding (links to) the files
    of its ``modality`` series; ``binds risk`` reads each folder as one exam.

    Returns the folders in the database's study order. Files are linked when the platform
    allows it, else copied.
    """
    import shutil

    os.makedirs(folder, exist_ok=True)
    exams = []
    for n, studyUID in enumerate(database.studiesForPatient(patientUID)):
        files = []
        for seriesUID in database.seriesForStudy(studyUID):
            seriesFiles = list(database.filesForSeries(seriesUID))
            if not seriesFiles:
                continue
            if modality and database.fileValue(seriesFiles[0], "0008,0060").strip().upper() != modality:
                continue
            files += seriesFiles
        if not files:
            continue
        examDir = os.path.join(folder, f"exam-{n:03d}")
        os.makedirs(examDir, exist_ok=True)
        for i, path in enumerate(files):
            target = os.path.join(examDir, f"{i:05d}.dcm")
            try:
                os.symlink(path, target)
            except (OSError, NotImplementedError):
                shutil.copy2(path, target)
        exams.append(examDir)
    return exams
