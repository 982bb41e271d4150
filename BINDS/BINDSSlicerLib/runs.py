"""One diagnosis or risk run: scene -> files -> background ``binds`` -> scene.

:class:`DiagnosisRun` writes a study folder from the volumes that have a role (and the edited
lesions as mask files when re-assessing), runs ``binds diagnose`` on it in a
:class:`~.process.BackgroundProcess` and, when it succeeds, loads the output folder over the
input volumes (:func:`.results.loadDiagnosisResults`). :class:`RiskRun` does the same for
``binds risk`` on exam folders. Neither uses Qt: the widgets poll them with a QTimer, the tests
and scripts call :meth:`wait`.

Work folders: ``<workFolder>/diagnose-<time>/{study,masks,output}``; the study and mask copies
are deleted once the outputs are loaded, the output folder is kept (it holds summary.png).
"""

import datetime
import logging
import os
import shutil
import sys

from . import process as proc
from . import results as res
from . import riskresults as riskres
from . import scene as sc
from .paths import requireBINDSLib


def slicerPython():
    """The Python that runs ``binds`` inside Slicer: PythonSlicer (it is also sys.executable there)."""
    return shutil.which("PythonSlicer") or sys.executable


def slicerEnvironment():
    """Slicer's start-up environment (what slicer.util.launchConsoleProcess uses; the PythonSlicer
    launcher adds Slicer's own paths), or None outside the application."""
    try:
        import slicer

        return slicer.util.startupEnvironment()
    except Exception:  # noqa: BLE001 - headless: no slicer.app
        return None


def newRunFolder(workFolder, prefix):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = os.path.join(workFolder, f"{prefix}-{stamp}")
    os.makedirs(path)
    return path


class _Run:
    """What diagnosis and risk runs share: the background process and its callbacks."""

    def __init__(self, python=None, baseEnvironment=None):
        self.python = python
        self.baseEnvironment = baseEnvironment
        self.process = None
        self.error = None  # short message of a failed run (None while running or on success)
        self.errorDetails = ""
        self.cancelRequested = False  # once cancelled, nothing is loaded, even if it had just ended
        self._onFinished = None

    def _start(self, subcommand, arguments, onProgress, onLog, onFinished):
        root = requireBINDSLib()
        self._onFinished = onFinished
        from . import install

        try:
            self.process = proc.BackgroundProcess(
                proc.bindsCommand(subcommand, arguments, self.python), cwd=root,
                env=proc.processEnvironment(root, self.baseEnvironment, install.privatePathsIfAny()),
                onProgress=onProgress, onLog=onLog, onFinished=self._processFinished)
            self.process.start()
        except BaseException:  # e.g. the launcher is missing: no copy of the images is left behind
            self.process = None
            self.discard()
            raise
        return self

    def _prepared(self, prepare):
        """``prepare()``, removing the run folder (copies of the patient's images) if it fails."""
        try:
            return prepare()
        except BaseException:
            self.discard()
            raise

    def _processFinished(self, result):
        if self.cancelRequested:  # (it may have ended just before; the scene may be another one by now)
            pass
        elif result.succeeded:
            try:
                self.load()
            except Exception as e:  # noqa: BLE001 - reported to the user like a process error
                logging.exception("BINDS: loading the outputs failed")
                self.error, self.errorDetails = f"loading the outputs failed: {self.describe(str(e))}", result.details
        else:
            self.error, self.errorDetails = self.describe(result.message), result.details
        self.cleanup()
        if self._onFinished:
            self._onFinished(self)

    def describe(self, message):
        """A message of the process in the user's terms (a run may name its temporary files)."""
        return message

    @property
    def finished(self):
        return self.process is not None and self.process.result is not None

    @property
    def cancelled(self):
        return self.finished and (self.process.result.cancelled or self.cancelRequested)

    def poll(self):
        return self.process.poll() if self.process is not None else False

    def wait(self, timeout=None):
        """Block until the run ends (headless use); returns self."""
        if self.process is None:
            raise RuntimeError("the run was not started (start() failed or was not called)")
        self.process.wait(timeout)
        return self

    def cancel(self):
        """Stop the run; its outputs are not loaded, even when the process has just ended
        without being polled yet (a scene closed then may hold another patient)."""
        self.cancelRequested = True
        if self.process is not None:
            self.process.cancel()

    def stop(self, timeout=10.0):
        """Cancel and wait for the end, so that the run cleans up (its copies of the patient's
        images) when nothing will poll it any more: the application closing, a timed-out wait."""
        if self.process is None:
            return
        self.cancel()
        try:
            self.process.wait(timeout)
        except TimeoutError:
            logging.warning("BINDS: the cancelled process did not end in %s s", timeout)

    def load(self):
        raise NotImplementedError

    def cleanup(self):
        pass

    def discard(self):
        """Remove everything the run wrote (it did not start)."""
        folder = getattr(self, "runFolder", None)
        if folder and os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)


class ConvertRun(_Run):
    """``binds convert`` of a DICOM folder, study folder, dataset or image folder, then its
    studies are added to the scene (volume nodes with their roles, one subject hierarchy study
    each; reference lesion masks are not loaded).

    DICOM is read in the separate process with BINDS' own pydicom (which may be newer than the
    one Slicer's DICOM module uses: see :mod:`.install`), and the GUI stays responsive.
    """

    def __init__(self, scene, path, workFolder, python=None, baseEnvironment=None):
        super().__init__(python, baseEnvironment)
        self.scene = scene
        self.path = os.fspath(path)
        self.workFolder = workFolder
        self.runFolder = self.outputFolder = None
        self.nodes = []

    def prepare(self):
        if not os.path.exists(self.path):
            raise ValueError(f"not found: {self.path}")
        self.runFolder = newRunFolder(self.workFolder, "load")
        self.outputFolder = os.path.join(self.runFolder, "studies")
        return [self.path, "--out", self.outputFolder, "--keep-identifiers"]

    def start(self, onProgress=None, onLog=None, onFinished=None):
        return self._start("convert", self._prepared(self.prepare), onProgress, onLog, onFinished)

    def load(self):
        requireBINDSLib()
        from BINDSLib.studyfolder import is_study_folder, read_study_folder

        out = self.outputFolder
        folders = [out] if is_study_folder(out) else sorted(
            os.path.join(out, d) for d in os.listdir(out) if is_study_folder(os.path.join(out, d)))
        self.nodes = []
        for folder in folders:
            self.nodes += list(sc.addStudyToScene(self.scene, read_study_folder(folder)).values())

    def cleanup(self):
        if self.runFolder and os.path.isdir(self.runFolder):
            shutil.rmtree(self.runFolder, ignore_errors=True)


class DiagnosisRun(_Run):
    """``binds diagnose`` on the scene volumes that have a role.

    Parameters
    ----------
    scene : the MRML scene.
    nodesWithRoles : ``[(volume node, role key), ...]`` (:func:`.scene.assignedVolumes`).
    workFolder : where the run folder is created.
    model, device, stage : ``binds diagnose`` options (model: bundle name or folder).
    useEditedLesions : pass the lesions the user edited (or that came from the user in the
        previous run) as ``--lesion-mask``.
    """

    def __init__(self, scene, nodesWithRoles, workFolder, model=None, device="auto", stage="auto",
                 useEditedLesions=False, python=None, baseEnvironment=None, summary=True):
        super().__init__(python, baseEnvironment)
        self.scene = scene
        self.nodesWithRoles = list(nodesWithRoles)
        self.workFolder = workFolder
        self.model, self.device, self.stage = model, device, stage
        self.useEditedLesions = useEditedLesions
        self.summary = summary
        self.runFolder = self.studyFolder = self.outputFolder = None
        self.nodeIDByLabel = {}
        self._nodesByLabel = {}  # the very nodes written (an ID is reused after a scene close)
        self.nodeNames = {}  # image label -> volume name when the run started
        self.lesionMaskFiles = {}
        self.passedLesions = {}  # label -> (segmentation node, checksum) passed as --lesion-mask
        self.results = None

    def imageNodesByLabel(self):
        """The input volumes by image label; None for one no longer in the scene (a node with
        its ID in a scene closed and filled again is another volume)."""
        nodes = {}
        for label, nodeID in self.nodeIDByLabel.items():
            node = self.scene.GetNodeByID(nodeID)
            written = self._nodesByLabel.get(label)
            nodes[label] = node if written is None or node is written else None
        return nodes

    def checkInputs(self):
        """The checks that need nothing installed (run before Python packages are installed)."""
        if not self.nodesWithRoles:
            raise ValueError("no volume has a role: assign roles to the images to diagnose "
                             "(or load a study / a synthetic sample)")

    def prepare(self):
        """Check the inputs, then write the study folder (and edited lesion masks). Returns the
        ``binds diagnose`` arguments. Nothing is written when a check fails."""
        self.checkInputs()
        requireBINDSLib()
        sc.checkOneStudy(self.scene, self.nodesWithRoles)
        info = sc.studyInfo(self.scene, self.nodesWithRoles[0][0])
        study, self.nodeIDByLabel = sc.studyFromVolumeNodes(self.nodesWithRoles, info["study_id"],
                                                            info["study_date"], info["patient_id"])
        names = {node.GetID(): node.GetName() for node, _ in self.nodesWithRoles}
        self._nodesByLabel = {label: self.scene.GetNodeByID(nodeID) for label, nodeID in self.nodeIDByLabel.items()}
        self.nodeNames = {label: names[nodeID] for label, nodeID in self.nodeIDByLabel.items()}  # for messages
        masks = {}
        if self.useEditedLesions:
            self.passedLesions = {}
            masks = res.lesionMasksForReassessment(self.scene, self.imageNodesByLabel(), self.passedLesions)
            if not masks:
                raise ValueError("no lesion was edited: edit a 'Lesion' segment in the Segment Editor "
                                 "first, or use Apply")
        from BINDSLib.studyfolder import write_study_folder

        self.runFolder = newRunFolder(self.workFolder, "diagnose")
        self.studyFolder = os.path.join(self.runFolder, "study")
        self.outputFolder = os.path.join(self.runFolder, "output")
        write_study_folder(study, self.studyFolder)
        if masks:
            self.lesionMaskFiles = res.writeLesionMaskFiles(masks, self.imageNodesByLabel(),
                                                            os.path.join(self.runFolder, "masks"))
        return proc.diagnoseArguments(self.studyFolder, self.outputFolder, self.model, self.device, self.stage,
                                      self.lesionMaskFiles, overwrite=True, summary=self.summary)

    def start(self, onProgress=None, onLog=None, onFinished=None):
        """Prepare and start; ``onFinished(run)`` is called when outputs are loaded or it failed."""
        return self._start("diagnose", self._prepared(self.prepare), onProgress, onLog, onFinished)

    def load(self):
        images = self.imageNodesByLabel()
        gone = [self.nodeNames.get(label, label) for label, node in images.items() if node is None]
        if gone:  # checked before anything of earlier runs is removed
            raise ValueError(f"{', '.join(repr(n) for n in gone)} {'was' if len(gone) == 1 else 'were'} "
                             "removed from the scene during the run; the results were not loaded: run again")
        studyItem = sc.ensureStudyItem(self.scene, list(images.values()))
        self.results = res.loadDiagnosisResults(self.scene, self.outputFolder, images, studyItem)
        res.markPassed(self.passedLesions, self.results.report)

    def describe(self, message):
        """Image files of the temporary study folder named by their volumes: the user never saw
        those files, which are deleted by now."""
        if not self.studyFolder:
            return message
        for label, name in sorted(self.nodeNames.items(), key=lambda item: -len(item[0])):
            for folder in ("images", "masks"):
                message = message.replace(os.path.join(self.studyFolder, folder, f"{label}.nrrd"),
                                          f"volume '{name}' ({label})")
            message = message.replace(os.path.join(self.runFolder, "masks", f"{label}_lesion.nrrd"),
                                      f"the edited lesion of '{name}' ({label})")
        return message.replace(os.path.join(self.studyFolder, "study.json"), "the study") \
                      .replace(self.studyFolder, "the study")

    def cleanup(self):
        for folder in (self.studyFolder, os.path.join(self.runFolder or "", "masks")):
            if folder and os.path.isdir(folder):
                shutil.rmtree(folder, ignore_errors=True)


class RiskRun(_Run):
    """``binds risk`` on one woman's exam folders (DICOM folders, study folders or a history)."""

    def __init__(self, scene, examFolders, workFolder, model=None, device="auto", python=None,
                 baseEnvironment=None, name="BINDS risk", sameWoman=False):
        super().__init__(python, baseEnvironment)
        self.scene = scene
        self.examFolders = [os.fspath(p) for p in examFolders]
        self.sameWoman = sameWoman
        self.workFolder = workFolder
        self.model, self.device = model, device
        self.name = name
        self.runFolder = self.outputFolder = None
        self.results = None

    def checkInputs(self):
        """The checks that need nothing installed (run before Python packages are installed)."""
        if not self.examFolders:
            raise ValueError("no exam: add a woman's mammography exam folders (or pick her in the DICOM database)")
        missing = [p for p in self.examFolders if not os.path.exists(p)]
        if missing:
            raise ValueError(f"exam folder not found: {', '.join(missing)}")

    def prepare(self):
        self.checkInputs()
        self.runFolder = newRunFolder(self.workFolder, "risk")
        self.outputFolder = os.path.join(self.runFolder, "output")
        return proc.riskArguments(self.examFolders, self.outputFolder, self.model, self.device,
                                  sameWoman=self.sameWoman)

    def start(self, onProgress=None, onLog=None, onFinished=None):
        return self._start("risk", self._prepared(self.prepare), onProgress, onLog, onFinished)

    def load(self):
        self.results = riskres.loadRiskResults(self.scene, self.outputFolder, self.name)
