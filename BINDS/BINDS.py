"""BINDS diagnosis module (placeholder).

Follows Slicer's scripted-module template (Utilities/Templates/Modules/Scripted/TemplateKey.py):
module metadata, a typed parameter node, a widget built from ``Resources/UI/BINDS.ui``, a logic
class and a self-test.

Only Slicer's own packages are imported at file scope. numpy, torch, monai, pydicom, SimpleITK and
BINDSLib are imported inside the functions that use them, so Slicer starts fast and the module
loads before the PyTorch extension has installed torch.
"""

import logging
import os
import sys
from typing import Optional

import qt

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

#
# Where BINDSLib/ and Resources/ are
#


def bindsRootDir(moduleFilePath: str) -> Optional[str]:
    """Return the folder that holds ``BINDSLib/`` and ``Resources/`` for this module file, or None.

    In an installed extension they sit next to the module file, in ``qt-scripted-modules/``
    (see BINDS/CMakeLists.txt). In a clone whose ``BINDS/`` folder was added to Slicer's
    additional module paths they are one level up, at the repository root.

    Uses only ``os``, so that Testing/test_cmake_lists.py can run it without Slicer.
    """
    moduleDir = os.path.dirname(os.path.abspath(moduleFilePath))
    for candidate in (moduleDir, os.path.dirname(moduleDir)):
        if os.path.isfile(os.path.join(candidate, "BINDSLib", "__init__.py")):
            return candidate
    return None


def addBINDSLibToPythonPath() -> Optional[str]:
    """Make ``import BINDSLib`` work, and return the folder that holds it (None if not found).

    Only changes ``sys.path``: BINDSLib itself is imported later, by the code that needs it.
    """
    rootDir = bindsRootDir(__file__)
    if rootDir is None:
        logging.error(
            "BINDS: BINDSLib was not found next to %s or in its parent folder. Reinstall the BINDS "
            "extension; when running from a clone, add the clone's BINDS/ folder (not the repository "
            "root) to Slicer's additional module paths.",
            os.path.dirname(os.path.abspath(__file__)),
        )
        return None
    normalizedRootDir = os.path.normcase(os.path.abspath(rootDir))
    if not any(entry and os.path.normcase(os.path.abspath(entry)) == normalizedRootDir for entry in sys.path):
        sys.path.insert(0, rootDir)
    return rootDir


def resourcePath(relativePath: str) -> str:
    """Absolute path of ``Resources/<relativePath>``, in an installed extension or in a clone."""
    rootDir = bindsRootDir(__file__) or os.path.dirname(os.path.abspath(__file__))
    return os.path.join(rootDir, "Resources", relativePath)


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
            "AI-assisted breast cancer diagnosis from multimodal breast imaging."
            "<br><b>Research use only; not for clinical use.</b> Results have not been cleared by any "
            "regulatory body and must not guide the care of a patient."
            '<br>See the <a href="https://github.com/binds-project/SlicerBINDS">BINDS documentation</a>.'
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


#
# BINDSParameterNode
#


@parameterNodeWrapper
class BINDSParameterNode:
    """The parameters of the BINDS module, saved with the scene.

    studyFolder - folder of the study to diagnose; set by "Load study..." (not available yet).
    """

    studyFolder: str = ""


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
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def resourcePath(self, filename: str) -> str:
        """Resources/ is shared by the BINDS modules and is not next to the module file in a clone."""
        return resourcePath(filename)

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Widgets with a "SlicerParameterName" dynamic property in the .ui file are bound to
        # the parameter of that name by connectGui() (see setParameterNode).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BINDS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BINDSLogic()

        # Update the parameter node when the scene is closed.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # "Load study..." (self.ui.loadStudyButton) is disabled in the .ui file until study
        # loading is implemented.

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed."""
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[BINDSParameterNode]) -> None:
        """Bind the GUI to the given parameter node (None unbinds it)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)


#
# BINDSLogic
#


class BINDSLogic(ScriptedLoadableModuleLogic):
    """Computation of the module, usable without the GUI. Uses ScriptedLoadableModuleLogic
    base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> BINDSParameterNode:
        return BINDSParameterNode(super().getParameterNode())

    @staticmethod
    def bindsLibVersion() -> str:
        """Version of the BINDSLib core this module runs on."""
        addBINDSLibToPythonPath()
        import BINDSLib

        return BINDSLib.__version__


#
# BINDSTest
#


class BINDSTest(ScriptedLoadableModuleTest):
    """Self-test, run from the Reload & Test button or by ctest. Uses ScriptedLoadableModuleTest
    base class, available at:
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
        for relativePath in ("Icons/BINDS.png", "UI/BINDS.ui"):
            self.assertTrue(os.path.isfile(resourcePath(relativePath)), f"missing {resourcePath(relativePath)}")
        self.delayDisplay("Resources found")

    def test_ParameterNodeDefaults(self):
        self.delayDisplay("Creating the parameter node")
        parameterNode = BINDSLogic().getParameterNode()
        self.assertEqual(parameterNode.studyFolder, "")
        parameterNode.studyFolder = "/data/study-1"
        self.assertEqual(BINDSLogic().getParameterNode().studyFolder, "/data/study-1")
        self.delayDisplay("Parameter node test passed")
