"""The module files themselves (BINDS.py, BINDSRisk.py) on slicer-core, with the parts that need
the Slicer application stubbed: the ScriptedLoadableModule base classes, the parameter node
wrapper, ``slicer.app`` and Qt. Their logic classes and the diagnosis self-test
(BINDSTest.test_WholeFlowOnSyntheticCase) then run headless, with ``binds diagnose`` answered by
the stand-in of test_scene_run.py, so a typo or a wrong call in the module files fails here
rather than only inside Slicer. The widgets (Qt) are not exercised."""

import importlib
import json
import stat
import sys
import types
import unittest
from pathlib import Path
from unittest import mock

import pytest

slicer = pytest.importorskip("slicer")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "BINDS"))


def _parameter_node_wrapper(cls):
    """A small stand-in for slicer.parameterNodeWrapper: typed values kept as JSON parameters."""
    names = dict(getattr(cls, "__annotations__", {}))
    defaults = {name: getattr(cls, name, [] if "list" in str(kind) else None) for name, kind in names.items()}

    class Wrapped:
        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)

        def __getattr__(self, name):
            if name not in names:
                raise AttributeError(name)
            raw = self.parameterNode.GetParameter(name)
            return json.loads(raw) if raw else defaults[name]

        def __setattr__(self, name, value):
            if name not in names:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            self.parameterNode.SetParameter(name, json.dumps(value))

    Wrapped.__name__ = cls.__name__
    return Wrapped


class _Logic:
    def __init__(self):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
            node.SetSingletonTag(self.moduleName)
        return node


class _Module:
    def __init__(self, parent):
        self.parent = parent


class _Widget:
    pass


class _Test(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        pass


class _LayoutManager:
    @property
    def layout(self):
        return slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement()


@pytest.fixture()
def modules(monkeypatch, tmp_path):
    """BINDS and BINDSRisk imported with the application-only parts of Slicer stubbed."""
    from test_scene_run import FAKE_PYTHON

    fake_python = tmp_path / "PythonSlicer"
    fake_python.write_text(FAKE_PYTHON.format(python=sys.executable), encoding="utf-8")
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)

    stubs = {
        "qt": mock.MagicMock(),
        "slicer.ScriptedLoadableModule": types.SimpleNamespace(
            ScriptedLoadableModule=_Module, ScriptedLoadableModuleWidget=_Widget,
            ScriptedLoadableModuleLogic=_Logic, ScriptedLoadableModuleTest=_Test),
        "slicer.parameterNodeWrapper": types.SimpleNamespace(
            parameterNodeWrapper=_parameter_node_wrapper, Choice=lambda choices: tuple(choices)),
        "slicer.i18n": types.SimpleNamespace(tr=lambda text: text),
    }
    for name, stub in stubs.items():
        monkeypatch.setitem(sys.modules, name, stub)
    scene = slicer.vtkMRMLScene()
    for className in ("vtkMRMLLayoutNode", "vtkMRMLSelectionNode"):  # singletons survive scene.Clear()
        node = scene.CreateNodeByClass(className)
        node.SetSingletonTag(className)
        scene.AddNode(node)
    app = mock.MagicMock()
    app.temporaryPath = str(tmp_path / "slicer-temp")
    app.layoutManager.return_value = _LayoutManager()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer.util, "resetSliceViews", lambda: None)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)
    for name in ("BINDS", "BINDSRisk"):
        sys.modules.pop(name, None)
    binds = importlib.import_module("BINDS")
    risk = importlib.import_module("BINDSRisk")
    from BINDSSlicerLib import runs

    monkeypatch.setattr(runs, "slicerPython", lambda: str(fake_python))
    yield types.SimpleNamespace(binds=binds, risk=risk, scene=scene, app=app)
    for name in ("BINDS", "BINDSRisk"):
        sys.modules.pop(name, None)


def test_module_metadata_and_start_up_hooks(modules):
    parent = mock.MagicMock()
    modules.binds.BINDS(parent)
    assert parent.title == "BINDS" and parent.categories == ["BINDS"]
    modules.app.connect.assert_called_with("startupCompleted()", modules.binds.onStartupCompleted)
    modules.risk.BINDSRisk(parent)
    assert parent.title == "BINDS Risk"
    assert modules.binds.loadTerminology() is None  # no Terminologies module here: nothing to do


def test_diagnosis_self_test_runs_headless(modules, tmp_path):
    test = modules.binds.BINDSTest()
    test.setUp()
    test.test_ParameterNodeDefaults()
    test.test_ResourcesAreFound()
    test.test_BINDSLibIsImportable()
    test.setUp()
    # any diagnosis bundle folder will do: the stand-in process does not load it
    bundle = tmp_path / "stand-in-bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"weights_sha256": "0", "binds": {"kind": "diagnosis"}}))
    modules.binds.BINDSLogic().getParameterNode().modelBundle = str(bundle)
    test.test_WholeFlowOnSyntheticCase()
    # what the flow left in the scene: two runs of outputs, the edited segmentation kept
    from BINDSSlicerLib import results

    assert len(results.outputNodes(modules.scene, "report")) == 1
    assert len(results.editedSegmentations(modules.scene)) == 1


def test_diagnosis_logic_uses_the_parameter_node(modules):
    logic = modules.binds.BINDSLogic()
    parameters = logic.getParameterNode()
    parameters.stage = "1"
    parameters.device = "cpu"
    parameters.modelBundle = "/models/my-bundle"
    logic.loadSyntheticCase(seed=3, diagnosis="benign")
    run = logic.createDiagnosisRun()
    assert (run.stage, run.device, run.model) == ("1", "cpu", "/models/my-bundle")
    assert [role for _, role in run.nodesWithRoles][:4] == ["MG_L_CC", "MG_L_MLO", "MG_R_CC", "MG_R_MLO"]
    assert run.workFolder == str(Path(modules.app.temporaryPath) / "BINDS")


def test_load_study_reads_a_study_folder_with_binds_readers(modules, tmp_path):
    from BINDSLib.studyfolder import write_study_folder
    from BINDSLib.synthetic import make_study

    write_study_folder(make_study(4, modalities=("US",)), tmp_path / "study")
    nodes = modules.binds.BINDSLogic().loadStudy(str(tmp_path / "study"))
    assert len(nodes) == 1 and nodes[0].GetAttribute("BINDS.Role").startswith("US")


def test_risk_logic_keeps_exam_folders_and_exports(modules, tmp_path):
    logic = modules.risk.BINDSRiskLogic()
    logic.setExamFolders([tmp_path / "e2", tmp_path / "e1", tmp_path / "e2"])
    assert logic.getParameterNode().examFolders == [str(tmp_path / "e2"), str(tmp_path / "e1")]
    run = logic.createRiskRun()
    assert run.examFolders == [str(tmp_path / "e2"), str(tmp_path / "e1")] and not run.sameWoman
    logic.getParameterNode().sameWoman = True  # the panel's "one woman under different patient IDs"
    assert logic.createRiskRun().sameWoman
    logic.setExamFolders([tmp_path / "e2", tmp_path / "e1"])  # the same exams: still said of them
    assert logic.getParameterNode().sameWoman
    logic.setExamFolders([tmp_path / "e3"])  # another list (another woman): said of none of it
    assert not logic.getParameterNode().sameWoman and not logic.createRiskRun().sameWoman
    logic.setExamFolders([tmp_path / "e2", tmp_path / "e1"])
    with pytest.raises(ValueError, match="exam folder not found"):
        run.prepare()
    out = tmp_path / "out"
    out.mkdir()
    for name in ("report.json", "risk.csv", "trajectory.png"):
        (out / name).write_text(name)
    written = logic.exportResults(str(out), str(tmp_path / "export"))
    assert sorted(Path(p).name for p in written) == ["report.json", "risk.csv", "trajectory.png"]
    assert "Research use only" in modules.risk.riskSummaryHtml({"exams": [], "horizon_years": 5})
    # just below the threshold: enough digits to see it is below (not "1.70%" beside an unraised flag)
    html = modules.risk.riskSummaryHtml({"exams": [{"exam_date": "2020-01-01", "cumulative_risk": {"5": 0.016996}}],
                                         "horizon_years": 5, "thresholds": {"supplemental_mri_5y": 0.017}})
    assert "<b>1.6996%</b> (threshold 1.7000%)" in html


def test_result_summary_shows_the_key_numbers(modules):
    report = {"stage": 2, "malignancy_probability": 0.8731, "threshold": 0.5, "recommendation": "biopsy",
              "subtype": "luminal_b", "subtype_probabilities": {"luminal_b": 0.61}, "user_lesion_masks": ["MR_DCE1"],
              "notes": ["stage 2 asked for"], "finding_probability": 0.9412}
    html = modules.binds.resultSummaryHtml(report)
    for text in ("Stage 2", "0.873", "biopsy", "luminal b (0.61)", "MR_DCE1", "stage 2 asked for",
                 "Research use only; not for clinical use.", "abnormal vs normal): 0.941"):
        assert text in html
    report["finding_probability"] = None  # a report without one (written before finding probabilities existed) says nothing
    assert "abnormal vs normal" not in modules.binds.resultSummaryHtml(report)


def test_risk_self_test_runs_headless_with_the_shipped_bundle(modules, monkeypatch):
    from BINDSLib.bundle import list_bundles

    if "binds-risk-demo" not in [p.name for p in list_bundles(kind="risk")]:
        pytest.skip("the shipped risk bundle is not built yet")
    from BINDSSlicerLib import runs

    monkeypatch.setattr(runs, "slicerPython", lambda: sys.executable)  # the real binds risk
    test = modules.risk.BINDSRiskTest()
    test.setUp()
    test.test_ParameterNode()
    test.setUp()
    test.test_WholeFlowOnSyntheticHistory()


class _Combo:
    """Enough of a QComboBox for the fill functions (signals blocked or not)."""

    def __init__(self):
        self.items, self.blocked, self.currentIndex = [], False, -1
        self.count = 0

    def blockSignals(self, block):
        was, self.blocked = self.blocked, block
        return was

    def clear(self):
        self.items, self.count = [], 0

    def addItem(self, text, data):
        self.items.append((text, data))
        self.count = len(self.items)

    def setItemData(self, *args):
        pass

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None


def test_panels_open_when_the_model_list_cannot_be_read(modules, monkeypatch):
    """A model list that fails (an unreadable bundle folder) is shown as an error; the device
    list is still filled and the model list's signals are not left blocked (the choice would
    never be saved again)."""
    import BINDSLib.bundle
    from BINDSSlicerLib import widgets

    def unreadable(kind=None):
        raise PermissionError("[Errno 13] Permission denied: '/models'")

    monkeypatch.setattr(BINDSLib.bundle, "list_bundles", unreadable)
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **k: shown.append(text))
    models, devices = _Combo(), _Combo()
    widgets.fillSettings((models, devices), "diagnosis", types.SimpleNamespace(modelBundle="x", device="cpu"))
    assert shown and "Permission denied" in shown[0]
    assert not models.blocked and not devices.blocked
    assert devices.items[devices.currentIndex][1] == "cpu"


def test_a_run_that_cannot_start_leaves_nothing_to_cancel(modules):
    from BINDSSlicerLib import widgets

    class Unstartable:
        finished = False

        def start(self, **callbacks):
            raise ValueError("no volume has a role")

        def cancel(self):
            raise AssertionError("cancelled a run that never started")

    status = types.SimpleNamespace(text="")
    controller = widgets.RunController(mock.MagicMock(), status, [mock.MagicMock()], mock.MagicMock(), lambda run: None)
    with pytest.raises(ValueError):
        controller.start(Unstartable())
    assert not controller.running
    controller.cancel()  # e.g. the scene is closed next: nothing to cancel, no "Cancelling..."
    assert status.text == ""


def test_the_model_and_device_lists_follow_the_parameter_node(modules, tmp_path):
    """A scene loaded while the panel is open changes the parameter node behind the lists (not
    bound by connectGui); Apply reads the node, so the lists must show what it holds."""
    from BINDSSlicerLib import widgets

    node = types.SimpleNamespace(modelBundle="", device="auto")
    models, devices = _Combo(), _Combo()
    widgets.fillSettings((models, devices), "diagnosis", node, autoItem=True)
    assert models.itemData(models.currentIndex) == "auto" and devices.itemData(devices.currentIndex) == "auto"
    node.modelBundle, node.device = "binds-us-busi", "cpu"  # the loaded scene's choices
    widgets.followSettings((models, devices), "diagnosis", node, autoItem=True)
    assert models.itemData(models.currentIndex) == "binds-us-busi" and devices.itemData(devices.currentIndex) == "cpu"
    assert not models.blocked and not devices.blocked
    # a bundle folder the list does not hold yet: added, and selected
    folder = str(tmp_path / "my-bundle")
    node.modelBundle = folder
    widgets.followSettings((models, devices), "diagnosis", node, autoItem=True)
    assert models.itemData(models.currentIndex) == folder
    node.modelBundle = ""  # none chosen: the first entry, "auto", as Apply reads it
    widgets.followSettings((models, devices), "diagnosis", node, autoItem=True)
    assert models.itemData(models.currentIndex) == "auto"
