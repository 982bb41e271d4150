"""Where ``BINDSLib/`` and ``Resources/`` are, for an installed extension and for a clone.

Uses only ``os`` and ``sys`` (Testing/test_cmake_lists.py runs :func:`bindsRootDir` without
Slicer).
"""

import logging
import os
import sys
from typing import Optional

#: The folder that holds the module files (BINDS.py, BINDSRisk.py) and this package.
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bindsRootDir(moduleFilePath: str) -> Optional[str]:
    """Return the folder that holds ``BINDSLib/`` and ``Resources/`` for a module file, or None.

    In an installed extension they sit next to the module file, in ``qt-scripted-modules/``
    (see BINDS/CMakeLists.txt). In a clone whose ``BINDS/`` folder was added to Slicer's
    additional module paths they are one level up, at the repository root.
    """
    moduleDir = os.path.dirname(os.path.abspath(moduleFilePath))
    for candidate in (moduleDir, os.path.dirname(moduleDir)):
        if os.path.isfile(os.path.join(candidate, "BINDSLib", "__init__.py")):
            return candidate
    return None


def rootDir() -> Optional[str]:
    """:func:`bindsRootDir` of the BINDS module files."""
    return bindsRootDir(os.path.join(MODULE_DIR, "BINDS.py"))


def addBINDSLibToPythonPath() -> Optional[str]:
    """Make ``import BINDSLib`` work, and return the folder that holds it (None if not found).

    Only changes ``sys.path``: BINDSLib itself is imported later, by the code that needs it.
    """
    root = rootDir()
    if root is None:
        logging.error(
            "BINDS: BINDSLib was not found next to %s or in its parent folder. Reinstall the BINDS "
            "extension; when running from a clone, add the clone's BINDS/ folder (not the repository "
            "root) to Slicer's additional module paths.",
            MODULE_DIR,
        )
        return None
    normalized = os.path.normcase(os.path.abspath(root))
    if not any(entry and os.path.normcase(os.path.abspath(entry)) == normalized for entry in sys.path):
        sys.path.insert(0, root)
    return root


def resourcePath(relativePath: str) -> str:
    """Absolute path of ``Resources/<relativePath>``, in an installed extension or in a clone."""
    return os.path.join(rootDir() or MODULE_DIR, "Resources", relativePath)


def requireBINDSLib() -> str:
    """Like :func:`addBINDSLibToPythonPath`, but raise a clear error when BINDSLib is missing."""
    root = addBINDSLibToPythonPath()
    if root is None:
        raise RuntimeError(
            f"BINDSLib was not found next to {MODULE_DIR} or in its parent folder. Reinstall the BINDS "
            "extension, or add the clone's BINDS/ folder to Slicer's additional module paths.")
    return root
