"""Synthetic teaching cases in the Sample Data module, generated on this computer (no download).

The cases come from ``BINDSLib.synthetic`` (docs/SYNTHETIC.md): deterministic from a seed, marked
synthetic everywhere. A multimodal study becomes volume nodes named by their role
(``MG_L_CC``... ``MR_ADC``) with the role set, under a patient/study item; a screening history
is written as an exam-history folder for BINDS Risk, and its latest exam is shown.
"""

import logging
import os

from . import scene as sc
from .paths import resourcePath

CATEGORY = "BINDS"
#: (sample name, seed, diagnosis)
STUDY_SAMPLES = (
    ("BINDS synthetic malignant case", 7, "malignant"),
    ("BINDS synthetic benign case", 11, "benign"),
)
HISTORY_SAMPLE = ("BINDS synthetic screening history", 3)
URI_SCHEME = "binds-synthetic:"


def sampleUri(kind, seed, diagnosis=""):
    return f"{URI_SCHEME}{kind}/{seed}/{diagnosis}"


def parseSampleUri(uri):
    """``binds-synthetic:study/7/malignant`` -> ``("study", 7, "malignant")``."""
    if not uri.startswith(URI_SCHEME):
        raise ValueError(f"not a BINDS synthetic sample: {uri!r}")
    kind, seed, diagnosis = (uri[len(URI_SCHEME):].split("/") + ["", ""])[:3]
    return kind, int(seed), diagnosis or None


def loadSyntheticStudy(scene, seed, diagnosis=None, size="demo"):
    """Generate a synthetic multimodal study and add it to the scene. Returns nodes by label."""
    from .paths import requireBINDSLib

    requireBINDSLib()
    from BINDSLib.synthetic import make_study

    study = make_study(seed, diagnosis=diagnosis, size=size)
    return sc.addStudyToScene(scene, study, patientName=f"Synthetic woman {seed} (SYNTHETIC)")


def writeSyntheticHistory(seed, folder, size="demo"):
    """Write a synthetic woman's screening exams as an exam-history folder (``history.json`` +
    one study folder per exam). Returns ``(history, [exam folders in date order])``."""
    from .paths import requireBINDSLib

    requireBINDSLib()
    import json

    from BINDSLib.studyfolder import write_history
    from BINDSLib.synthetic.longitudinal import make_history

    history = make_history(seed, size=size)
    write_history(history, folder, overwrite=True)
    with open(os.path.join(folder, "history.json"), encoding="utf-8") as f:
        entries = json.load(f)["exams"]
    return history, [os.path.join(folder, e["study_folder"]) for e in entries]


def registerSampleData():
    """Add the BINDS synthetic cases to the Sample Data module (called at Slicer start-up)."""
    import SampleData

    thumbnail = resourcePath("Icons/BINDSSynthetic.png")
    sources = [(name, sampleUri("study", seed, diagnosis)) for name, seed, diagnosis in STUDY_SAMPLES]
    sources.append((HISTORY_SAMPLE[0], sampleUri("history", HISTORY_SAMPLE[1])))
    for name, uri in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=name, uris=uri, fileNames=uri.replace(":", "-").replace("/", "-"),
            nodeNames=None, thumbnailFileName=thumbnail if os.path.isfile(thumbnail) else None,
            loadFileType=None, customDownloader=loadSample)


def loadSample(source):
    """Sample Data's customDownloader: generate and load the case of ``source``.

    Returns the loaded volume nodes (a study) or the exam folders (a history).
    """
    import slicer

    kind, seed, diagnosis = parseSampleUri(source.uris[0])
    with slicer.util.tryWithErrorDisplay("Failed to generate the BINDS synthetic case.", waitCursor=True):
        if kind == "study":
            nodes = loadSyntheticStudy(slicer.mrmlScene, seed, diagnosis)
            first = next(iter(nodes.values()))
            slicer.util.setSliceViewerLayers(background=first, fit=True, rotateToVolumePlane=True)
            return list(nodes.values())
        if kind == "history":
            folder = os.path.join(slicer.app.temporaryPath, "BINDS", f"synthetic-history-{seed}")
            history, exams = writeSyntheticHistory(seed, folder)
            nodes = sc.addStudyToScene(slicer.mrmlScene, history.exams[-1],
                                       patientName=f"Synthetic woman {seed} (SYNTHETIC)")
            slicer.util.setSliceViewerLayers(background=next(iter(nodes.values())), fit=True, rotateToVolumePlane=True)
            try:
                import BINDSRisk

                BINDSRisk.BINDSRiskLogic().setExamFolders(exams)
            except ImportError:
                logging.warning("BINDS: the BINDS Risk module is not loaded; exams written to %s", folder)
            return exams
        raise ValueError(f"unknown BINDS sample {source.uris[0]!r}")
