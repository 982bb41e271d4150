"""Which role each scene volume plays (MG view, US image, MR sequence and phase).

:func:`guessRoles` is pure: it takes, per volume, the DICOM header values of its first
instance (when the volume came from Slicer's DICOM module) or just its name, and applies
BINDSLib's own DICOM classification rules (``BINDSLib.io.dicom_mg``, ``dicom_us``,
``dicom_mr_roles``: documented in docs/DICOM.md) to them. Without a header the node name is
read the same way a series description would be (``"L CC"``, ``"MG_R_MLO"``,
``"DCE phase 2"``, ``"T2 FS"``...).

:func:`headerFromDicomDatabase` reads those header values through Slicer's DICOM database
(``slicer.dicomDatabase``) from the ``DICOM.instanceUIDs`` attribute that the DICOM module
puts on the volumes it loads.
"""

import logging
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

#: Header keywords BINDS reads, with their DICOM tags as ctkDICOMDatabase spells them.
DICOM_TAGS = {
    "Modality": "0008,0060",
    "SOPClassUID": "0008,0016",
    "ImageType": "0008,0008",
    "StudyDate": "0008,0020",
    "AcquisitionDate": "0008,0022",
    "AcquisitionTime": "0008,0032",
    "StudyDescription": "0008,1030",
    "SeriesDescription": "0008,103E",
    "PatientID": "0010,0020",
    "ContrastBolusAgent": "0018,0010",
    "BodyPartExamined": "0018,0015",
    "SequenceName": "0018,0024",
    "RepetitionTime": "0018,0080",
    "EchoTime": "0018,0081",
    "ProtocolName": "0018,1030",
    "ContrastBolusStartTime": "0018,1042",
    "TriggerTime": "0018,1060",
    "ViewPosition": "0018,5101",
    "DiffusionBValue": "0018,9087",
    "StudyInstanceUID": "0020,000D",
    "SeriesInstanceUID": "0020,000E",
    "SeriesNumber": "0020,0011",
    "PatientOrientation": "0020,0020",
    "ImageOrientationPatient": "0020,0037",
    "Laterality": "0020,0060",
    "ImageLaterality": "0020,0062",
    "ImageComments": "0020,4000",
    "RepresentativeFrameNumber": "0028,6010",
}

_US_WORDS = {"US", "USG", "ULTRASOUND", "SONO", "SONOGRAPHY", "BUS", "BREASTUS"}
#: "echo" (echography) means ultrasound only in a name without an MR sequence in it: MR series
#: are named "turbo spin echo", "gradient echo", "echo planar"
_ECHO_WORDS = {"ECHO", "ECHOGRAPHY", "ECOGRAFIA", "ECHOGRAPHIE", "ECHOGRAFIE"}
#: words of a volume derived in Slicer (Crop Volume, Resample, a clone) or of Slicer's unique
#: names: ignored when the name is otherwise a role key ("MR_DCE2_resampled" is MR_DCE2)
_DERIVED_WORDS = {"RESAMPLED", "CROPPED", "CROP", "COPY", "CLONE", "REGISTERED", "RESLICED"}
#: words of MR images that are not an acquired sequence the model reads (a subtraction of two
#: phases, a maximum intensity projection): no role is guessed for them
_NOT_ACQUIRED_WORDS = {"SUB", "SUBTRACTION", "SUBTRACTED", "MIP", "MAXIP"}
_MG_WORDS = {"MG", "MAMMO", "MAMMOGRAM", "MAMMOGRAPHY", "DBT", "FFDM"}
_MR_WORDS = {"MR", "MRI", "BMRI"}
_DCE_NUMBER_RE = re.compile(r"(?:DCE|PHASE|POST|DYN)[ _-]*(\d{1,3})(?![0-9])")
#: a unit after the number makes it a time after injection ("post 60s"): it orders the phases,
#: it is no phase number
_TIME_UNIT_RE = re.compile(r"\s*(S|SEC|SECS|SECOND|SECONDS|MIN|MINS|MINUTE|MINUTES)(?![A-Z])")
#: the highest number a name may give as a phase (a larger one is read as an order only)
MAX_NAMED_PHASE = 12


@dataclass
class VolumeDescription:
    """What is known about a volume: a key (e.g. its node ID), its name, its DICOM header
    values (keyword -> str, empty when it was not loaded from DICOM) and its voxel shape."""

    key: str
    name: str
    header: dict = field(default_factory=dict)
    shape: Optional[tuple] = None  # (depth, rows, cols)


def _roleModules():
    from BINDSLib.io import dicom_mg, dicom_mr_roles, dicom_us
    from BINDSLib.io.dicom_common import dicom_time_s, number
    from BINDSLib.study import Modality, MRSequence, Role

    return SimpleNamespace(mg=dicom_mg, us=dicom_us, mr=dicom_mr_roles, time_s=dicom_time_s,
                           number=number, Modality=Modality, MRSequence=MRSequence, Role=Role)


def _words(text):
    return [w for w in re.split(r"[^A-Z0-9]+", (text or "").upper()) if w]


def _nameHeader(name):
    """A header built from a node name, read as a series description."""
    return {"SeriesDescription": name or ""}


def _modalityOf(description, m):
    """MG, US, MR or None for a volume, from its header or its name (and shape)."""
    header = description.header
    if header.get("Modality") or header.get("SOPClassUID"):
        from BINDSLib.io.dicom_index import series_modality

        modality = series_modality(header)
        if modality is not None:
            return modality
    words = set(_words(description.name)) | set(_words(header.get("SeriesDescription", "")))
    joined = "_".join(_words(description.name))
    is3d = description.shape is not None and description.shape[0] > 1
    if words & _US_WORDS or re.match(r"^US(_|$)", joined):
        return m.Modality.US
    if words & _MG_WORDS or re.match(r"^MG(_|$)", joined):
        return m.Modality.MG
    if words & _MR_WORDS or joined.startswith("MR_"):
        return m.Modality.MR
    # No modality word: a view code means a mammogram, an MR sequence word a 3D MR volume.
    mgView = m.mg.view_from_words(m.mg.words(description.name))
    if mgView is not None and not is3d:
        return m.Modality.MG
    sequence = m.mr.sequence_kind(_HeaderVolume(description, m))
    if is3d and sequence is not None:
        return m.Modality.MR
    if words & _ECHO_WORDS and sequence is None and not words & {"SPIN", "GRADIENT", "PLANAR", "EPI"}:
        return m.Modality.US
    return None


def _roleKeyOfName(name, m):
    """The role key a name is, allowing for what Slicer adds to a derived volume's name
    (``MR_DCE2_resampled``, ``US_R_10h_1``); None when it is none."""
    tokens = [t for t in re.split(r"[\s_-]+", name) if t]
    for end in range(len(tokens), 0, -1):
        try:
            return m.Role.parse("_".join(tokens[:end])).key
        except ValueError:
            pass
        if not (tokens[end - 1].upper() in _DERIVED_WORDS or tokens[end - 1].isdigit()):
            return None
    return None


class _HeaderVolume:
    """What ``BINDSLib.io.dicom_mr_roles`` needs of an MR volume, from header values only."""

    def __init__(self, description, m, fromName=False):
        header = dict(description.header or _nameHeader(description.name))
        self.header = header
        self.key = description.key
        self.label = header.get("SeriesDescription") or description.name
        self.role = None
        self.phaseFromName = None  # a phase number the name gives ("DCE 2"): that phase
        self.split_by = None
        self.index_in_series = 0
        self.slices = [SimpleNamespace(file=SimpleNamespace(path=description.key))]
        self._values = {
            "b_value": m.mr.b_value_of(header),
            "acq_time_s": m.time_s(header.get("AcquisitionTime")),
            "trigger_ms": m.number(header, "TriggerTime"),
        }
        if fromName:
            # No DICOM header: a phase number in the name ("DCE 2", "post 1", "phase 0") says
            # pre- or post-contrast and orders the phases; a "pre" T1 comes first.
            text = self.label.upper()
            match = _DCE_NUMBER_RE.search(text)
            words = set(_words(text))
            if match:
                phase = int(match[1])
                unit = _TIME_UNIT_RE.match(text, match.end())
                header["ProtocolName"] = "POST" if phase >= 1 else "PRE"
                self._values["acq_time_s"] = float(phase) * (60.0 if unit and unit[1].startswith("M") else 1.0)
                if unit is None and phase <= MAX_NAMED_PHASE:
                    self.phaseFromName = phase
            elif words & {"PRE", "PRECONTRAST", "NATIVE"}:
                self._values["acq_time_s"] = -1.0

    def first(self, attribute):
        return self._values.get(attribute)


def _headerWithName(description):
    """The header, with the node name standing in for missing descriptive text."""
    header = dict(description.header)
    if not header.get("SeriesDescription"):
        header["SeriesDescription"] = description.name
    return header


def guessRoles(descriptions):
    """Role keys for volumes: ``{key: role key or None}`` (None: could not tell).

    Rules, in order, for each volume:

    1. a name that is a role key (``MG_L_CC``, ``US_R_10h``, ``MR_DCE2``...) is that role;
    2. the modality from the DICOM header (Modality, SOP class), else from words of the name
       (MG / mammo, US / ultrasound, MR / MRI), else a view code on a 2D image means MG and an
       MR sequence word on a 3D volume means MR;
    3. MG: view and laterality by BINDSLib's mammography rules (ViewPosition,
       ViewCodeSequence, ImageLaterality, then words of descriptions and name);
       US: laterality and clock position by BINDSLib's ultrasound rules;
       MR: sequence by BINDSLib's MR rules; the T1 volumes of the call are ordered in time
       and split into pre-contrast (``MR_T1_PRE``) and post-contrast phases
       (``MR_DCE1``...) exactly as for a DICOM study.

    An MG image without a known view or laterality gets the partial key (``MG_L``, ``MG``),
    which the user completes.
    """
    m = _roleModules()
    roles = {}
    mrVolumes = []
    for description in descriptions:
        key = description.key
        roles[key] = None
        name = (description.name or "").strip()
        roles[key] = _roleKeyOfName(name, m)
        if roles[key] is not None:
            continue
        modality = _modalityOf(description, m)
        header = _headerWithName(description)
        if modality is m.Modality.MR and set(_words(name)) & _NOT_ACQUIRED_WORDS:
            continue  # a subtraction or a projection, not a phase: the user decides
        if modality is m.Modality.MG:
            roles[key] = m.mg.mg_role(header).key
        elif modality is m.Modality.US:
            roles[key] = m.us.us_role(header).key
        elif modality is m.Modality.MR:
            fromName = not description.header
            mrVolumes.append(_HeaderVolume(SimpleNamespace(key=key, name=name, header=header), m, fromName))
    if mrVolumes:
        m.mr.assign_roles(mrVolumes)
        for volume in mrVolumes:
            roles[volume.key] = None if volume.role is None else volume.role.key
            phase = volume.phaseFromName
            if volume.role is not None and phase is not None and volume.role.sequence in (
                    m.MRSequence.T1_PRE, m.MRSequence.DCE):  # the name's own phase number ("DCE phase 2")
                roles[volume.key] = "MR_T1_PRE" if phase == 0 else m.Role(m.Modality.MR, sequence=m.MRSequence.DCE,
                                                                          phase=phase).key
    return roles


def headerFromDicomDatabase(database, instanceUIDs, tags=DICOM_TAGS):
    """Header values (keyword -> str) of the first instance of a volume, from Slicer's DICOM
    database (``ctkDICOMDatabase.instanceValue``); ``{}`` when there is none."""
    uids = (instanceUIDs or "").split()
    if database is None or not uids:
        return {}
    header = {}
    for keyword, tag in tags.items():
        try:
            value = database.instanceValue(uids[0], tag)
        except Exception:  # noqa: BLE001 - a database without that instance
            value = ""
        if value:
            header[keyword] = str(value).strip()
    return header


def ultrasoundRegion(database, instanceUIDs):
    """The tissue region ``"x0 y0 x1 y1"`` (inclusive pixel box) of an ultrasound volume's first
    instance, from its DICOM file's SequenceOfUltrasoundRegions (``ctkDICOMDatabase.fileForInstance``),
    as ``binds diagnose`` crops the file (``dicom_us.tissue_region``); ``None`` without one."""
    uids = (instanceUIDs or "").split()
    if database is None or not uids:
        return None
    try:
        import pydicom

        path = database.fileForInstance(uids[0])
        ds = pydicom.dcmread(path, stop_before_pixels=True) if path else None
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception:  # noqa: BLE001 - no file, or not one pydicom reads: no crop, as before
        return None
    from BINDSLib.io.dicom_us import tissue_region

    region = tissue_region(ds, rows, cols)
    return None if region is None else f"{region.x0} {region.y0} {region.x1} {region.y1}"


def _orientationUsable(orientation, imageOrientation, name):
    """Whether a PatientOrientation may re-index the volume, as the DICOM reader decides it
    (``mg_orientation.checked_orientation``, against the ImageOrientationPatient ``"a\\b\\..."``
    the database gives); why not is said."""
    from BINDSLib.io.mg_orientation import checked_orientation

    try:
        iop = [float(v) for v in str(imageOrientation or "").split("\\")]
    except ValueError:
        iop = []
    parsed, problem = checked_orientation(orientation, iop if len(iop) == 6 else None)
    if problem:
        logging.warning("volume '%s': %s", name, problem)
    return parsed is not None


def describeVolume(volumeNode, database=None):
    """A :class:`VolumeDescription` of a volume node (header read when it came from DICOM)."""
    shape = None
    imageData = volumeNode.GetImageData()
    if imageData is not None:
        i, j, k = imageData.GetDimensions()
        shape = (k, j, i)
    header = headerFromDicomDatabase(database, volumeNode.GetAttribute("DICOM.instanceUIDs"))
    return VolumeDescription(volumeNode.GetID(), volumeNode.GetName(), header, shape)


def guessVolumeRoles(volumeNodes, database=None, overwrite=False):
    """Assign guessed roles to volume nodes (``BINDS.Role``, marked ``BINDS.RoleGuessed``); a
    role already set is kept unless ``overwrite``. Returns ``{node ID: role key or None}`` for
    all given nodes."""
    from .scene import (FRAME_ATTRIBUTE, ORIENTATION_ATTRIBUTE, ROLE_ATTRIBUTE, ROLE_GUESSED_ATTRIBUTE,
                        US_REGION_ATTRIBUTE, volumeRole)

    descriptions = [describeVolume(node, database) for node in volumeNodes]
    guessed = guessRoles(descriptions)
    result = {}
    for node, description in zip(volumeNodes, descriptions):
        frame = str(description.header.get("RepresentativeFrameNumber", "")).strip()
        if frame.isdigit() and int(frame) >= 1 and node.GetAttribute(FRAME_ATTRIBUTE) is None:
            node.SetAttribute(FRAME_ATTRIBUTE, str(int(frame) - 1))  # (a cine's frame the CLI reads too)
        orientation = str(description.header.get("PatientOrientation", "")).strip()
        if orientation and node.GetAttribute(ORIENTATION_ATTRIBUTE) is None and _orientationUsable(
                orientation, description.header.get("ImageOrientationPatient"), node.GetName()):
            node.SetAttribute(ORIENTATION_ATTRIBUTE, orientation)  # (as the CLI reads the file)
        if description.header.get("Modality", "").upper() == "US" and node.GetAttribute(US_REGION_ATTRIBUTE) is None:
            region = ultrasoundRegion(database, node.GetAttribute("DICOM.instanceUIDs"))
            # the crop the CLI makes of the file (annotations and colour bars left out); "" for none,
            # so that the file is not read again when the study's roles are guessed again
            node.SetAttribute(US_REGION_ATTRIBUTE, region or "")
        if volumeRole(node) and not overwrite:
            result[node.GetID()] = volumeRole(node)
            continue
        role = guessed.get(node.GetID())
        node.SetAttribute(ROLE_ATTRIBUTE, role or "")
        node.SetAttribute(ROLE_GUESSED_ATTRIBUTE, "1")
        result[node.GetID()] = role
    return result


def guessNewVolumeRoles(volumeNodes, database=None):
    """Guess the roles of the volumes among ``volumeNodes`` that have none yet (never seen), together
    with those whose role is still a guess: the phases of a DCE series are told apart by their
    order in time, so series that arrive one at a time (Slicer's DICOM browser loads them so)
    are guessed again as a set, study by study (subject hierarchy; volumes of no study form one
    set): another patient's phases are never ordered with them. Roles set by hand, or cleared,
    are kept. Returns the nodes guessed, ``[]`` when none is new."""
    from .scene import ROLE_ATTRIBUTE, ROLE_GUESSED_ATTRIBUTE, studyItemOf

    studies = {}
    for node in volumeNodes:
        if node.GetAttribute(ROLE_ATTRIBUTE) is None or node.GetAttribute(ROLE_GUESSED_ATTRIBUTE):
            studies.setdefault(studyItemOf(node.GetScene(), node), []).append(node)
    guessed = []
    for nodes in studies.values():
        if any(node.GetAttribute(ROLE_ATTRIBUTE) is None for node in nodes):  # a new one in this study
            guessVolumeRoles(nodes, database, overwrite=True)
            guessed += nodes
    return guessed


def roleChoices():
    """Role keys offered in the role selector, grouped MG, US, MR."""
    views = ("CC", "MLO", "ML", "LM", "XCCL")
    keys = [f"MG_{side}_{view}" for side in ("L", "R") for view in views]
    keys += ["US", "US_L", "US_R"]
    keys += ["MR_T1_PRE"] + [f"MR_DCE{k}" for k in range(1, 7)] + ["MR_T2", "MR_DWI_b800", "MR_ADC"]
    return keys
