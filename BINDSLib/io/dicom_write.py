"""Write a :class:`~BINDSLib.study.Study` as real DICOM (pydicom builds and writes the files).

Layout::

    OUT/
      01_MG_R_CC/IM0001.dcm       Digital Mammography X-Ray Image - For Presentation
      05_US_L_10h/IM0001.dcm      Ultrasound Image (Ultrasound Multi-frame Image if depth > 1)
      06_MR_T1_PRE/IM0001.dcm ... MR Image, one file per slice, one series per image

* UIDs come from ``pydicom.uid.generate_uid`` with entropy from ``study_id`` and the image
  label, so writing the same study twice gives the same UIDs (and the same bytes).
* Voxels are stored as uint16 with RescaleSlope/RescaleIntercept (one pair per series); data
  that is already integral and spans at most 65536 values is stored losslessly.
* MR geometry: ImagePositionPatient / ImageOrientationPatient / PixelSpacing from the
  :class:`~BINDSLib.study.Geometry` (LPS). A left-handed direction (slice axis opposite to
  row x column) cannot be told apart in DICOM: it reads back as the same physical grid with the
  slice order reversed.
* The patient ID is pseudonymised (``anon-...``) unless ``keep_identifiers``;
  PatientIdentityRemoved is YES, BurnedInAnnotation NO. Synthetic studies carry
  ``SYNTHETIC`` at the start of every SeriesDescription and in ImageComments.
* Lesion masks and findings are not written.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..fsutil import atomic_dir
from ..study import Image, Modality, MRSequence, Study, pseudonym
from .dicom_common import MG_PRESENTATION_SOP, MR_SOP, US_MULTIFRAME_SOP, US_SOP, image_order

log = logging.getLogger(__name__)

SYNTHETIC_MARK = "SYNTHETIC"
#: ViewCodeSequence entries (SNOMED CT, DICOM CID 4014) for the views BINDS writes.
VIEW_CODE_ITEMS = {
    "CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medio-lateral"), "LM": ("399352003", "latero-medial"),
    "LMO": ("399099002", "latero-medial oblique"),
    "XCCL": ("399192003", "cranio-caudal exaggerated laterally"),
    "XCCM": ("399101009", "cranio-caudal exaggerated medially"),
    "FB": ("399196006", "caudo-cranial (from below)"),
    "SIO": ("399188001", "superolateral to inferomedial oblique"),
    "AT": ("399265009", "axillary tail"), "CV": ("399255005", "cleavage"),
}
_BOLUS_START_S = 12 * 3600.0  # ContrastBolusStartTime written for DCE phases: 12:00:00
_MR_TIMING = {  # ScanningSequence, RepetitionTime ms, EchoTime ms, description
    MRSequence.T1_PRE: ("GR", 4.5, 2.0, "T1 pre-contrast"),
    MRSequence.DCE: ("GR", 4.5, 2.0, "DCE post-contrast phase {phase}"),
    MRSequence.T2: ("SE", 4000.0, 100.0, "T2"),
    MRSequence.DWI: ("EP", 5000.0, 80.0, "DWI"),
    MRSequence.ADC: ("EP", 5000.0, 80.0, "ADC"),
}


def _ds_number(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def quantise_uint16(voxels: np.ndarray) -> tuple[np.ndarray, str, str]:
    """Voxels to uint16 stored values with the DS strings of RescaleSlope and RescaleIntercept.

    Parameters
    ----------
    voxels : np.ndarray
        Any shape, finite.

    Returns
    -------
    stored : np.ndarray
        uint16, same shape; ``stored * slope + intercept`` is within ``slope / 2`` of ``voxels``
        (exact for integral data spanning at most 65536 values).
    slope, intercept : str
        As written in the file (at most 16 characters), the values the reader will use.
    """
    v = np.asarray(voxels, dtype=np.float64)
    if not np.isfinite(v).all():
        raise OutputError("cannot write NaN or infinite voxels to DICOM")
    lo, hi = float(v.min()), float(v.max())
    if np.array_equal(v, np.round(v)) and hi - lo <= 65535:
        intercept = 0.0 if lo >= 0 and hi <= 65535 else lo
        slope_s, intercept_s = "1", _ds_number(intercept)
    else:
        slope_s = _ds_number((hi - lo) / 65535.0 if hi > lo else 1.0)
        intercept_s = _ds_number(lo)
    slope, intercept = float(slope_s), float(intercept_s)
    stored = np.clip(np.round((v - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope_s, intercept_s


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _date(d: _dt.date | None) -> str:
    return "" if d is None else d.strftime("%Y%m%d")


def _time(seconds: float) -> str:
    seconds = seconds % 86400
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


class _Writer:
    """Builds the datasets of one study (holds the study-level identifiers)."""

    def __init__(self, study: Study, keep_identifiers: bool):
        self.study = study
        self.keep = keep_identifiers
        self.study_uid = _uid(study.study_id, "study")
        self.frame_of_reference_uid = _uid(study.study_id, "frame-of-reference")
        pid = study.patient_id or ""
        if pid and not keep_identifiers and not pid.startswith("anon-"):
            pid = pseudonym(pid)
        self.patient_id = pid

    # -- common modules ---------------------------------------------------------------------
    def base(self, im: Image, sop_class: str, series_number: int, instance: int, description: str):
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian

        st = self.study
        sop_uid = _uid(st.study_id, im.label, "instance", instance)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationVersionName = "BINDS"
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.StudyDate = _date(st.study_date)
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _date(im.acquisition_date or st.study_date)
        ds.StudyTime, ds.ContentTime = "115500", "115500"
        ds.AccessionNumber = ""
        ds.Modality = im.modality.value
        ds.Manufacturer = "BINDS"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = (st.description or "")[:64]
        ds.SeriesDescription = self.series_description(description)
        ds.PatientName = self.patient_id
        ds.PatientID = self.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "F"
        ds.PatientIdentityRemoved = "NO" if self.keep else "YES"
        if not self.keep:
            ds.DeidentificationMethod = "BINDS: PatientID pseudonymised"
        ds.BodyPartExamined = "BREAST"
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = _uid(st.study_id, im.label, "series")
        ds.StudyID = ""
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance
        ds.BurnedInAnnotation = "NO"
        if st.synthetic:
            ds.ImageComments = f"{SYNTHETIC_MARK}: generated image, not a patient"
        return ds

    def series_description(self, description: str) -> str:
        return (f"{SYNTHETIC_MARK} {description}" if self.study.synthetic else description)[:64]

    @staticmethod
    def pixels(ds, stored: np.ndarray, slope: str, intercept: str, rescale_type: str | None = None):
        from pydicom.pixels import set_pixel_data

        set_pixel_data(ds, stored, "MONOCHROME2", 16 if stored.dtype == np.uint16 else 8,
                       generate_instance_uid=False)
        if slope != "1" or float(intercept) != 0.0 or rescale_type:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            if rescale_type:
                ds.RescaleType = rescale_type

    # -- modalities -------------------------------------------------------------------------
    def mg(self, im: Image, series_number: int) -> list:
        if im.voxels.shape[0] != 1:
            raise OutputError(f"{im.label}: a mammogram must be 2D, not {im.voxels.shape[0]} slices")
        role = im.role
        desc = " ".join(p for p in ("MG", role.laterality, role.view) if p)
        ds = self.base(im, MG_PRESENTATION_SOP, series_number, 1, desc)
        ds.PresentationIntentType = "FOR PRESENTATION"
        if role.view:
            ds.ViewPosition = role.view
            code, meaning = VIEW_CODE_ITEMS[role.view]
            ds.ViewCodeSequence = [_code_item(code, "SCT", meaning)]
        if role.laterality:
            ds.ImageLaterality = role.laterality
        sx, sy = im.geometry.spacing_mm[:2]
        ds.PixelSpacing = ds.ImagerPixelSpacing = [_ds_number(sy), _ds_number(sx)]
        stored, slope, intercept = quantise_uint16(im.voxels[0])
        self.pixels(ds, stored, slope, intercept, rescale_type="US")
        ds.PresentationLUTShape = "IDENTITY"
        _identity_window(ds, float(slope), float(intercept))
        self.plane(ds, im.geometry)
        return [ds]

    def us(self, im: Image, series_number: int) -> list:
        role = im.role
        depth = im.voxels.shape[0]
        desc = role.key.replace("_", " ")
        ds = self.base(im, US_MULTIFRAME_SOP if depth > 1 else US_SOP, series_number, 1, desc)
        if role.laterality:
            ds.Laterality = ds.ImageLaterality = role.laterality
        v = im.voxels
        if np.array_equal(v, np.round(v)) and v.min() >= 0 and v.max() <= 255:
            stored, slope, intercept = v.astype(np.uint8), "1", "0"
        else:
            stored, slope, intercept = quantise_uint16(v)
        self.pixels(ds, stored if depth > 1 else stored[0], slope, intercept)
        if depth > 1:
            ds.FrameTime = "100"
            ds.FrameIncrementPointer = 0x00181063  # FrameTime
        if role.frame is not None:
            ds.RepresentativeFrameNumber = role.frame + 1
        ds.SequenceOfUltrasoundRegions = [_us_region(im)]
        self.plane(ds, im.geometry)
        return [ds]

    def plane(self, ds, g) -> None:
        """Patient position of a 2D image (not part of the MG/US IODs, but kept so that the
        geometry reads back exactly; readers without it see the plain pixel grid)."""
        d = g.direction_matrix
        ds.FrameOfReferenceUID = self.frame_of_reference_uid
        ds.ImagePositionPatient = [_ds_number(x) for x in g.origin_mm]
        ds.ImageOrientationPatient = [_ds_number(x) for x in (*d[:, 0], *d[:, 1])]

    def mr(self, im: Image, series_number: int) -> list:
        role = im.role
        scanning, tr, te, desc = _MR_TIMING[role.sequence]
        desc = desc.format(phase=role.phase)
        if role.sequence is MRSequence.DWI and role.b_value is not None:
            desc = f"DWI b{role.b_value:g}"
        stored, slope, intercept = quantise_uint16(im.voxels)
        g = im.geometry
        d = g.direction_matrix
        sx, sy, sz = g.spacing_mm
        out = []
        for k in range(stored.shape[0]):
            ds = self.base(im, MR_SOP, series_number, k + 1, desc)
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = scanning, "NONE", ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime, ds.EchoTime = _ds_number(tr), _ds_number(te)
            ds.MagneticFieldStrength = "1.5"
            ds.FrameOfReferenceUID = self.frame_of_reference_uid
            ds.PositionReferenceIndicator = ""
            position = np.asarray(g.origin_mm) + d[:, 2] * (k * sz)
            ds.ImagePositionPatient = [_ds_number(x) for x in position]
            ds.ImageOrientationPatient = [_ds_number(x) for x in (*d[:, 0], *d[:, 1])]
            ds.SliceLocation = _ds_number(float(np.dot(position, np.cross(d[:, 0], d[:, 1]))))
            ds.PixelSpacing = [_ds_number(sy), _ds_number(sx)]
            ds.SliceThickness = ds.SpacingBetweenSlices = _ds_number(sz)
            self.pixels(ds, stored[k], slope, intercept)
            if slope == "1" and float(intercept) == 0.0:
                ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
            _mr_role_attributes(ds, im)
            out.append(ds)
        return out


def _code_item(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _identity_window(ds, slope: float, intercept: float) -> None:
    """A LINEAR_EXACT window spanning the whole rescaled range: display = modality values."""
    lo, hi = sorted((intercept, 65535 * slope + intercept))
    ds.WindowCenter = _ds_number((lo + hi) / 2)
    ds.WindowWidth = _ds_number(hi - lo)
    ds.VOILUTFunction = "LINEAR_EXACT"


def _us_region(im: Image):
    from pydicom.dataset import Dataset

    _, rows, cols = im.voxels.shape
    sx, sy = im.geometry.spacing_mm[:2]
    r = Dataset()
    r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
    r.RegionLocationMinX0, r.RegionLocationMinY0 = 0, 0
    r.RegionLocationMaxX1, r.RegionLocationMaxY1 = cols - 1, rows - 1
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = 3  # cm
    r.PhysicalDeltaX, r.PhysicalDeltaY = sx / 10.0, sy / 10.0
    return r


def _mr_role_attributes(ds, im: Image) -> None:
    role = im.role
    seq = role.sequence
    if seq is MRSequence.T1_PRE:
        ds.AcquisitionTime = _time(_BOLUS_START_S - 60)
        ds.TemporalPositionIdentifier = 1
    elif seq is MRSequence.DCE:
        ds.ContrastBolusAgent = "GADOLINIUM"
        ds.TemporalPositionIdentifier = role.phase + 1
        if role.phase_time_s is not None:
            ds.ContrastBolusStartTime = _time(_BOLUS_START_S)
            ds.AcquisitionTime = _time(_BOLUS_START_S + role.phase_time_s)
            ds.TriggerTime = _ds_number(role.phase_time_s * 1000.0)
    elif seq is MRSequence.DWI:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]
        if role.b_value is not None:
            ds.DiffusionBValue = float(role.b_value)
    elif seq is MRSequence.ADC:
        ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]


def _series_order(study: Study) -> list[Image]:
    return sorted(study.images, key=image_order)


def write_study_dicom(study: Study, out_dir: str | os.PathLike, overwrite: bool = False, *,
                      keep_identifiers: bool = False) -> Path:
    """Write ``study`` as DICOM files under ``out_dir`` (atomically). Returns ``out_dir``.

    Parameters
    ----------
    study : Study
        Any study: MG images ``(1, rows, cols)``, US ``(frames, rows, cols)``, MR volumes
        ``(slices, rows, cols)`` with LPS geometry. Voxels must be finite.
    out_dir : str or PathLike
        Folder to create; one sub-folder per series.
    overwrite : bool
        Replace an existing ``out_dir``.
    keep_identifiers : bool
        Write the patient ID as is instead of its pseudonym.

    Raises
    ------
    OutputError
        If ``out_dir`` exists without ``overwrite``, or an image cannot be written.
    """
    if not study.images:
        raise OutputError(f"study {study.study_id} has no images to write")
    writer = _Writer(study, keep_identifiers)
    build = {Modality.MG: writer.mg, Modality.US: writer.us, Modality.MR: writer.mr}
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite, signs=("[0-9][0-9]_*/IM[0-9][0-9][0-9][0-9].dcm",)) as tmp:
        for n, im in enumerate(_series_order(study), start=1):
            folder = tmp / f"{n:02d}_{im.label}"
            folder.mkdir()
            for ds in build[im.modality](im, n):
                ds.save_as(folder / f"IM{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)
    log.info("wrote %d series of study %s as DICOM to %s", len(study.images), study.study_id, out)
    return out
