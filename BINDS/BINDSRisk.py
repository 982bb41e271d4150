"""BINDS Risk module: 5-year breast cancer risk of one woman's serial screening mammograms.

The exams (DICOM folders, study folders, an exam-history folder, or a patient of Slicer's DICOM
database) are scored by ``binds risk`` in a background process; the per-exam table and the risk
trajectory (5-year risk against the exam date, with the 1.7% line) are shown in the layout.

Same structure as BINDS.py (Slicer's scripted-module template); the scene work is in
``BINDSSlicerLib.riskresults`` and ``BINDSSlicerLib.runs`` (tested headless on slicer-core).
Nothing heavy is imported at file scope.
"""

import logging
import os
import shutil
from typing import Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from BINDSSlicerLib import install, runs
from BINDSSlicerLib import riskresults as bindsRisk
from BINDSSlicerLib.paths import addBINDSLibToPythonPath, resourcePath

RISK_BUNDLE_KIND = "risk"
DEFAULT_RISK_MODEL = "binds-risk-demo"


#
# BINDSRisk
#


class BINDSRisk(ScriptedLoadableModule):
    """Module metadata. Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BINDS Risk")
        self.parent.categories = ["BINDS"]
        self.parent.dependencies = []
        self.parent.contributors = ["BINDS contributors (binds-project)"]
        self.parent.helpText = _(
            "Longitudinal 5-year breast cancer risk from a woman's serial 4-view screening mammograms: "
            "the risk of each exam, its trajectory, and whether supplemental MRI should be considered "
            "(5-year risk of 1.7% or more, NCCN 2026)."
            "<br><b>Research use only; not for clinical use.</b>"
            '<br>See the <a href="https://github.com/binds-project/SlicerBINDS/blob/main/docs/SLICER.md">BINDS '
            "tutorial</a>."
        )
        self.parent.acknowledgementText = _(
            "The longitudinal risk model follows the image-only approach described in Radiology (2026); "
            "BINDS is described in Nature Biomedical Engineering (2026). Please cite them when you use "
            "BINDS in a publication."
        )
        addBINDSLibToPythonPath()
        iconPath = resourcePath("Icons/BINDSRisk.png")
        if os.path.isfile(iconPath):
            self.parent.icon = qt.QIcon(iconPath)


#
# BINDSRiskParameterNode
#


@parameterNodeWrapper
class BINDSRiskParameterNode:
    """The parameters of the BINDS Risk module, saved with the scene.

    examFolders - the woman's exam folders, in any order (binds risk sorts them by date).
    modelBundle - risk model bundle name or folder.
    device - "auto", "cpu" or "cuda".
    exportFolder - last folder results were exported to.
    sameWoman - the exams are hers although they carry different patient IDs (binds risk
        --same-woman; without it such exams are refused).
    """

    examFolders: list[str]
    modelBundle: str = DEFAULT_RISK_MODEL
    device: str = "auto"
    exportFolder: str = ""
    sameWoman: bool = False


#
# BINDSRiskWidget
#


class BINDSRiskWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Module panel. Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.controller = None
        self.lastRun = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def resourcePath(self, filename: str) -> str:
        return resourcePath(filename)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from BINDSSlicerLib import widgets

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BINDSRisk.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BINDSRiskLogic()
        # (exams picked from the DICOM database while a run reads them would replace its inputs)
        self.controller = widgets.RunController(self.ui.progressBar, self.ui.statusLabel,
                                                [self.ui.applyButton, self.ui.addFromDicomButton],
                                                self.ui.cancelButton, self.onRunSucceeded, title="BINDS Risk")
        self.ui.addExamButton.clicked.connect(self.onAddExam)
        self.ui.addFromDicomButton.clicked.connect(self.onAddFromDicom)
        self.ui.removeExamButton.clicked.connect(self.onRemoveExams)
        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.addModelButton.clicked.connect(self.onAddModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.controller is not None:
            self.controller.shutdown()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        from BINDSSlicerLib import widgets

        qt.QTimer.singleShot(0, lambda: widgets.showGpuName(self.ui.deviceComboBox))

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateExamList)

    def onSceneStartClose(self, caller, event) -> None:
        if self.controller is not None:
            self.controller.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.lastRun = None  # Export would copy the closed scene's woman's results
        self.ui.resultLabel.text = ""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[BINDSRiskParameterNode]) -> None:
        from BINDSSlicerLib import widgets

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateExamList)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            # the exam list is also changed by the Sample Data loader: follow the parameter node
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateExamList)
            widgets.fillSettings((self.ui.modelComboBox, self.ui.deviceComboBox), RISK_BUNDLE_KIND,
                                 self._parameterNode)
        self.updateExamList()

    def updateExamList(self, caller=None, event=None) -> None:
        if caller is not None and self._parameterNode:  # the node changed: the lists follow it too
            from BINDSSlicerLib import widgets

            widgets.followSettings((self.ui.modelComboBox, self.ui.deviceComboBox), RISK_BUNDLE_KIND,
                                   self._parameterNode)
        self.ui.examsList.clear()
        if self._parameterNode:
            for folder in self._parameterNode.examFolders:
                self.ui.examsList.addItem(folder)

    # -- exams ----------------------------------------------------------------------------------

    def onAddExam(self) -> None:
        from BINDSSlicerLib import widgets

        folder = widgets.chooseFolder(self.parent, _("Exam folder (DICOM folder, study folder or exam history)"))
        if folder:
            self.logic.setExamFolders(list(self._parameterNode.examFolders) + [folder])

    def onAddFromDicom(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to read the DICOM database."), waitCursor=True):
            database = getattr(slicer, "dicomDatabase", None)
            if database is None or not database.isOpen:
                raise ValueError("the DICOM database is not open: import the mammograms in the DICOM module first")
            patients = list(database.patients())
            if not patients:
                raise ValueError("the DICOM database holds no patient")
            names = bindsRisk.patientChoices(database, patients)
            dialog = qt.QInputDialog(self.parent)
            dialog.setWindowTitle(_("BINDS Risk"))
            dialog.setLabelText(_("Patient whose mammography exams to add:"))
            dialog.setComboBoxItems(names)
            dialog.setComboBoxEditable(False)
            if dialog.exec_() != qt.QDialog.Accepted:
                return
            patient = patients[names.index(dialog.textValue())]
            exams = self.logic.examFoldersFromDicomDatabase(patient)
            if not exams:
                raise ValueError("this patient has no mammography (MG) study in the DICOM database")
            self.logic.setExamFolders(list(self._parameterNode.examFolders) + exams)

    def onRemoveExams(self) -> None:
        selected = {item.text() for item in self.ui.examsList.selectedItems()}
        if selected:
            self.logic.setExamFolders([f for f in self._parameterNode.examFolders if f not in selected])

    # -- settings -------------------------------------------------------------------------------

    def onModelChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.modelBundle = self.ui.modelComboBox.itemData(index) or ""

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def onAddModel(self) -> None:
        from BINDSSlicerLib import widgets

        folder = widgets.chooseFolder(self.parent, _("Risk model bundle folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Not a usable model bundle.")):
            widgets.checkBundleFolder(folder, RISK_BUNDLE_KIND)
            self._parameterNode.modelBundle = folder
            widgets.fillModelComboBox(self.ui.modelComboBox, RISK_BUNDLE_KIND, folder, [folder])

    # -- run ------------------------------------------------------------------------------------

    def onApply(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start BINDS Risk."), waitCursor=True):
            run = self.logic.createRiskRun()
            run.checkInputs()  # before anything is installed
            if not install.ensureDependencies(requester="BINDS Risk"):
                self.ui.statusLabel.text = _("Not run: the Python packages BINDS needs are not installed.")
                return
            self.ui.resultLabel.text = ""
            self.lastRun = None
            self.controller.start(run)

    def onRunSucceeded(self, run) -> None:
        self.lastRun = run
        self.logic.showResults(run.results)
        self.ui.resultLabel.text = riskSummaryHtml(run.results.report)

    def onExport(self) -> None:
        from BINDSSlicerLib import widgets

        if self.lastRun is None or not self.lastRun.outputFolder:
            slicer.util.infoDisplay(_("Run BINDS Risk first."))
            return
        folder = widgets.chooseFolder(self.parent, _("Export BINDS Risk results to"), self._parameterNode.exportFolder)
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to export the results.")):
            self._parameterNode.exportFolder = folder
            written = self.logic.exportResults(self.lastRun.outputFolder, folder)
            self.ui.statusLabel.text = _("Exported {n} file(s) to {folder}.").format(n=len(written), folder=folder)


def riskSummaryHtml(report: dict) -> str:
    exams = report.get("exams", [])
    horizon = bindsRisk.horizonYears(report)
    lines = []
    if exams:
        last = exams[-1]
        risk = float(last["cumulative_risk"][str(horizon)])
        if (report.get("trajectory") or {}).get("last_risk") is not None:
            risk = float(report["trajectory"]["last_risk"])  # (exams of one date: their highest, as the flag)
        from BINDSLib.risk.report import percent_texts

        shown, limit = percent_texts(risk, bindsRisk.threshold(report))
        lines.append(f"Latest exam ({last.get('exam_date') or 'undated'}): {horizon}-year risk <b>{shown}</b> "
                     f"(threshold {limit})")
    trajectory = report.get("trajectory", {})
    if trajectory.get("slope_per_year") is not None:
        lines.append(f"Trend: {100 * trajectory['slope_per_year']:+.3f} percentage points per year "
                     f"over {trajectory.get('n_exams', len(exams))} exams")
    lines += [f"<b>{flag.get('message', '')}</b>" for flag in report.get("flags", [])]
    lines += [f"<i>{warning}</i>" for warning in report.get("warnings", [])]
    lines.append("<i>Research use only; not for clinical use.</i>")
    return "<br>".join(lines)


#
# BINDSRiskLogic
#


class BINDSRiskLogic(ScriptedLoadableModuleLogic):
    """Computation of the module, usable without the GUI (delegates to BINDSSlicerLib)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> BINDSRiskParameterNode:
        return BINDSRiskParameterNode(super().getParameterNode())

    @staticmethod
    def workFolder() -> str:
        return os.path.join(slicer.app.temporaryPath, "BINDS")

    def setExamFolders(self, folders) -> None:
        """Set the exams to score (duplicates removed, order kept). Another list clears "one woman
        under different patient IDs": it was said of the exams listed then, not of another woman's."""
        unique = []
        for folder in folders:
            folder = os.path.normpath(os.fspath(folder))
            if folder not in unique:
                unique.append(folder)
        parameters = self.getParameterNode()
        if list(parameters.examFolders) != unique:
            parameters.sameWoman = False
        parameters.examFolders = unique

    def examFoldersFromDicomDatabase(self, patientUID: str) -> list:
        folder = os.path.join(self.workFolder(), "dicom-exams", patientUID.replace(os.sep, "_"))
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        return bindsRisk.examFoldersFromDicomDatabase(slicer.dicomDatabase, patientUID, folder)

    def createRiskRun(self) -> runs.RiskRun:
        parameters = self.getParameterNode()
        return runs.RiskRun(slicer.mrmlScene, list(parameters.examFolders), self.workFolder(),
                            model=parameters.modelBundle or None, device=parameters.device,
                            python=runs.slicerPython(), baseEnvironment=runs.slicerEnvironment(),
                            sameWoman=parameters.sameWoman)

    def runRisk(self, timeout: float = 600.0) -> runs.RiskRun:
        """Run and wait, keeping the application responsive (scripts and the self-test)."""
        import time

        run = self.createRiskRun()
        run.start()
        deadline = time.monotonic() + timeout
        while run.poll():
            slicer.app.processEvents()
            if time.monotonic() > deadline:
                run.stop()
                raise TimeoutError(f"BINDS Risk did not finish in {timeout} s")
            time.sleep(0.05)
        if run.error:
            raise RuntimeError(f"BINDS Risk failed: {run.error}\n{run.errorDetails}")
        return run

    def showResults(self, results) -> None:
        bindsRisk.showRiskResults(slicer.mrmlScene, results)
        appLogic = slicer.app.applicationLogic()
        appLogic.PropagatePlotChartSelection()
        appLogic.PropagateTableSelection()

    @staticmethod
    def exportResults(outputFolder: str, folder: str) -> list:
        """Copy the files ``binds risk`` wrote (report.json, risk.csv, trajectory.png)."""
        os.makedirs(folder, exist_ok=True)
        written = []
        for name in sorted(os.listdir(outputFolder)):
            source = os.path.join(outputFolder, name)
            if os.path.isfile(source):
                shutil.copy2(source, os.path.join(folder, name))
                written.append(os.path.join(folder, name))
        return written


#
# BINDSRiskTest
#


class BINDSRiskTest(ScriptedLoadableModuleTest):
    """Self-test: the whole flow on a synthetic screening history inside Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ParameterNode()
        self.setUp()
        self.test_WholeFlowOnSyntheticHistory()

    def test_ParameterNode(self):
        logic = BINDSRiskLogic()
        logic.setExamFolders(["/a/e1", "/a/e2", "/a/e1"])
        self.assertEqual(logic.getParameterNode().examFolders, [os.path.normpath("/a/e1"), os.path.normpath("/a/e2")])
        self.assertEqual(logic.getParameterNode().modelBundle, DEFAULT_RISK_MODEL)

    def test_WholeFlowOnSyntheticHistory(self):
        import tempfile

        missing = install.missingRequirements(privateFolder=install.privateSitePackages()) + ([] if install.torchInstalled() else ["torch"])
        if missing:
            self.delayDisplay(f"Skipping the whole flow: {', '.join(missing)} not installed")
            return
        from BINDSSlicerLib import sampledata

        logic = BINDSRiskLogic()
        logic.getParameterNode().device = "cpu"
        from BINDSLib.bundle import find_bundle
        from BINDSLib.errors import ModelError

        try:
            find_bundle(logic.getParameterNode().modelBundle)
        except ModelError as e:
            self.delayDisplay(f"Skipping the whole flow: {e}")
            return
        self.delayDisplay("Writing a synthetic screening history")
        folder = tempfile.mkdtemp(prefix="binds-risk-test-")
        history, exams = sampledata.writeSyntheticHistory(3, os.path.join(folder, "history"))
        logic.setExamFolders(exams)
        self.delayDisplay("Running BINDS Risk in the background")
        results = logic.runRisk().results
        self.assertEqual(results.examTable.GetNumberOfRows(), len(history.exams))
        self.assertEqual(results.chart.GetNumberOfPlotSeriesNodes() >= 2, True)
        thresholdColumn = results.thresholdTable.GetTable().GetColumnByName("Threshold (%)")
        self.assertAlmostEqual(thresholdColumn.GetValue(0), 100 * bindsRisk.threshold(results.report))
        logic.showResults(results)
        self.assertEqual(slicer.app.layoutManager().layout, slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        shutil.rmtree(folder, ignore_errors=True)
        logging.info("BINDS Risk whole flow passed")
        self.delayDisplay("Whole flow passed")
