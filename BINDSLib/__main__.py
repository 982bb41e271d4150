"""``python -m BINDSLib`` runs the ``binds`` command."""

import os
import sys

# BINDS' private packages (Slicer: pydicom 3 next to Slicer's own pydicom 2.4; see
# BINDS/BINDSSlicerLib/install.py) go first on sys.path, whatever order the PythonSlicer
# launcher gave PYTHONPATH, and before anything imports pydicom.
for _folder in reversed([p for p in os.environ.get("BINDS_PRIVATE_SITE", "").split(os.pathsep) if p]):
    if os.path.isdir(_folder) and _folder not in sys.path[:1]:
        sys.path.insert(0, _folder)

from .cli import main  # noqa: E402

sys.exit(main())
