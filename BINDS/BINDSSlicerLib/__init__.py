"""Slicer-side code shared by the BINDS modules (``BINDS.py``, ``BINDSRisk.py``).

Slicer loads every top-level ``.py`` file of a module folder as a module, so the code the
modules share lives in this package:

* :mod:`.paths` - where ``BINDSLib/`` and ``Resources/`` are (installed extension or clone);
* :mod:`.scene` - volume nodes <-> BINDSLib images and studies, study folders from the scene,
  subject hierarchy, slice-view display (MRML only: runs headless on slicer-core);
* :mod:`.results` - a ``binds diagnose`` output folder as segmentation, saliency, table nodes;
  user edits of the lesion segments, and their export;
* :mod:`.riskresults` - a ``binds risk`` output folder as table and plot nodes;
* :mod:`.roles` - role guessing from DICOM attributes or node names (pure);
* :mod:`.process` - ``binds`` in a background process with progress and cancel;
* :mod:`.install` - dependency check and installation after the user confirms;
* :mod:`.sampledata` - synthetic teaching cases in the Sample Data module.

Nothing heavy (numpy, torch, BINDSLib, ...) is imported at file scope: Slicer imports this
package when it loads the modules, before the dependencies may be installed.
"""
