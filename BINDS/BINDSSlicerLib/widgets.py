"""Qt pieces the BINDS module widgets share: model and device selectors, folder dialogs and the
controller that runs a :class:`.runs.DiagnosisRun` / :class:`.runs.RiskRun` from the GUI
(progress bar, Cancel, errors as a short message with the details in the log).

Only what needs Qt is here; everything it drives is in the Qt-free modules of this package.
"""

import logging
import os

import qt
import slicer

from . import install
from .paths import requireBINDSLib
from .process import pollWithQtTimer

DEVICES = (("Auto (GPU when available)", "auto"), ("CPU", "cpu"), ("GPU", "cuda"))


def fillModelComboBox(comboBox, kind, current, extraFolders=(), autoItem=False):
    """List the model bundles of ``kind`` (shipped, user folder, $BINDS_MODEL_PATH) plus folders
    the user chose; select ``current`` (a bundle name or folder). ``autoItem``: first offer
    "auto" (``binds diagnose --model auto``: the bundle is chosen per study by modality)."""
    requireBINDSLib()
    from BINDSLib.bundle import list_bundles

    bundles = list_bundles(kind=kind)  # (may fail: before the list is touched)
    wasBlocked = comboBox.blockSignals(True)
    try:  # signals come back even when filling fails, or the selection would never be saved again
        comboBox.clear()
        if autoItem:
            comboBox.addItem("Automatic (by modality; synthetic or real)", "auto")
            comboBox.setItemData(0, "synthetic cases: the demo bundle; real images: the bundle trained "
                                    "on real images of their modality", qt.Qt.ToolTipRole)
        for path in bundles:
            comboBox.addItem(path.name, path.name)
            comboBox.setItemData(comboBox.count - 1, str(path), qt.Qt.ToolTipRole)
        for folder in extraFolders:
            if folder and comboBox.findData(folder) < 0:
                comboBox.addItem(os.path.basename(os.path.normpath(folder)) + " (folder)", folder)
                comboBox.setItemData(comboBox.count - 1, folder, qt.Qt.ToolTipRole)
        if current and comboBox.findData(current) < 0:
            comboBox.addItem(current, current)
        index = comboBox.findData(current)
        comboBox.setCurrentIndex(index if index >= 0 else 0)
    finally:
        comboBox.blockSignals(wasBlocked)


def checkBundleFolder(folder, kind):
    """Raise a clear error when ``folder`` is not a model bundle of ``kind``."""
    requireBINDSLib()
    from BINDSLib.bundle import read_metadata

    meta = read_metadata(folder)
    found = meta.get("binds", {}).get("kind")
    if found != kind:
        raise ValueError(f"{folder} is a {found!r} model bundle; a {kind!r} bundle is needed here")


def openUserModelFolder():
    requireBINDSLib()
    from BINDSLib.bundle import user_model_dir

    folder = user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))


def fillDeviceComboBox(comboBox, current):
    wasBlocked = comboBox.blockSignals(True)
    try:
        comboBox.clear()
        for text, value in DEVICES:
            comboBox.addItem(text, value)
        index = comboBox.findData(current or "auto")
        comboBox.setCurrentIndex(index if index >= 0 else 0)
    finally:
        comboBox.blockSignals(wasBlocked)


def showGpuName(comboBox):
    """Put the GPU's name in the device list (imports torch only when it is installed)."""
    index = comboBox.findData("cuda")
    if index < 0:
        return
    if not install.torchInstalled():  # nothing to ask yet: PyTorch comes with the first Apply
        comboBox.setItemText(index, "GPU (CUDA)")
        return
    name = install.gpuName()
    comboBox.setItemText(index, f"GPU: {name}" if name else "GPU (none found)")
    item = comboBox.model().item(index)
    if item is not None and not name:
        item.setEnabled(False)


def fillSettings(comboBoxes, kind, parameterNode, autoItem=False):
    """Fill a panel's model and device lists from its parameter node. A model list that cannot
    be read (BINDSLib missing, an unreadable bundle folder) is shown as an error; the device
    list and the rest of the panel are set up all the same."""
    modelComboBox, deviceComboBox = comboBoxes
    try:
        fillModelComboBox(modelComboBox, kind, parameterNode.modelBundle, autoItem=autoItem)
    except Exception as e:  # noqa: BLE001 - shown, not raised: the panel must still open
        logging.exception("BINDS: could not list the model bundles")
        slicer.util.errorDisplay(f"Could not list the model bundles: {e}")
    fillDeviceComboBox(deviceComboBox, parameterNode.device)


def followSettings(comboBoxes, kind, parameterNode, autoItem=False):
    """Select in the model and device lists what the parameter node holds when it changed
    behind the panel (a scene loaded while the panel is open, a script): Apply reads the node,
    so the lists must show it. A model the list lacks (a folder) is added by filling it again."""
    modelComboBox, deviceComboBox = comboBoxes
    model, device = parameterNode.modelBundle, parameterNode.device or "auto"
    if not model and modelComboBox.count:  # none chosen: the list's first entry, as when it was filled
        _select(modelComboBox, 0)
    elif model and modelComboBox.itemData(modelComboBox.currentIndex) != model:
        if modelComboBox.findData(model) < 0:
            fillSettings(comboBoxes, kind, parameterNode, autoItem=autoItem)
            return
        _select(modelComboBox, modelComboBox.findData(model))
    if deviceComboBox.itemData(deviceComboBox.currentIndex) != device and deviceComboBox.findData(device) >= 0:
        _select(deviceComboBox, deviceComboBox.findData(device))


def _select(comboBox, index):
    wasBlocked = comboBox.blockSignals(True)  # (the node already holds it)
    try:
        comboBox.setCurrentIndex(index)
    finally:
        comboBox.blockSignals(wasBlocked)


def chooseFolder(parent, caption, start=""):
    return qt.QFileDialog.getExistingDirectory(parent, caption, start or os.path.expanduser("~")) or ""


def revealFolder(folder):
    qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))


class RunController:
    """Runs a BINDS run from a module panel.

    While it runs: Apply buttons disabled, Cancel enabled, progress bar and status label updated
    from the process's ``PROGRESS`` lines; every other line goes to the application log. At the
    end ``onSucceeded(run)`` is called, or the error is shown as one line (details in the log
    and in the message box's details).
    """

    def __init__(self, progressBar, statusLabel, startButtons, cancelButton, onSucceeded, title="BINDS"):
        self.progressBar = progressBar
        self.statusLabel = statusLabel
        self.startButtons = list(startButtons)
        self.cancelButton = cancelButton
        self.onSucceeded = onSucceeded
        self.title = title
        self.run = None
        self.timer = None
        self.progressBar.hide()
        self.cancelButton.clicked.connect(self.cancel)

    @property
    def running(self):
        return self.run is not None and not self.run.finished

    def start(self, run):
        self.run = run
        self._setRunning(True)
        self.statusLabel.text = "Starting..."
        try:
            run.start(onProgress=self._onProgress, onLog=self._onLog, onFinished=self._onFinished)
        except Exception:
            self.run = None  # never started: nothing to cancel (or to say "Cancelling..." about)
            self._setRunning(False)
            self.statusLabel.text = ""
            raise
        self.timer = pollWithQtTimer(run.process)

    def cancel(self):
        if self.running:
            self.statusLabel.text = "Cancelling..."
            self.run.cancel()

    def shutdown(self):
        """Stop a run for good (the module is destroyed: no timer will poll it again), so that
        it still removes its copies of the patient's images."""
        if self.running:
            self.run.stop()

    def _setRunning(self, running):
        for button in self.startButtons:
            button.enabled = not running
        self.cancelButton.enabled = running
        self.progressBar.setVisible(running)
        if running:
            self.progressBar.setRange(0, 0)  # busy until the first progress line

    def _onProgress(self, progress):
        self.progressBar.setRange(0, 100)
        self.progressBar.value = progress.percent
        self.statusLabel.text = progress.message or f"{progress.done}/{progress.total}"

    def _onLog(self, stream, line):
        logging.info("%s: %s", self.title, line)

    def _onFinished(self, run):
        self._setRunning(False)
        if run.cancelled:
            self.statusLabel.text = "Cancelled."
            return
        if run.error:
            self.statusLabel.text = f"Failed: {run.error}"
            logging.error("%s failed: %s\n%s", self.title, run.error, run.errorDetails)
            slicer.util.errorDisplay(f"{self.title} failed: {run.error}", detailedText=run.errorDetails)
            return
        self.statusLabel.text = "Done."
        with slicer.util.tryWithErrorDisplay(f"{self.title}: showing the results failed."):
            self.onSucceeded(run)
