"""The scene layer: volume nodes <-> BINDSLib images and studies, subject hierarchy, display.

Pure MRML (no Qt, no ``slicer.app``): every function takes the scene it works on, so the
same code runs inside Slicer (``slicer.mrmlScene``) and headless on the PyPI package
slicer-core (Testing/test_scene_*.py).

Geometry
--------
BINDSLib follows ITK/DICOM: LPS coordinates, voxels ``(depth, rows, cols)``, ``spacing_mm``
and ``origin_mm`` in (column, row, slice) order and a direction matrix whose columns are the
axis directions (:class:`BINDSLib.study.Geometry`). Slicer's volume nodes hold an IJK-to-RAS
matrix whose columns are the same axes in RAS, and ``slicer.util.arrayFromVolume`` gives the
voxels as ``(k, j, i)`` = ``(depth, rows, cols)``. So the conversion is only the LPS<->RAS
flip of the first two world axes::

    IJKToRAS = diag(-1, -1, 1, 1) @ IJKToLPS

A volume's parent transform is not applied: outputs are placed under the same transform as
their image (see :mod:`.results`), so they overlay it whatever the transform is.

Node attributes written here (saved with the scene)
---------------------------------------------------
``BINDS.Role``       role key of an input volume (``MG_L_CC``, ``US_R_10h``, ``MR_DCE2``...);
                     empty or absent: the volume is not used.
``BINDS.Synthetic``  ``1`` on volumes of a synthetic teaching case.
``BINDS.AcquisitionDate``  ``YYYY-MM-DD`` of an input volume, when known.

Study items of the subject hierarchy that BINDS creates carry ``BINDS.StudyID`` and
``BINDS.StudyDate`` (the study's own ID and date, written again into the next run's study folder),
patient items ``BINDS.PatientID`` when the patient is known.
"""

import dataclasses
import os

import slicer
import vtk

ROLE_ATTRIBUTE = "BINDS.Role"
ROLE_GUESSED_ATTRIBUTE = "BINDS.RoleGuessed"  # "1": the role is BINDS' guess, not the user's
SYNTHETIC_ATTRIBUTE = "BINDS.Synthetic"
ACQUISITION_DATE_ATTRIBUTE = "BINDS.AcquisitionDate"
FRAME_ATTRIBUTE = "BINDS.Frame"  # an ultrasound cine's representative frame (0-based), when known
#: a mammogram's DICOM PatientOrientation (``R\\P``) as Slicer's DICOM module loaded it (storage
#: order): the study folder gets it re-indexed as the command line reads the file
ORIENTATION_ATTRIBUTE = "BINDS.PatientOrientation"
#: an ultrasound image's tissue region "x0 y0 x1 y1" (inclusive pixels) from its DICOM file: the
#: study folder gets the image cropped to it, as the command line crops the file
US_REGION_ATTRIBUTE = "BINDS.UltrasoundRegion"
STUDY_ID_ATTRIBUTE = "BINDS.StudyID"  # on a study item of the subject hierarchy
PATIENT_ID_ATTRIBUTE = "BINDS.PatientID"  # on a patient item
STUDY_DATE_ATTRIBUTE = "BINDS.StudyDate"

#: diag(-1, -1, 1): LPS <-> RAS (its own inverse).
_FLIP = (-1.0, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Geometry and voxels
# ---------------------------------------------------------------------------------------------


def arrayFromVTKMatrix(matrix):
    """A 4x4 ``vtkMatrix4x4`` as a numpy array."""
    import numpy as np

    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtkMatrixFromArray(array):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def ijkToRASArray(volumeNode):
    """The volume's IJK-to-RAS matrix (4x4 numpy array), without its parent transform."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return arrayFromVTKMatrix(matrix)


def ijkToRASFromGeometry(geometry):
    """IJK-to-RAS (4x4) of a :class:`BINDSLib.study.Geometry` (LPS)."""
    import numpy as np

    return np.diag(_FLIP + (1.0,)) @ geometry.ijk_to_lps_matrix()


def geometryFromVolumeNode(volumeNode):
    """The :class:`BINDSLib.study.Geometry` (LPS) of a volume node.

    Raises ``ValueError`` naming the node if its axes are not orthonormal (a sheared or
    scaled IJK-to-RAS matrix cannot be represented by spacing, origin and direction).
    """
    import numpy as np

    from BINDSLib.study import Geometry

    ijkToLPS = np.diag(_FLIP + (1.0,)) @ ijkToRASArray(volumeNode)
    axes = ijkToLPS[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"volume '{volumeNode.GetName()}' has a zero voxel spacing")
    direction = axes / spacing[None, :]
    try:
        return Geometry(tuple(spacing), tuple(ijkToLPS[:3, 3]), tuple(direction.ravel()))
    except ValueError as e:
        raise ValueError(f"volume '{volumeNode.GetName()}': {e} (harden or reset its transform)") from None


def setVolumeGeometry(volumeNode, geometry):
    """Place ``volumeNode`` on ``geometry`` (LPS) exactly."""
    volumeNode.SetIJKToRASMatrix(vtkMatrixFromArray(ijkToRASFromGeometry(geometry)))


def voxelsFromVolumeNode(volumeNode):
    """A copy of the voxels as ``(depth, rows, cols)``; colour volumes become grayscale luma."""
    import numpy as np

    if volumeNode.GetImageData() is None:
        raise ValueError(f"volume '{volumeNode.GetName()}' has no voxels")
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    if array.ndim == 4 and (volumeNode.IsA("vtkMRMLMultiVolumeNode") or array.shape[-1] > 4):
        raise ValueError(f"volume '{volumeNode.GetName()}' has {array.shape[-1]} values per voxel (a multi-volume, "
                         "e.g. DCE phases in one node): load or split it as one volume per phase")
    if array.ndim == 4:  # vector volume (k, j, i, components), e.g. an RGB ultrasound frame
        from BINDSLib.io.files import to_grayscale

        array = to_grayscale(array) if array.shape[-1] >= 3 else array[..., 0]
    return array


def setVolumeVoxels(volumeNode, voxels):
    """Replace the voxels of a scalar volume node by ``voxels`` ``(depth, rows, cols)`` (copied)."""
    import numpy as np
    import vtk.util.numpy_support

    array = np.ascontiguousarray(voxels)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"expected (depth, rows, cols) voxels, got shape {array.shape}")
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtkArray = vtk.util.numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                                   array_type=vtk.util.numpy_support.get_vtk_array_type(array.dtype))
    vtkArray.SetNumberOfComponents(1)
    imageData.GetPointData().SetScalars(vtkArray)
    volumeNode.SetAndObserveImageData(imageData)


def addVolumeFromVoxels(scene, voxels, geometry, name, nodeClass="vtkMRMLScalarVolumeNode"):
    """A new volume node (with a display node) holding ``voxels`` on ``geometry``."""
    node = scene.AddNewNodeByClass(nodeClass, name)
    setVolumeGeometry(node, geometry)
    setVolumeVoxels(node, voxels)
    node.CreateDefaultDisplayNodes()
    return node


# ---------------------------------------------------------------------------------------------
# Roles and studies
# ---------------------------------------------------------------------------------------------


def volumeRole(volumeNode):
    """The role key assigned to a volume node ('' when it is not used)."""
    return (volumeNode.GetAttribute(ROLE_ATTRIBUTE) or "").strip()


def setVolumeRole(volumeNode, roleKey):
    """Assign a role key (validated by BINDSLib) to a volume; '' or None unassigns it."""
    if roleKey:
        from BINDSLib.study import Role

        roleKey = Role.parse(roleKey).key
    volumeNode.SetAttribute(ROLE_ATTRIBUTE, roleKey or "")
    volumeNode.RemoveAttribute(ROLE_GUESSED_ATTRIBUTE)  # the user's (or the study's) own


def volumeNodes(scene):
    """Scalar and vector volume nodes of the scene that can be inputs (not labelmaps, not outputs)."""
    nodes = []
    for className in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"):
        collection = scene.GetNodesByClass(className)
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute("BINDS.Output"):
                continue
            if node.GetHideFromEditors() or node in nodes:
                continue
            nodes.append(node)
    return nodes


def assignedVolumes(scene):
    """(volume node, role key) of the volumes that have a role, in scene order."""
    return [(node, volumeRole(node)) for node in volumeNodes(scene) if volumeRole(node)]


def imageFromVolumeNode(volumeNode, roleKey=None):
    """A :class:`BINDSLib.study.Image` with the node's voxels, exact geometry and role, on the
    grid the command line reads the DICOM file on (:func:`onStudyGrid`)."""
    from BINDSLib.study import Image, Role, SourceInfo, parse_date

    roleKey = roleKey or volumeRole(volumeNode)
    if not roleKey:
        raise ValueError(f"volume '{volumeNode.GetName()}' has no role; assign one first")
    date = volumeNode.GetAttribute(ACQUISITION_DATE_ATTRIBUTE)
    try:
        date = parse_date(date or None)
    except ValueError:
        raise ValueError(f"volume '{volumeNode.GetName()}': its attribute {ACQUISITION_DATE_ATTRIBUTE} "
                         f"{date!r} is not a date (YYYY-MM-DD): correct or remove it") from None
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    role = Role.parse(roleKey)
    frame = volumeNode.GetAttribute(FRAME_ATTRIBUTE)
    if frame and frame.strip().isdigit() and role.modality.value == "US" and role.frame is None:
        role = dataclasses.replace(role, frame=int(frame))  # (the frame the command line reads too)
    voxels, geometry, reoriented = onStudyGrid(volumeNode, role, voxelsFromVolumeNode(volumeNode),
                                               geometryFromVolumeNode(volumeNode))
    return Image(
        voxels,
        geometry,
        role,
        acquisition_date=date,
        source=SourceInfo(sop_instance_uids=tuple(uids), description=volumeNode.GetName(), reoriented=reoriented),
    )


def onStudyGrid(volumeNode, role, voxels, geometry):
    """``(voxels, geometry, reoriented)``: an array on the node's grid (its voxels, or a lesion
    mask drawn on it) on the grid of its study-folder image, as the command line reads the DICOM
    file: a mammogram stored turned re-indexed (:data:`ORIENTATION_ATTRIBUTE`; ``reoriented``
    says how, else ``None``), an ultrasound image cropped to its tissue region
    (:data:`US_REGION_ATTRIBUTE`). Every voxel keeps its place in space: outputs on the new grid
    overlay the node."""
    import numpy as np

    reoriented = None
    orientation = volumeNode.GetAttribute(ORIENTATION_ATTRIBUTE)
    if orientation and role.modality.value == "MG" and voxels.shape[0] == 1:
        from BINDSLib.io.mg_orientation import parse_patient_orientation, reorient, reorientation, steps_text

        steps = reorientation(parse_patient_orientation(orientation), role.view, role.laterality)
        voxels, geometry = reorient(voxels, geometry, *steps)
        reoriented = steps_text(steps) or None
    region = _usRegion(volumeNode.GetAttribute(US_REGION_ATTRIBUTE), voxels.shape)
    if region is not None and role.modality.value == "US":
        # the tissue region alone (the model fits the image it reads to its grid: with the
        # annotations around it, the lesion came out smaller); the node's spacing and axes kept
        x0, y0, x1, y1 = region
        voxels = np.ascontiguousarray(voxels[:, y0:y1 + 1, x0:x1 + 1])
        origin = geometry.index_to_lps((x0, y0, 0))
        geometry = dataclasses.replace(geometry, origin_mm=tuple(float(o) for o in origin))
    return voxels, geometry, reoriented


#: the longest span between the studies of one run: a work-up's mammography, ultrasound and MRI
#: lie days or weeks apart; a prior exam lies a year or more before the current one
MAX_STUDY_SPAN_DAYS = 90


def _usRegion(text, shape):
    """``(x0, y0, x1, y1)`` of a :data:`US_REGION_ATTRIBUTE` value inside an image of ``shape``
    ``(depth, rows, cols)``, else ``None`` (a value that is not four pixel indices in it)."""
    try:
        x0, y0, x1, y1 = (int(v) for v in (text or "").split())
    except ValueError:
        return None
    rows, cols = shape[-2:]
    if not (0 <= x0 <= x1 < cols and 0 <= y0 <= y1 < rows):
        return None
    return x0, y0, x1, y1


def _patientKey(sh, patientItem):
    """Who a subject hierarchy patient item is: its DICOM patient ID, the patient ID BINDS gave
    it (:func:`addStudyToScene`), or "" when unknown (volumes loaded from plain files, and the
    "BINDS patient" item a run puts them under)."""
    return (sh.GetItemUID(patientItem, "DICOM") or sh.GetItemAttribute(patientItem, "DICOM.PatientID")
            or sh.GetItemAttribute(patientItem, PATIENT_ID_ATTRIBUTE) or "")


def checkOneStudy(scene, nodesWithRoles):
    """Refuse (``ValueError``, naming the volumes) inputs that cannot make one study: volumes of
    two known patients in the subject hierarchy (two women loaded into one scene), studies more
    than :data:`MAX_STUDY_SPAN_DAYS` apart (a prior exam beside the current one), or two
    mammograms of one view (BINDS reads one image per view). Studies of one patient's work-up
    may be combined: her mammography, ultrasound and MRI are usually separate DICOM studies;
    volumes of an unknown patient (plain files) join them."""
    import datetime

    sh = subjectHierarchy(scene)
    patientLevel = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelPatient()
    byPatient, names, dates = {}, {}, {}
    for node, _ in nodesWithRoles:
        item = sh.GetItemByDataNode(node)
        patient = sh.GetItemAncestorAtLevel(item, patientLevel) if item else 0
        key = _patientKey(sh, patient) if patient else ""
        if key:  # an unknown patient may be anyone's: her volumes are not told apart
            byPatient.setdefault(key, []).append(node.GetName())
            names[key] = sh.GetItemName(patient)
        study = studyItemOf(scene, node)
        date = _isoDate(sh.GetItemAttribute(study, "DICOM.StudyDate")
                        or sh.GetItemAttribute(study, STUDY_DATE_ATTRIBUTE)) if study else None
        if date:
            dates.setdefault(date, (sh.GetItemName(study), node.GetName()))
    if len(byPatient) > 1:
        listed = "; ".join(f"'{names[key]}': {', '.join(volumes[:3])}{', ...' if len(volumes) > 3 else ''}"
                           for key, volumes in byPatient.items())
        raise ValueError(f"the volumes with a role belong to {len(byPatient)} patients ({listed}); BINDS "
                         "diagnoses one patient's study at a time: clear the roles of the other patients' volumes")
    if dates:
        first, last = min(dates), max(dates)
        span = (datetime.date.fromisoformat(last) - datetime.date.fromisoformat(first)).days
        if span > MAX_STUDY_SPAN_DAYS:
            raise ValueError(f"the volumes with a role come from studies {span} days apart ('{dates[first][0]}', "
                             f"e.g. '{dates[first][1]}', and '{dates[last][0]}', e.g. '{dates[last][1]}'): BINDS "
                             "diagnoses one visit; clear the roles of the earlier exam's volumes")
    views = {}
    for node, role in nodesWithRoles:
        key = role.strip().upper()
        if key == "MG" or key.startswith("MG_"):
            views.setdefault(key, []).append(node.GetName())
    for key, volumes in views.items():
        if len(volumes) > 1:
            raise ValueError(f"{len(volumes)} volumes have the role {key} ({', '.join(repr(n) for n in volumes)}): "
                             "BINDS reads one mammogram per view; clear the role of the others")


def studyFromVolumeNodes(nodesWithRoles, studyId, studyDate=None, patientId=None, synthetic=None):
    """A :class:`BINDSLib.study.Study` of ``[(volume node, role key), ...]``.

    Returns ``(study, nodeIDByLabel)``: image labels are the role keys, made unique by BINDSLib
    (``US_L``, ``US_L_2``), and map back to the volume nodes the outputs belong to.
    """
    from BINDSLib.study import Study, parse_date

    if not nodesWithRoles:
        raise ValueError("no volume has a role: assign roles to the images to diagnose")
    images = [imageFromVolumeNode(node, role) for node, role in nodesWithRoles]
    if synthetic is None:
        synthetic = all(node.GetAttribute(SYNTHETIC_ATTRIBUTE) == "1" for node, _ in nodesWithRoles)
    study = Study(study_id=studyId, images=images, patient_id=patientId or None,
                  study_date=parse_date(studyDate), synthetic=bool(synthetic))
    nodeIDByLabel = {image.label: node.GetID() for image, (node, _) in zip(study.images, nodesWithRoles)}
    return study, nodeIDByLabel


def writeStudyFolder(nodesWithRoles, folder, studyId, studyDate=None, patientId=None, overwrite=False):
    """Write the study folder (docs/STUDY_FOLDER.md) of the given volumes.

    Returns ``(path, nodeIDByLabel)``. The folder holds exactly the scene's voxels and
    geometry (LPS); it is written atomically by BINDSLib.
    """
    from BINDSLib.studyfolder import write_study_folder

    study, nodeIDByLabel = studyFromVolumeNodes(nodesWithRoles, studyId, studyDate, patientId)
    path = write_study_folder(study, folder, overwrite=overwrite)
    return path, nodeIDByLabel


def addStudyToScene(scene, study, patientName=None):
    """Add every image of a BINDSLib study as a volume node with its role, under a patient/study
    item of the subject hierarchy. Returns the volume nodes by image label."""
    patientItem = createSubjectItem(scene, patientName or study.patient_id or "BINDS patient")
    studyItem = createStudyItem(scene, patientItem, studyItemName(study))
    sh = subjectHierarchy(scene)  # the study's own ID and date, which a new run writes again
    if study.patient_id:  # who she is (two studies of hers are one patient's)
        sh.SetItemAttribute(patientItem, PATIENT_ID_ATTRIBUTE, study.patient_id)
    sh.SetItemAttribute(studyItem, STUDY_ID_ATTRIBUTE, study.study_id)
    if study.study_date is not None:
        sh.SetItemAttribute(studyItem, STUDY_DATE_ATTRIBUTE, study.study_date.isoformat())
    nodes = {}
    for image in study.images:
        node = addVolumeFromVoxels(scene, image.voxels, image.geometry, image.label)
        node.SetAttribute(ROLE_ATTRIBUTE, image.role.key)
        if image.role.frame is not None:
            node.SetAttribute(FRAME_ATTRIBUTE, str(image.role.frame))
        if study.synthetic:
            node.SetAttribute(SYNTHETIC_ATTRIBUTE, "1")
        date = image.acquisition_date or study.study_date
        if date is not None:
            node.SetAttribute(ACQUISITION_DATE_ATTRIBUTE, date.isoformat())
        placeUnder(scene, node, studyItem)
        nodes[image.label] = node
    return nodes


def studyItemName(study):
    name = f"Study {study.study_id}"
    if study.study_date is not None:
        name += f" ({study.study_date.isoformat()})"
    return name + (" SYNTHETIC" if study.synthetic else "")


# ---------------------------------------------------------------------------------------------
# Subject hierarchy
# ---------------------------------------------------------------------------------------------


def subjectHierarchy(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def itemOf(scene, node):
    """The subject hierarchy item of a data node, created under the scene when missing.

    Inside Slicer the subject hierarchy plugins create it when the node is added; headless
    (slicer-core) nothing does, so it is created here.
    """
    sh = subjectHierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def placeUnder(scene, node, parentItem):
    sh = subjectHierarchy(scene)
    item = itemOf(scene, node)
    if parentItem and sh.GetItemParent(item) != parentItem:
        sh.SetItemParent(item, parentItem)
    return item


def createSubjectItem(scene, name):
    sh = subjectHierarchy(scene)
    return sh.CreateSubjectItem(sh.GetSceneItemID(), name)


def createStudyItem(scene, subjectItem, name):
    return subjectHierarchy(scene).CreateStudyItem(subjectItem, name)


def studyItemOf(scene, node):
    """The study item above a node in the subject hierarchy, or 0 when it has none."""
    sh = subjectHierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        return 0
    return sh.GetItemAncestorAtLevel(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())


def ensureStudyItem(scene, volumeNodes, name="BINDS study"):
    """The study item of the input volumes; when they have none, a new patient/study is created
    and the volumes are moved under it (so inputs and outputs stay together)."""
    for node in volumeNodes:
        item = studyItemOf(scene, node)
        if item:
            return item
    studyItem = createStudyItem(scene, createSubjectItem(scene, "BINDS patient"), name)
    for node in volumeNodes:
        placeUnder(scene, node, studyItem)
    return studyItem


def createFolder(scene, parentItem, name):
    sh = subjectHierarchy(scene)
    return sh.CreateFolderItem(parentItem or sh.GetSceneItemID(), name)


def itemChildrenNodes(scene, item):
    """Data nodes of the direct children of a subject hierarchy item."""
    sh = subjectHierarchy(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(item, children)
    nodes = []
    for i in range(children.GetNumberOfIds()):
        node = sh.GetItemDataNode(children.GetId(i))
        if node is not None:
            nodes.append(node)
    return nodes


def studyInfo(scene, volumeNode):
    """``{"study_id", "study_date", "patient_id"}`` of the study a volume belongs to.

    Read from the subject hierarchy's DICOM attributes when the volume came from the DICOM
    module, else from the study item's name, else defaults.
    """
    sh = subjectHierarchy(scene)
    info = {"study_id": "slicer-study", "study_date": None, "patient_id": None}
    studyItem = studyItemOf(scene, volumeNode)
    if studyItem:
        uid = sh.GetItemUID(studyItem, "DICOM")
        given = uid or sh.GetItemAttribute(studyItem, STUDY_ID_ATTRIBUTE) or sh.GetItemName(studyItem)
        info["study_id"] = _safeId(given) or info["study_id"]
        date = sh.GetItemAttribute(studyItem, "DICOM.StudyDate") or sh.GetItemAttribute(studyItem, STUDY_DATE_ATTRIBUTE)
        info["study_date"] = _isoDate(date)
        patientItem = sh.GetItemParent(studyItem)
        if patientItem and patientItem != sh.GetSceneItemID():
            info["patient_id"] = (sh.GetItemAttribute(patientItem, "DICOM.PatientID")
                                  or sh.GetItemAttribute(patientItem, PATIENT_ID_ATTRIBUTE) or None)
    return info


def _isoDate(value):
    """``YYYY-MM-DD`` of a DICOM (``20190301``) or ISO date; None when absent or not a real date
    (an anonymiser's ``00000000``): the study is then undated, as BINDS allows."""
    import datetime
    import logging

    digits = "".join(ch for ch in (value or "") if ch.isdigit())
    if len(digits) < 8:
        return None
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])).isoformat()
    except ValueError:
        logging.warning("BINDS: study date %r is not a date; the study is taken as undated", value)
        return None


def _safeId(text):
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in (text or "").strip()).strip("._")


# ---------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------


def _nodesByLayoutName(scene, className):
    nodes = {}
    collection = scene.GetNodesByClass(className)
    for i in range(collection.GetNumberOfItems()):
        node = collection.GetItemAsObject(i)
        nodes[node.GetLayoutName()] = node
    return nodes


def showInSliceViews(scene, views, foregroundOpacity=0.5):
    """Show images in slice views.

    ``views`` maps a slice view name (``Red``, ``Yellow``, ``Green``) to ``(background volume,
    foreground volume or None)``. Each view is turned to its background volume's plane, so a
    2D image (a mammogram, an ultrasound frame) is seen face on. Fitting the field of view
    needs the slice logic (the widget does it with ``slicer.util.resetSliceViews()``).
    """
    composites = _nodesByLayoutName(scene, "vtkMRMLSliceCompositeNode")
    sliceNodes = _nodesByLayoutName(scene, "vtkMRMLSliceNode")
    for viewName, (background, foreground) in views.items():
        composite = composites.get(viewName)
        if composite is None:
            continue
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(foregroundOpacity if foreground else 0.0)
        composite.SetLabelVolumeID(None)
        sliceNode = sliceNodes.get(viewName)
        if sliceNode is not None and background is not None:
            sliceNode.RotateToVolumePlane(background)


def clearSliceForeground(scene, viewNames):
    """Remove the foreground volume (e.g. an earlier run's saliency) from these slice views."""
    composites = _nodesByLayoutName(scene, "vtkMRMLSliceCompositeNode")
    for viewName in viewNames:
        composite = composites.get(viewName)
        if composite is not None:
            composite.SetForegroundVolumeID(None)
            composite.SetForegroundOpacity(0.0)


def setLayout(scene, arrangement):
    """Switch the view layout (a ``vtkMRMLLayoutNode.SlicerLayout...`` value)."""
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layoutNode is not None:
        layoutNode.SetViewArrangement(arrangement)
    return layoutNode


def showTable(scene, tableNode):
    """Make ``tableNode`` the one table views show."""
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    if selection is not None:
        selection.SetActiveTableID(tableNode.GetID())
    for view in _nodesByLayoutName(scene, "vtkMRMLTableViewNode").values():
        view.SetTableNodeID(tableNode.GetID())


def showPlotChart(scene, chartNode):
    """Make ``chartNode`` the one plot views show."""
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    if selection is not None:
        selection.SetActivePlotChartID(chartNode.GetID())
    for view in _nodesByLayoutName(scene, "vtkMRMLPlotViewNode").values():
        view.SetPlotChartNodeID(chartNode.GetID())


def writeTextFile(path, text):
    """Write text atomically (temporary name, then rename)."""
    path = os.fspath(path)
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
