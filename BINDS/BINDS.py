"""BINDS diagnosis module: two-stage breast cancer diagnosis of the scene's images.

Follows Slicer's scripted-module template (Utilities/Templates/Modules/Scripted/TemplateKey.py):
module metadata, a typed parameter node, a widget built from ``Resources/UI/BINDS.ui``, a logic
class and a self-test. The widget is thin: the scene layer, the background process, role
guessing and installation live in ``BINDSSlicerLib`` (tested headless on slicer-core).

Only Slicer's own packages are imported at file scope. numpy, torch, monai, pydicom, SimpleITK and
BINDSLib are imported inside the functions that use them, so Slicer starts fast and the module
loads before the PyTorch extension has installed torch.
"""

import logging
import os
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from BINDSSlicerLib import install, roles, runs
from BINDSSlicerLib import results as bindsResults
from BINDSSlicerLib import scene as bindsScene
from BINDSSlicerLib.paths import addBINDSLibToPythonPath, requireBINDSLib, resourcePath

DIAGNOSIS_BUNDLE_KIND = "diagnosis"
DEFAULT_MODEL = "auto"


def loadTerminology() -> Optional[str]:
    """Load Resources/Terminology/BINDS.term.json into the Terminologies module (for the
    segment terminology selector); returns the context name, None without that module."""
    terminologies = getattr(slicer.modules, "terminologies", None)
    if terminologies is None:
        return None
    return terminologies.logic().LoadTerminologyFromFile(resourcePath("Terminology/BINDS.term.json"))


def onStartupCompleted() -> None:
    try:
        loadTerminology()
    except Exception:  # noqa: BLE001 - never break Slicer's start-up
        logging.exception("BINDS: could not load the terminology")
    try:
        from BINDSSlicerLib import sampledata

        sampledata.registerSampleData()
    except Exception:  # noqa: BLE001
        logging.exception("BINDS: could not register the sample data")


#
# BINDS
#


class BINDS(ScriptedLoadableModule):
    """Module metadata. Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BINDS")
        self.parent.categories = ["BINDS"]
        self.parent.dependencies = []
        self.parent.contributors = ["BINDS contributors (binds-project)"]
        self.parent.helpText = _(
            "AI-assisted breast cancer diagnosis from multimodal breast imaging: assign roles to the "
            "mammograms, ultrasound images and MR sequences, click Apply, correct the lesions in the "
            "Segment Editor and re-assess."
            "<br><b>Research use only; not for clinical use.</b> Results have not been cleared by any "
            "regulatory body and must not guide the care of a patient."
            '<br>See the <a href="https://github.com/binds-project/SlicerBINDS/blob/main/docs/SLICER.md">BINDS '
            "tutorial</a>."
        )
        self.parent.acknowledgementText = _(
            "BINDS, the breast cancer diagnosis method this module runs, is described in "
            "Nature Biomedical Engineering (2026). Please cite that article when you use BINDS "
            "in a publication."
        )
        # Slicer finds the icon itself only in Resources/ next to the module file, which is
        # not where it is in a clone; BINDSLib must be importable from a clone as well.
        addBINDSLibToPythonPath()
        iconPath = resourcePath("Icons/BINDS.png")
        if os.path.isfile(iconPath):
            self.parent.icon = qt.QIcon(iconPath)
        slicer.app.connect("startupCompleted()", onStartupCompleted)


#
# BINDSParameterNode
#


@parameterNodeWrapper
class BINDSParameterNode:
    """The parameters of the BINDS module, saved with the scene.

    modelBundle - "auto" (chosen per study by modality), a bundle name (shipped or in the user
        folder) or a folder.
    device - "auto", "cpu" or "cuda".
    stage - "auto" (MRI only when stage 1 is uncertain), "1" or "2".
    studyFolder - last folder read by "Load study...".
    exportFolder - last folder results were exported to.
    """

    modelBundle: str = DEFAULT_MODEL
    device: str = "auto"
    stage: Annotated[str, Choice(["auto", "1", "2"])] = "auto"
    studyFolder: str = ""
    exportFolder: str = ""


#
# BINDSWidget
#


class BINDSWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Module panel. Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self.controller = None
        self.lastResults = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._rolesRefreshPending = False

    def resourcePath(self, filename: str) -> str:
        """Resources/ is shared by the BINDS modules and is not next to the module file in a clone."""
        return resourcePath(filename)

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)
        from BINDSSlicerLib import widgets

        # Widgets with a "SlicerParameterName" dynamic property in the .ui file are bound to
        # the parameter of that name by connectGui() (see setParameterNode).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BINDS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BINDSLogic()
        self.controller = widgets.RunController(
            self.ui.progressBar, self.ui.statusLabel,
            [self.ui.applyButton, self.ui.reassessButton, self.ui.loadStudyButton], self.ui.cancelButton,
            self.onRunSucceeded, title="BINDS")

        self.ui.rolesTable.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.Stretch)
        self.ui.loadStudyButton.clicked.connect(self.onLoadStudy)
        self.ui.guessRolesButton.clicked.connect(self.onGuessRoles)
        self.ui.applyButton.clicked.connect(lambda: self.onApply(useEditedLesions=False))
        self.ui.reassessButton.clicked.connect(lambda: self.onApply(useEditedLesions=True))
        self.ui.editLesionsButton.clicked.connect(self.onEditLesions)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.addModelButton.clicked.connect(self.onAddModel)
        self.ui.openModelsFolderButton.clicked.connect(self.onOpenModelsFolder)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)

        # Update the parameter node when the scene is closed; the roles table when volumes come and go.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)

        self.initializeParameterNode()
        self.refreshRolesTable()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self.controller is not None:
            self.controller.shutdown()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()
        self.refreshRolesTable()
        from BINDSSlicerLib import widgets

        qt.QTimer.singleShot(0, lambda: widgets.showGpuName(self.ui.deviceComboBox))

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        if self.controller is not None:
            self.controller.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        self.lastResults = None
        self.ui.resultLabel.text = ""  # (the closed scene's patient)
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.refreshRolesTable()

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed."""
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[BINDSParameterNode]) -> None:
        """Bind the GUI to the given parameter node (None unbinds it)."""
        from BINDSSlicerLib import widgets

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            # the model and device lists are not bound by connectGui: follow the node (a scene load)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            widgets.fillSettings((self.ui.modelComboBox, self.ui.deviceComboBox), DIAGNOSIS_BUNDLE_KIND,
                                 self._parameterNode, autoItem=True)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        from BINDSSlicerLib import widgets

        if self._parameterNode:
            widgets.followSettings((self.ui.modelComboBox, self.ui.deviceComboBox), DIAGNOSIS_BUNDLE_KIND,
                                   self._parameterNode, autoItem=True)

    # -- inputs ---------------------------------------------------------------------------------

    def onSceneNodesChanged(self, caller, event) -> None:
        if not self._rolesRefreshPending:  # many nodes come at once (a study): refresh once
            self._rolesRefreshPending = True
            qt.QTimer.singleShot(0, self.refreshRolesTable)

    def refreshRolesTable(self) -> None:
        """One row per input volume: its name and a role selector (empty: not used)."""
        self._rolesRefreshPending = False
        if not hasattr(self, "ui"):
            return
        table = self.ui.rolesTable
        nodes = bindsScene.volumeNodes(slicer.mrmlScene)
        # volumes never seen before get a guessed role, guessed again with the other guesses (the
        # DICOM browser adds a DCE series' phases one at a time); a role set by hand is kept
        try:
            self.logic.guessNewRoles(nodes)
        except Exception:  # noqa: BLE001 - the user can still set the roles by hand
            logging.exception("BINDS: could not guess the roles")
        table.setRowCount(len(nodes))
        choices = [""] + roles.roleChoices()
        for row, node in enumerate(nodes):
            item = qt.QTableWidgetItem(node.GetName())
            item.setData(qt.Qt.UserRole, node.GetID())
            table.setItem(row, 0, item)
            combo = qt.QComboBox()
            role = bindsScene.volumeRole(node)
            combo.addItems(choices + ([role] if role and role not in choices else []))
            combo.setCurrentText(role)
            combo.setToolTip(_("Role of this image; empty: not used"))
            combo.currentTextChanged.connect(lambda text, nodeID=node.GetID(): self.onRoleChanged(nodeID, text))
            table.setCellWidget(row, 1, combo)

    def onRoleChanged(self, nodeID: str, roleKey: str) -> None:
        node = slicer.mrmlScene.GetNodeByID(nodeID)
        if node is not None:
            with slicer.util.tryWithErrorDisplay(_("Invalid role.")):
                requireBINDSLib()
                bindsScene.setVolumeRole(node, roleKey)

    def onGuessRoles(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to guess the roles."), waitCursor=True):
            guessed = self.logic.guessRoles(overwrite=True)
            self.refreshRolesTable()
            unknown = sum(1 for role in guessed.values() if not role)
            self.ui.statusLabel.text = _("{n} image(s) without a role: set them by hand or leave them out.").format(
                n=unknown) if unknown else ""

    def onLoadStudy(self) -> None:
        from BINDSSlicerLib import widgets

        folder = widgets.chooseFolder(self.parent, _("Study folder, DICOM folder or image folder"),
                                      self._parameterNode.studyFolder if self._parameterNode else "")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the study."), waitCursor=True):
            if not install.ensureDependencies(requirements=install.LOAD_REQUIREMENTS, withTorch=False):
                self.ui.statusLabel.text = _("Not loaded: the Python packages BINDS needs are not installed.")
                return
            if self._parameterNode:
                self._parameterNode.studyFolder = folder
            # read in a separate process (BINDS' own pydicom; the GUI stays responsive)
            self.controller.start(self.logic.createConvertRun(folder))

    def onStudyLoaded(self, run) -> None:
        self.refreshRolesTable()
        if run.nodes:
            slicer.util.setSliceViewerLayers(background=run.nodes[0], fit=True, rotateToVolumePlane=True)
        self.ui.statusLabel.text = _("Loaded {n} image(s).").format(n=len(run.nodes))

    # -- settings -------------------------------------------------------------------------------

    def onModelChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.modelBundle = self.ui.modelComboBox.itemData(index) or ""

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def onOpenModelsFolder(self) -> None:
        from BINDSSlicerLib import widgets

        with slicer.util.tryWithErrorDisplay(_("Could not open the models folder.")):
            widgets.openUserModelFolder()

    def onAddModel(self) -> None:
        from BINDSSlicerLib import widgets

        folder = widgets.chooseFolder(self.parent, _("Model bundle folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Not a usable model bundle.")):
            widgets.checkBundleFolder(folder, DIAGNOSIS_BUNDLE_KIND)
            self._parameterNode.modelBundle = folder
            widgets.fillModelComboBox(self.ui.modelComboBox, DIAGNOSIS_BUNDLE_KIND, folder, [folder], autoItem=True)

    # -- run ------------------------------------------------------------------------------------

    def onApply(self, useEditedLesions: bool) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start BINDS."), waitCursor=True):
            run = self.logic.createDiagnosisRun(useEditedLesions)
            run.checkInputs()  # before anything is installed
            if not install.ensureDependencies():
                self.ui.statusLabel.text = _("Not run: the Python packages BINDS needs are not installed.")
                return
            self.ui.resultLabel.text = ""  # the earlier result is not shown beside this run's progress or error
            self.controller.start(run)

    def onRunSucceeded(self, run) -> None:
        if isinstance(run, runs.ConvertRun):
            self.onStudyLoaded(run)
            return
        self.lastResults = run.results
        shown = self.logic.showResults(run.results)
        self.ui.resultLabel.text = resultSummaryHtml(run.results.report)
        kept = len(run.results.keptEdited)
        self.ui.statusLabel.text = _("Done: {n} image(s) shown by lesion probability{kept}.").format(
            n=len(shown), kept=_(", {k} edited segmentation(s) kept").format(k=kept) if kept else "")

    def onEditLesions(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to open the Segment Editor.")):
            self.logic.editLesionInSegmentEditor(self.lastResults)

    def onExport(self) -> None:
        from BINDSSlicerLib import widgets

        folder = widgets.chooseFolder(self.parent, _("Export BINDS results to"),
                                      self._parameterNode.exportFolder if self._parameterNode else "")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to export the results."), waitCursor=True):
            self._parameterNode.exportFolder = folder
            written = self.logic.exportResults(folder)
            self.ui.statusLabel.text = _("Exported {n} file(s) to {folder}.").format(n=len(written), folder=folder)


def resultSummaryHtml(report: dict) -> str:
    """The key numbers of a report for the results panel."""
    from BINDSLib.diagnose import probability_texts

    probability, threshold = probability_texts(report["malignancy_probability"], report["threshold"])
    lines = [
        f"<b>Stage {report['stage']}</b>: malignancy probability <b>{probability}</b> "
        f"(operating point {threshold})",
        f"Recommendation: <b>{report['recommendation']}</b>",
    ]
    if report.get("finding_probability") is not None:
        lines.append(f"Finding probability (abnormal vs normal): {report['finding_probability']:.3f}")
    if report.get("subtype"):
        p = report["subtype_probabilities"][report["subtype"]]
        lines.append(f"Most likely subtype if malignant: {report['subtype'].replace('_', ' ')} ({p:.2f})")
    if report.get("user_lesion_masks"):
        lines.append("Re-assessed with edited lesions: " + ", ".join(report["user_lesion_masks"]))
    lines += [f"<i>{note}</i>" for note in report.get("notes", [])]
    lines.append("<i>Research use only; not for clinical use.</i>")
    return "<br>".join(lines)


#
# BINDSLogic
#


class BINDSLogic(ScriptedLoadableModuleLogic):
    """Computation of the module, usable without the GUI. Uses ScriptedLoadableModuleLogic
    base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Delegates to BINDSSlicerLib: scene (volumes, study folder), roles, runs (background
    ``binds diagnose``) and results (segmentations, saliency, table, edits, export).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> BINDSParameterNode:
        return BINDSParameterNode(super().getParameterNode())

    @staticmethod
    def bindsLibVersion() -> str:
        """Version of the BINDSLib core this module runs on."""
        requireBINDSLib()
        import BINDSLib

        return BINDSLib.__version__

    @staticmethod
    def workFolder() -> str:
        return os.path.join(slicer.app.temporaryPath, "BINDS")

    def guessRoles(self, volumeNodes=None, overwrite: bool = False) -> dict:
        """Guess the roles of input volumes (default: all) from their DICOM attributes, else their
        names. A role already set is kept unless ``overwrite``. Returns {node ID: role or None}."""
        requireBINDSLib()
        if volumeNodes is None:
            volumeNodes = bindsScene.volumeNodes(slicer.mrmlScene)
        return roles.guessVolumeRoles(volumeNodes, getattr(slicer, "dicomDatabase", None), overwrite)

    def guessNewRoles(self, volumeNodes) -> list:
        """Guess the roles of volumes that have none yet, with those whose role is still a guess
        (:func:`BINDSSlicerLib.roles.guessNewVolumeRoles`). Returns the volumes guessed."""
        if not any(node.GetAttribute(bindsScene.ROLE_ATTRIBUTE) is None for node in volumeNodes):
            return []  # (nothing new: BINDSLib is not even needed)
        requireBINDSLib()
        return roles.guessNewVolumeRoles(volumeNodes, getattr(slicer, "dicomDatabase", None))

    def createConvertRun(self, path: str) -> runs.ConvertRun:
        """A ``binds convert`` run that reads a DICOM folder, study folder, dataset or image folder
        in a separate process and adds its images (with their roles) to the scene."""
        return runs.ConvertRun(slicer.mrmlScene, path, self.workFolder())

    def loadStudy(self, path: str) -> list:
        """:meth:`createConvertRun`, waiting for it (scripts and tests). Returns the volume nodes."""
        run = self.createConvertRun(path).start().wait()
        if run.error:
            raise RuntimeError(f"{run.error}\n{run.errorDetails}")
        return run.nodes

    def loadSyntheticCase(self, seed: int = 7, diagnosis: str = "malignant") -> dict:
        from BINDSSlicerLib import sampledata

        return sampledata.loadSyntheticStudy(slicer.mrmlScene, seed, diagnosis)

    def createDiagnosisRun(self, useEditedLesions: bool = False) -> runs.DiagnosisRun:
        """A run of ``binds diagnose`` on the volumes that have a role, with the module's settings."""
        parameters = self.getParameterNode()
        return runs.DiagnosisRun(
            slicer.mrmlScene, bindsScene.assignedVolumes(slicer.mrmlScene), self.workFolder(),
            model=parameters.modelBundle or None, device=parameters.device, stage=parameters.stage,
            useEditedLesions=useEditedLesions, python=runs.slicerPython(), baseEnvironment=runs.slicerEnvironment())

    def runDiagnosis(self, useEditedLesions: bool = False, timeout: float = 600.0) -> runs.DiagnosisRun:
        """Run and wait, keeping the application responsive (scripts and the self-test)."""
        import time

        run = self.createDiagnosisRun(useEditedLesions)
        run.start()
        deadline = time.monotonic() + timeout
        while run.poll():
            slicer.app.processEvents()
            if time.monotonic() > deadline:
                run.stop()
                raise TimeoutError(f"BINDS did not finish in {timeout} s")
            time.sleep(0.05)
        if run.error:
            raise RuntimeError(f"BINDS failed: {run.error}\n{run.errorDetails}")
        return run

    def showResults(self, results) -> list:
        """Layout with slice views and the report table; the most suspicious images with their
        saliency overlay and lesion outlines. Returns the image labels shown."""
        shown = bindsResults.showDiagnosisResults(slicer.mrmlScene, results)
        appLogic = slicer.app.applicationLogic()
        appLogic.PropagateTableSelection()
        slicer.util.resetSliceViews()
        return shown

    def editLesionInSegmentEditor(self, results=None) -> None:
        """Open the Segment Editor on the lesion of the image shown in the red view."""
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        image = slicer.mrmlScene.GetNodeByID(composite.GetBackgroundVolumeID() or "")
        segmentations = bindsResults.outputNodes(slicer.mrmlScene, "segmentation", image) if image else []
        if not segmentations:
            segmentations = bindsResults.outputNodes(slicer.mrmlScene, "segmentation")
        if not segmentations:
            raise ValueError("there is no BINDS segmentation yet: click Apply first")
        segmentation = segmentations[-1]
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        source = bindsResults.imageOfOutput(segmentation)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(source)
        else:  # Slicer < 5.4
            editor.setMasterVolumeNode(source)
        segmentId = bindsResults.lesionSegmentId(segmentation)
        if segmentId:
            editor.setCurrentSegmentID(segmentId)

    def exportResults(self, folder: str) -> list:
        return bindsResults.exportResults(slicer.mrmlScene, folder)


#
# BINDSTest
#


class BINDSTest(ScriptedLoadableModuleTest):
    """Self-test, run from the Reload & Test button or by ctest: the whole flow on a synthetic
    case inside Slicer. Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Reset the state: a scene clear is enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run all the tests of this module."""
        self.setUp()
        self.test_BINDSLibIsImportable()
        self.setUp()
        self.test_ResourcesAreFound()
        self.setUp()
        self.test_ParameterNodeDefaults()
        self.setUp()
        self.test_TerminologyLoads()
        self.setUp()
        self.test_WholeFlowOnSyntheticCase()

    def test_BINDSLibIsImportable(self):
        self.delayDisplay("Importing BINDSLib")
        rootDir = addBINDSLibToPythonPath()
        self.assertIsNotNone(rootDir, "BINDSLib was not found; see the error in the log")
        version = BINDSLogic.bindsLibVersion()
        self.assertTrue(version)
        import BINDSLib

        self.assertEqual(
            os.path.normcase(os.path.dirname(os.path.dirname(os.path.abspath(BINDSLib.__file__)))),
            os.path.normcase(os.path.abspath(rootDir)),
            "'import BINDSLib' found another copy than the one shipped with this module",
        )
        self.delayDisplay(f"BINDSLib {version} imported from {rootDir}")

    def test_ResourcesAreFound(self):
        self.delayDisplay("Looking for the module's resources")
        for relativePath in ("Icons/BINDS.png", "UI/BINDS.ui", "Terminology/BINDS.term.json"):
            self.assertTrue(os.path.isfile(resourcePath(relativePath)), f"missing {resourcePath(relativePath)}")
        self.delayDisplay("Resources found")

    def test_ParameterNodeDefaults(self):
        self.delayDisplay("Creating the parameter node")
        parameterNode = BINDSLogic().getParameterNode()
        self.assertEqual(parameterNode.stage, "auto")
        self.assertEqual(parameterNode.modelBundle, DEFAULT_MODEL)
        parameterNode.studyFolder = "/data/study-1"
        self.assertEqual(BINDSLogic().getParameterNode().studyFolder, "/data/study-1")
        self.delayDisplay("Parameter node test passed")

    def test_TerminologyLoads(self):
        name = loadTerminology()
        if name is not None:
            self.assertEqual(name, "BINDS breast findings")

    def test_WholeFlowOnSyntheticCase(self):
        """Synthetic case -> roles -> Apply (background process) -> segmentations, saliency, table
        -> edit a lesion -> re-assess (edited segmentation kept) -> export."""
        import tempfile

        import numpy as np

        missing = install.missingRequirements(privateFolder=install.privateSitePackages()) + ([] if install.torchInstalled() else ["torch"])
        if missing:
            self.delayDisplay(f"Skipping the whole flow: {', '.join(missing)} not installed")
            return
        logic = BINDSLogic()
        logic.getParameterNode().device = "cpu"
        requireBINDSLib()
        from BINDSLib.bundle import find_bundle
        from BINDSLib.errors import ModelError

        try:
            find_bundle("binds-diagnosis-demo")  # what "auto" picks for the synthetic case
        except ModelError as e:
            self.delayDisplay(f"Skipping the whole flow: {e}")
            return
        self.delayDisplay("Generating a synthetic case")
        nodes = logic.loadSyntheticCase(seed=7, diagnosis="malignant")
        for label, node in nodes.items():
            node.SetAttribute(bindsScene.ROLE_ATTRIBUTE, "")  # roles come back from the names
        guessed = logic.guessRoles()
        self.assertEqual({nodes[label].GetID(): label for label in nodes}, guessed)

        self.delayDisplay("Running BINDS in the background")
        run = logic.runDiagnosis()
        results = run.results
        self.assertEqual(set(results.segmentations), {e["label"] for e in results.report["images"]})
        for label, segmentation in results.segmentations.items():
            image = nodes[label]
            self.assertIs(bindsResults.imageOfOutput(segmentation), image)
            self.assertEqual(segmentation.GetSegmentation().GetSegment("lesion").GetName(), "Lesion")
            np.testing.assert_allclose(bindsScene.ijkToRASArray(results.saliency[label]),
                                       bindsScene.ijkToRASArray(image), atol=1e-5)
        self.assertTrue(bindsResults.tableRows(results.table))
        logic.showResults(results)
        self.assertEqual(slicer.app.layoutManager().layout, slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)

        self.delayDisplay("Editing a lesion and re-assessing")
        label = results.imagesByLesionProbability()[0]
        segmentation = results.segmentations[label]
        mask = bindsResults.segmentMask(segmentation, "lesion", nodes[label])
        edited = np.zeros_like(mask)
        depth, rows, cols = mask.shape
        edited[depth // 2, rows // 3: rows // 2, cols // 3: cols // 2] = 1
        bindsResults.setSegmentMask(segmentation, "lesion", edited, nodes[label])
        self.assertTrue(bindsResults.isLesionEdited(segmentation))
        second = logic.runDiagnosis(useEditedLesions=True).results
        self.assertIn(label, second.report["user_lesion_masks"])
        self.assertIs(slicer.mrmlScene.GetNodeByID(segmentation.GetID()), segmentation)
        np.testing.assert_array_equal(bindsResults.segmentMask(segmentation, "lesion", nodes[label]), edited)
        self.assertIsNot(second.segmentations[label], segmentation)

        self.delayDisplay("Exporting")
        with tempfile.TemporaryDirectory() as folder:
            written = [os.path.basename(p) for p in logic.exportResults(folder)]
            self.assertIn(f"{label}.seg.nrrd", written)
            self.assertIn("report.json", written)
        self.delayDisplay("Whole flow passed")
