"""A ``binds diagnose`` output folder in the scene, user edits of the lesions, and export.

Output folder (BINDSLib/diagnose.py): ``report.json``, ``<label>.seg.nrrd`` (segments
``lesion`` and ``salient_region``), ``<label>_saliency.nrrd``, ``results.csv``,
``summary.png``. For each image of the report this module adds, in a subject hierarchy folder
under the image's study:

* a segmentation node read by Slicer's own segmentation reader (names, colours, terminology
  from the file), with the image as reference geometry, placed under the image's transform;
* a saliency volume node, shown with a heat colour map and its low values transparent;

and one table node with the report (BINDSLib.outputs.report.report_table_rows plus a row per
image). Pure MRML: runs headless on slicer-core (Testing/test_scene_*.py).

User edits
----------
When a segmentation is loaded, a SHA-256 of its lesion mask on the image grid is stored on the
node (``BINDS.LesionChecksum``). The lesion is *edited* when the mask no longer has that
checksum (or the segment was removed). A new run never overwrites an edited segmentation: the
old unedited outputs of the same images are removed, the edited ones are kept, and the new
results are new nodes; a kept segmentation's salient region (of its own, older run) is hidden.
"Re-assess with edited lesions" writes the edited lesion masks as NRRD files on their image
grids and passes them to ``binds diagnose --lesion-mask LABEL=FILE``: per image the lesion
edited most recently and not passed since (``BINDS.PassedChecksum``, set once the run's results
are loaded), else the newest run's lesion that came from the user; for the MRI, whose sequences
the model reads with one outline, only the most recently edited sequence's.
"""

import json
import logging
import os

import slicer
import vtk

from . import scene as sc

OUTPUT_ATTRIBUTE = "BINDS.Output"  # "segmentation", "saliency", "report"
LABEL_ATTRIBUTE = "BINDS.Label"
RUN_ATTRIBUTE = "BINDS.Run"
LESION_CHECKSUM_ATTRIBUTE = "BINDS.LesionChecksum"
PASSED_CHECKSUM_ATTRIBUTE = "BINDS.PassedChecksum"  # the lesion as last passed to a run that loaded
LESION_SOURCE_ATTRIBUTE = "BINDS.LesionSource"  # "predicted", "user" or "user_shared" (not passed back)
REPORT_JSON_ATTRIBUTE = "BINDS.ReportJSON"
FOLDER_ATTRIBUTE = "BINDS.ResultsFolder"
IMAGE_REFERENCE_ROLE = "BINDS.image"
HEAT_COLOR_ATTRIBUTE = "BINDS.ColorMap"

LESION_SEGMENT_ID = "lesion"
LESION_SEGMENT_NAME = "Lesion"
SALIENT_SEGMENT_ID = "salient_region"

#: Saliency below this value is transparent in the slice views.
SALIENCY_DISPLAY_THRESHOLD = 0.2
#: Opacity of the saliency overlay (foreground layer).
SALIENCY_OPACITY = 0.5
HEAT_COLOR_NAME = "BINDS Heat"


# ---------------------------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------------------------


def heatColor(t):
    """RGB of the heat map at ``t`` in [0, 1]: black, red, yellow, white (as MATLAB's "hot")."""
    t = min(1.0, max(0.0, float(t)))
    return (min(1.0, t / 0.375), min(1.0, max(0.0, (t - 0.375) / 0.375)), min(1.0, max(0.0, (t - 0.75) / 0.25)))


def heatColorNode(scene, numberOfColors=256):
    """The BINDS heat colour table of the scene (created on first use, shared by all maps)."""
    collection = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for i in range(collection.GetNumberOfItems()):
        node = collection.GetItemAsObject(i)
        if node.GetAttribute(HEAT_COLOR_ATTRIBUTE) == "heat":
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", HEAT_COLOR_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(numberOfColors)
    for index in range(numberOfColors):
        r, g, b = heatColor(index / (numberOfColors - 1))
        node.SetColor(index, f"heat{index}", r, g, b, 1.0)
    node.SetAttribute(HEAT_COLOR_ATTRIBUTE, "heat")
    node.SetAttribute("Category", "BINDS")
    return node


# ---------------------------------------------------------------------------------------------
# Reading files into nodes
# ---------------------------------------------------------------------------------------------


def _removeStorageNode(scene, node):
    storage = node.GetStorageNode()
    if storage is not None:
        node.SetAndObserveStorageNodeID(None)
        scene.RemoveNode(storage)


def readSegmentationFile(scene, path, name):
    """A segmentation node read from a ``.seg.nrrd`` by Slicer's own reader."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(os.fspath(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise RuntimeError(f"{path}: Slicer could not read this segmentation file")
    _removeStorageNode(scene, node)  # the file is in a temporary folder; save writes a new one
    node.CreateDefaultDisplayNodes()
    return node


def readVolumeFile(scene, path, name):
    """A scalar volume node read from an image file by Slicer's own reader."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(os.fspath(path))
    storage.SetSingleFile(True)
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise RuntimeError(f"{path}: Slicer could not read this image file")
    _removeStorageNode(scene, node)
    return node


# ---------------------------------------------------------------------------------------------
# Segment masks on an image grid
# ---------------------------------------------------------------------------------------------


def lesionSegmentId(segmentationNode):
    """ID of the lesion segment (by ID, else by name), or None when it was removed."""
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetSegment(LESION_SEGMENT_ID) is not None:
        return LESION_SEGMENT_ID
    segmentId = segmentation.GetSegmentIdBySegmentName(LESION_SEGMENT_NAME)
    return segmentId or None


def segmentMask(segmentationNode, segmentId, referenceVolumeNode):
    """The segment as a ``uint8`` 0/1 array ``(depth, rows, cols)`` on the reference volume's grid.

    Uses Slicer's export to a labelmap (which resamples whatever geometry the segmentation
    has after editing onto the reference grid, applying transforms between the two).
    """
    import numpy as np

    scene = segmentationNode.GetScene()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentId)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__BINDS_temp__")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, ids, labelmap, referenceVolumeNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok:
            raise RuntimeError(f"could not export segment '{segmentId}' of '{segmentationNode.GetName()}'")
        mask = (np.array(slicer.util.arrayFromVolume(labelmap)) > 0).astype(np.uint8)
    finally:
        display = labelmap.GetDisplayNode()
        if display is not None:
            color = display.GetColorNode()
            scene.RemoveNode(display)
            # the export makes a colour table for the labelmap ("<segmentation>_ColorTable")
            if color is not None and color.GetName().startswith(segmentationNode.GetName() + "_ColorTable"):
                scene.RemoveNode(color)
        scene.RemoveNode(labelmap)
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    if mask.shape != (dims[2], dims[1], dims[0]):
        raise RuntimeError(f"segment '{segmentId}' exported with shape {mask.shape}, expected "
                           f"{(dims[2], dims[1], dims[0])}")
    return mask


def setSegmentMask(segmentationNode, segmentId, mask, referenceVolumeNode):
    """Replace a segment's voxels by ``mask`` ``(depth, rows, cols)`` given on the reference grid
    (what an edit in the Segment Editor does; also used to add truth masks)."""
    import numpy as np

    scene = segmentationNode.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__BINDS_temp__")
    try:
        labelmap.SetIJKToRASMatrix(sc.vtkMatrixFromArray(sc.ijkToRASArray(referenceVolumeNode)))
        labelmap.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())  # (where it is)
        sc.setVolumeVoxels(labelmap, (np.asarray(mask) > 0).astype(np.uint8))
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode, ids):
            raise RuntimeError(f"could not set segment '{segmentId}' of '{segmentationNode.GetName()}'")
    finally:
        scene.RemoveNode(labelmap)


def maskChecksum(mask):
    import hashlib

    import numpy as np

    mask = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    digest = hashlib.sha256(str(mask.shape).encode("ascii"))
    digest.update(mask.tobytes())
    return digest.hexdigest()


def imageOfOutput(outputNode):
    """The input volume an output node belongs to."""
    return outputNode.GetNodeReference(IMAGE_REFERENCE_ROLE)


def currentLesionMask(segmentationNode):
    """The lesion mask of a BINDS segmentation on its image grid (None if the segment is gone)."""
    segmentId = lesionSegmentId(segmentationNode)
    image = imageOfOutput(segmentationNode)
    if segmentId is None or image is None:
        return None
    return segmentMask(segmentationNode, segmentId, image)


def isLesionEdited(segmentationNode):
    """Whether the user changed (or removed) the lesion segment since it was loaded."""
    recorded = segmentationNode.GetAttribute(LESION_CHECKSUM_ATTRIBUTE)
    if not recorded:
        return False
    mask = currentLesionMask(segmentationNode)
    return mask is None or maskChecksum(mask) != recorded


# ---------------------------------------------------------------------------------------------
# Finding BINDS outputs
# ---------------------------------------------------------------------------------------------


def outputNodes(scene, kind=None, image=None):
    """BINDS output nodes (optionally of one kind, for one image), oldest run first."""
    found = []
    for className in ("vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode", "vtkMRMLTableNode"):
        collection = scene.GetNodesByClass(className)
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            if not node.GetAttribute(OUTPUT_ATTRIBUTE) or node in found:
                continue
            if kind is not None and node.GetAttribute(OUTPUT_ATTRIBUTE) != kind:
                continue
            if image is not None and imageOfOutput(node) is not image:
                continue
            found.append(node)
    return sorted(found, key=lambda n: int(n.GetAttribute(RUN_ATTRIBUTE) or 0))


#: subject hierarchy node attribute: the index of the newest run loaded into the scene
LAST_RUN_ATTRIBUTE = "BINDS.LastRunIndex"


def nextRunIndex(scene):
    """One more than any run loaded into this scene, including runs whose outputs were since
    replaced: "BINDS results 2" after "BINDS results 1", never a second "BINDS results 1"."""
    runs = [int(n.GetAttribute(RUN_ATTRIBUTE) or 0) for n in outputNodes(scene)]
    try:
        last = int(sc.subjectHierarchy(scene).GetAttribute(LAST_RUN_ATTRIBUTE) or 0)
    except ValueError:
        last = 0
    return max(runs + [last]) + 1


def _lesionChecksum(segmentationNode):
    """The checksum of the lesion as it is now ("none": the segment was deleted)."""
    mask = currentLesionMask(segmentationNode)
    return "none" if mask is None else maskChecksum(mask)


def _editedSincePassed(segmentationNode):
    """Edited since it was loaded, and not as it was last passed to a run."""
    if not isLesionEdited(segmentationNode):
        return False
    passed = segmentationNode.GetAttribute(PASSED_CHECKSUM_ATTRIBUTE)
    return not passed or _lesionChecksum(segmentationNode) != passed


def _editTime(segmentationNode):
    """When the lesion was last changed, as VTK's modification counter (comparable across nodes):
    the lesion segment's and its painted data's, not the node's (a rename or an attribute set
    when a run loads is no edit); the segmentation's when the segment was deleted."""
    segmentation = segmentationNode.GetSegmentation()
    segmentId = lesionSegmentId(segmentationNode)
    segment = segmentation.GetSegment(segmentId) if segmentId else None
    if segment is None:
        return segmentation.GetMTime()
    source = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    data = segment.GetRepresentation(source())  # what the Segment Editor paints
    return max(segment.GetMTime(), data.GetMTime() if data is not None else 0)


def _isMR(label):
    """Whether a run's image label (its role key, :func:`.scene.studyFromVolumeNodes`) is an MR image's."""
    return label.upper().startswith("MR")


def lesionMasksForReassessment(scene, imageNodesByLabel, passed=None):
    """``{label: mask}`` of the lesions to pass to a new run. Per image: of its BINDS
    segmentations (kept edited ones included), the one whose lesion was edited most recently
    and not passed since; else the newest run's lesion that came from the user. The MR
    sequences share one outline in the model: only the most recently edited sequence's is
    passed. ``passed``, when given, gets ``{label: (node, checksum)}`` for :func:`markPassed`
    once the run's results are loaded."""
    chosen = {}
    for label, image in imageNodesByLabel.items():
        nodes = outputNodes(scene, "segmentation", image)  # oldest run first
        edited = [(_editTime(node), n, node) for n, node in enumerate(nodes) if _editedSincePassed(node)]
        if edited:
            chosen[label] = (max(edited, key=lambda item: item[:2])[2], True)
            continue
        users = [node for node in nodes if node.GetAttribute(LESION_SOURCE_ATTRIBUTE) == "user"]
        if users:
            chosen[label] = (users[-1], False)
    mr = [label for label in chosen if _isMR(label)]
    if len(mr) > 1:
        keep = max(mr, key=lambda label: (chosen[label][1], _editTime(chosen[label][0])))
        for label in mr:  # superseded by the newer outline: counted as passed, so it does not come back
            if label != keep and passed is not None:
                passed[label] = (chosen[label][0], _lesionChecksum(chosen[label][0]))
        chosen = {label: value for label, value in chosen.items() if label not in mr or label == keep}
    masks = {}
    for label, (node, _) in chosen.items():
        mask = currentLesionMask(node)
        if mask is None:  # the Lesion segment was deleted: no lesion, as if every voxel were erased
            import numpy as np

            dims = imageNodesByLabel[label].GetImageData().GetDimensions()
            mask = np.zeros((dims[2], dims[1], dims[0]), np.uint8)
        masks[label] = mask
        if passed is not None:
            passed[label] = (node, _lesionChecksum(node))
    return masks


def markPassed(passed, report=None):
    """Record on each segmentation the lesion a run was given (``passed`` of
    :func:`lesionMasksForReassessment`), once that run's results are loaded: a later
    re-assessment passes it again only if it is edited again. With the run's ``report``, only
    the masks it used (``user_lesion_masks``) count, and MR outlines set aside for the one passed
    only when the MRI was read: a stage-1 run leaves the MR edits for a later run."""
    if report is not None:
        used = set(report.get("user_lesion_masks") or [])
        mrRead = any("MR" in stage.get("modalities", []) for stage in report.get("stages", []))
        passed = {label: value for label, value in passed.items()
                  if label in used or (_isMR(label) and mrRead)}
    for node, checksum in passed.values():
        if node.GetScene() is not None:
            node.SetAttribute(PASSED_CHECKSUM_ATTRIBUTE, checksum)


def editedSegmentations(scene):
    return [node for node in outputNodes(scene, "segmentation") if isLesionEdited(node)]


def writeLesionMaskFiles(masks, imageNodesByLabel, folder):
    """Write each ``{label: mask}`` (on its image node's grid) as ``folder/<label>_lesion.nrrd``
    on the grid of the image in the study folder (LPS; a mammogram stored turned is re-indexed, an
    ultrasound image cropped: ``scene.onStudyGrid``), so it lies on that image's very pixels.

    Returns ``{label: path}`` for ``binds diagnose --lesion-mask LABEL=FILE``.
    """
    from BINDSLib.study import Role
    from BINDSLib.studyfolder import write_nrrd

    os.makedirs(folder, exist_ok=True)
    paths = {}
    for label, mask in masks.items():
        node = imageNodesByLabel[label]
        role = Role.parse(sc.volumeRole(node) or label)
        onGrid, geometry, _ = sc.onStudyGrid(node, role, mask, sc.geometryFromVolumeNode(node))
        drawn, kept = int(mask.sum()), int(onGrid.sum())
        if drawn and not kept:  # (an empty mask would say "no lesion": the user drew one)
            raise ValueError(f"the lesion drawn on '{node.GetName()}' lies outside the image BINDS reads (its "
                             "tissue region, without the annotations around it): draw it inside")
        if kept < drawn / 2:
            logging.warning("only %d of the %d voxels of the lesion drawn on '%s' lie in the image BINDS reads",
                            kept, drawn, node.GetName())
        path = os.path.join(folder, f"{label}_lesion.nrrd")
        write_nrrd(path, onGrid, geometry)
        paths[label] = path
    return paths


def removeOutdatedOutputs(scene, images):
    """Remove earlier BINDS outputs of ``images`` (and the report tables of those runs), except
    segmentations whose lesion the user edited. Returns the edited segmentations kept."""
    sh = sc.subjectHierarchy(scene)
    kept, removedRuns, folders = [], set(), set()
    for image in images:
        for node in outputNodes(scene, image=image):
            if node.GetAttribute(OUTPUT_ATTRIBUTE) == "segmentation" and isLesionEdited(node):
                if not node.GetAttribute("BINDS.UserEdited"):
                    node.SetAttribute("BINDS.UserEdited", "1")
                    node.SetName(node.GetName() + " (edited)")
                display = node.GetDisplayNode()
                if display is not None:  # its salient region is an older run's: not over the new one
                    display.SetSegmentVisibility(SALIENT_SEGMENT_ID, False)
                kept.append(node)
                continue
            removedRuns.add(node.GetAttribute(RUN_ATTRIBUTE))
            item = sh.GetItemByDataNode(node)
            if item:
                folders.add(sh.GetItemParent(item))
            scene.RemoveNode(node)
    for table in outputNodes(scene, "report"):
        if table.GetAttribute(RUN_ATTRIBUTE) in removedRuns:
            item = sh.GetItemByDataNode(table)
            if item:
                folders.add(sh.GetItemParent(item))
            scene.RemoveNode(table)
    for folder in folders:
        if sh.GetItemAttribute(folder, FOLDER_ATTRIBUTE) and not _liveChildren(scene, folder):
            sh.RemoveItem(folder)
    return kept


def _liveChildren(scene, item):
    """The children of a subject hierarchy item, less those whose data node has left the scene.

    Inside Slicer a removed node's item goes with it; headless (slicer-core) nothing removes
    it, so a results folder would never look empty. A child without a data node (a folder the
    user made) counts as live.
    """
    sh = sc.subjectHierarchy(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(item, children)
    live = []
    for i in range(children.GetNumberOfIds()):
        node = sh.GetItemDataNode(children.GetId(i))
        if node is None or node.GetScene() is scene:
            live.append(children.GetId(i))
    return live


# ---------------------------------------------------------------------------------------------
# Loading an output folder
# ---------------------------------------------------------------------------------------------


class DiagnosisResults:
    """The nodes of one loaded run."""

    def __init__(self, report, runIndex, folderItem):
        self.report = report
        self.runIndex = runIndex
        self.folderItem = folderItem
        self.segmentations = {}  # label -> segmentation node
        self.saliency = {}  # label -> volume node
        self.table = None
        self.keptEdited = []

    def imagesByLesionProbability(self):
        """Labels ordered from the most to the least suspicious image."""
        entries = sorted(self.report.get("images", []), key=lambda e: -float(e.get("lesion_probability_max", 0.0)))
        return [e["label"] for e in entries if e["label"] in self.segmentations]


def readReportFile(outputFolder, schema="binds.report", what="report"):
    """``outputFolder/report.json`` as a dict of the given ``schema``; ``ValueError`` naming the
    file when it cannot be read or is another kind of file (diagnosis and risk reports)."""
    path = os.path.join(outputFolder, "report.json")
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the {what} ({e})") from None
    found = report.get("schema") if isinstance(report, dict) else None
    if found != schema:
        raise ValueError(f"{path}: not a BINDS {what} (schema {found!r})")
    return report


def readReport(outputFolder):
    return readReportFile(outputFolder)


def reportRows(report):
    """(quantity, value) rows of the report table: BINDSLib's rows, then one per image."""
    from BINDSLib.outputs.report import report_table_rows

    rows = [("Study", str(report.get("study_id", "")))]
    rows += report_table_rows(report)
    if report.get("subtype"):
        rows.append(("Most likely subtype", report["subtype"].replace("_", " ")))
    for entry in report.get("images", []):
        unit = "mm3" if entry.get("modality") == "MR" else "mm2"  # (2D images: an area)
        rows.append((f"Lesion {entry['label']} ({entry.get('lesion_source', 'predicted')})",
                     f"{float(entry.get('lesion_volume_mm3', 0.0)):.1f} {unit}, max probability "
                     f"{float(entry.get('lesion_probability_max', 0.0)):.3f}"))
    for note in report.get("notes", []):
        rows.append(("Note", note))
    model = report.get("model", {})
    rows.append(("Model", f"{model.get('name', '')} {model.get('version', '')}".strip()))
    rows.append(("Intended use", report.get("intended_use", "Research use only; not for clinical use.")))
    return rows


def setTableRows(tableNode, rows, columnNames=("Quantity", "Value"), numeric=()):
    """Fill a table node with string columns, and double columns for the ``numeric`` column
    names (None -> NaN), which the table view sorts as numbers."""
    table = tableNode.GetTable()
    table.Initialize()
    columns = []
    for name in columnNames:
        column = vtk.vtkDoubleArray() if name in numeric else vtk.vtkStringArray()
        column.SetName(name)
        table.AddColumn(column)
        columns.append(column)
    for row in rows:
        for column, value in zip(columns, row):
            if isinstance(column, vtk.vtkDoubleArray):
                column.InsertNextValue(float("nan") if value is None else float(value))
            else:
                column.InsertNextValue(str(value))
    tableNode.Modified()


def tableRows(tableNode):
    """The cells of a table node as a list of string tuples (for tests and export)."""
    table = tableNode.GetTable()
    return [tuple(table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns()))
            for r in range(table.GetNumberOfRows())]


def loadDiagnosisResults(scene, outputFolder, imageNodesByLabel, studyItem=None):
    """Load a ``binds diagnose`` output folder over its input volumes.

    ``imageNodesByLabel`` maps the study folder's image labels to the volume nodes they were
    written from (:func:`.scene.writeStudyFolder` returns it). Returns the
    :class:`DiagnosisResults`.
    """
    report = readReport(outputFolder)
    gone = [label for label, node in imageNodesByLabel.items() if node is None or node.GetScene() is not scene]
    missing = [e["label"] for e in report.get("images", []) if imageNodesByLabel.get(e["label"]) is None]
    if gone or missing:  # before anything of an earlier run is removed: all or nothing
        raise ValueError(f"{outputFolder}: outputs for images that are not in the scene: "
                         f"{', '.join(sorted(set(gone + missing)))}")
    # every input of this run, not only the images it has outputs for: a stage-1 run after a
    # stage-2 one leaves no MR output of the earlier run beside a report that does not list it
    kept = removeOutdatedOutputs(scene, list(imageNodesByLabel.values()))
    runIndex = nextRunIndex(scene)
    sc.subjectHierarchy(scene).SetAttribute(LAST_RUN_ATTRIBUTE, str(runIndex))
    if not studyItem:
        studyItem = sc.ensureStudyItem(scene, list(imageNodesByLabel.values()))
    folderName = f"BINDS results {runIndex}" + (" (edited lesions)" if report.get("user_lesion_masks") else "")
    folderItem = sc.createFolder(scene, studyItem, folderName)
    sc.subjectHierarchy(scene).SetItemAttribute(folderItem, FOLDER_ATTRIBUTE, os.fspath(outputFolder))
    results = DiagnosisResults(report, runIndex, folderItem)
    results.keptEdited = kept
    heat = heatColorNode(scene)

    for entry in report.get("images", []):
        label = entry["label"]
        image = imageNodesByLabel[label]
        transformID = image.GetTransformNodeID()
        if entry.get("segmentation"):
            seg = readSegmentationFile(scene, os.path.join(outputFolder, entry["segmentation"]),
                                       f"{label} BINDS segmentation")
            # under the image's transform first: the reference geometry is taken relative to the
            # segmentation's own parent transform (set after, the transform applied twice)
            seg.SetAndObserveTransformNodeID(transformID)
            seg.SetReferenceImageGeometryParameterFromVolumeNode(image)
            seg.SetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole(), image.GetID())
            seg.SetNodeReferenceID(IMAGE_REFERENCE_ROLE, image.GetID())
            seg.SetAttribute(OUTPUT_ATTRIBUTE, "segmentation")
            seg.SetAttribute(LABEL_ATTRIBUTE, label)
            seg.SetAttribute(RUN_ATTRIBUTE, str(runIndex))
            seg.SetAttribute(LESION_SOURCE_ATTRIBUTE, entry.get("lesion_source", "predicted"))
            lesion = currentLesionMask(seg)
            seg.SetAttribute(LESION_CHECKSUM_ATTRIBUTE, maskChecksum(lesion) if lesion is not None else "")
            display = seg.GetDisplayNode()
            if display is not None:
                display.SetOpacity2DFill(0.25)
                display.SetOpacity2DOutline(1.0)
                display.SetSegmentOpacity2DFill(SALIENT_SEGMENT_ID, 0.0)  # outline over the saliency map
            sc.placeUnder(scene, seg, folderItem)
            results.segmentations[label] = seg
        if entry.get("saliency"):
            sal = readVolumeFile(scene, os.path.join(outputFolder, entry["saliency"]), f"{label} BINDS saliency")
            sal.SetNodeReferenceID(IMAGE_REFERENCE_ROLE, image.GetID())
            sal.SetAndObserveTransformNodeID(transformID)
            sal.SetAttribute(OUTPUT_ATTRIBUTE, "saliency")
            sal.SetAttribute(LABEL_ATTRIBUTE, label)
            sal.SetAttribute(RUN_ATTRIBUTE, str(runIndex))
            sal.CreateDefaultDisplayNodes()
            display = sal.GetDisplayNode()
            display.SetAndObserveColorNodeID(heat.GetID())
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(0.0, 1.0)
            display.SetAutoThreshold(False)
            display.SetLowerThreshold(SALIENCY_DISPLAY_THRESHOLD)
            display.SetUpperThreshold(1.0)
            display.SetApplyThreshold(True)
            display.SetInterpolate(False)
            sc.placeUnder(scene, sal, folderItem)
            results.saliency[label] = sal

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"BINDS report {runIndex}")
    setTableRows(table, reportRows(report))
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetAttribute(OUTPUT_ATTRIBUTE, "report")
    table.SetAttribute(RUN_ATTRIBUTE, str(runIndex))
    table.SetAttribute(REPORT_JSON_ATTRIBUTE, json.dumps(report, sort_keys=True))
    table.SetLocked(True)
    sc.placeUnder(scene, table, folderItem)
    results.table = table
    return results


def showDiagnosisResults(scene, results, views=("Red", "Yellow", "Green")):
    """Switch to a layout with slice views and a table; show the most suspicious images (one per
    slice view) with their saliency overlay, and the report table. Returns the labels shown."""
    labels = results.imagesByLesionProbability()[: len(views)]
    assignments = {}
    for view, label in zip(views, labels):
        assignments[view] = (imageOfOutput(results.segmentations[label]), results.saliency.get(label))
    sc.setLayout(scene, slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    sc.showInSliceViews(scene, assignments, SALIENCY_OPACITY)
    sc.clearSliceForeground(scene, [view for view in views if view not in assignments])  # no old overlay
    sc.showTable(scene, results.table)
    return labels


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _writeWithStorageNode(scene, node, storageClass, path):
    storage = scene.AddNewNodeByClass(storageClass)
    try:
        storage.SetFileName(os.fspath(path))
        if storageClass == "vtkMRMLVolumeArchetypeStorageNode":
            storage.SetUseCompression(True)
        if not storage.WriteData(node):
            raise RuntimeError(f"could not write {path}")
    finally:
        scene.RemoveNode(storage)


def exportResults(scene, folder, tables=None):
    """Write the newest BINDS run of the scene to ``folder``.

    The newest run's outputs: per image its segmentation as ``<label>.seg.nrrd`` (as edited, if
    it was) and its saliency map as ``<label>_saliency.nrrd``, its report as ``report.json`` and
    ``report.csv``; and every edited segmentation of an earlier run, kept by the newer runs, as
    ``<label>_edited_run<k>.seg.nrrd``. Unedited outputs of earlier runs are not written: the
    report would not list them. The files of an earlier export to ``folder`` are removed first
    (:data:`EXPORT_MANIFEST` lists them); other files there are kept. Returns the written paths.
    A scene without BINDS results is refused (ValueError) before anything in ``folder`` is touched.
    """
    reports = tables if tables is not None else outputNodes(scene, "report")
    segmentations, saliency = outputNodes(scene, "segmentation"), outputNodes(scene, "saliency")
    if not (reports or segmentations or saliency):  # (an earlier export there is not replaced by nothing)
        raise ValueError("there are no BINDS results in the scene to export: run BINDS first")
    os.makedirs(folder, exist_ok=True)
    _removePreviousExport(folder)
    written = []
    runs = [int(n.GetAttribute(RUN_ATTRIBUTE) or 0) for n in (reports or segmentations + saliency)]
    newest = str(max(runs)) if runs else None
    for node in segmentations:
        label, run = node.GetAttribute(LABEL_ATTRIBUTE), node.GetAttribute(RUN_ATTRIBUTE)
        if run == newest:
            path = os.path.join(folder, f"{label}.seg.nrrd")
        elif isLesionEdited(node):
            path = os.path.join(folder, f"{label}_edited_run{run}.seg.nrrd")
        else:
            continue
        _writeWithStorageNode(scene, node, "vtkMRMLSegmentationStorageNode", path)
        written.append(path)
    for node in saliency:
        if node.GetAttribute(RUN_ATTRIBUTE) == newest:
            path = os.path.join(folder, f"{node.GetAttribute(LABEL_ATTRIBUTE)}_saliency.nrrd")
            _writeWithStorageNode(scene, node, "vtkMRMLVolumeArchetypeStorageNode", path)
            written.append(path)
    if reports:
        table = reports[-1]
        reportText = table.GetAttribute(REPORT_JSON_ATTRIBUTE)
        if reportText:
            path = os.path.join(folder, "report.json")
            sc.writeTextFile(path, json.dumps(json.loads(reportText), indent=2, sort_keys=True) + "\n")
            written.append(path)
        path = os.path.join(folder, "report.csv")
        sc.writeTextFile(path, _csvText(tableRows(table), ("quantity", "value")))
        written.append(path)
    sc.writeTextFile(os.path.join(folder, EXPORT_MANIFEST),
                     json.dumps({"files": sorted(os.path.basename(p) for p in written)}, indent=2) + "\n")
    return written


#: the files an export wrote, which the next export to the same folder removes first
EXPORT_MANIFEST = "binds-export.json"


def _removePreviousExport(folder):
    """Remove what an earlier export wrote to ``folder``, as its manifest lists it, so that a
    folder exported to again holds one run, not a stage-2 run's MR files beside a stage-1 report.
    Nothing else is removed: a folder without a manifest (an export of an earlier BINDS, a
    ``binds diagnose`` output, the user's own files) is written into as it is."""
    manifest = os.path.join(folder, EXPORT_MANIFEST)
    try:
        with open(manifest, encoding="utf-8") as f:
            names = [n for n in json.load(f).get("files", []) if isinstance(n, str)]
    except (OSError, ValueError, AttributeError):
        return
    for name in names:
        path = os.path.join(folder, name)
        if os.path.basename(name) == name and os.path.isfile(path):  # a bare file name, nothing else
            os.remove(path)


def _csvText(rows, header):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
