"""Mammograms from DICOM: view, laterality, presentation intent, display values and spacing.

Rules (documented in docs/DICOM.md):

* view: ViewPosition, else ViewCodeSequence (code meaning or SNOMED code), else words in
  SeriesDescription / ProtocolName / PatientID (CBIS-DDSM's ``..._LEFT_CC``);
* laterality: ImageLaterality, else Laterality, else the same words;
* For Presentation is used; a For Processing image is skipped (with the reason), and a view that
  has only a For Processing image is skipped with "For Processing only";
* pixels: modality LUT, then VOI LUT / window (index 0), then MONOCHROME1 inverted within the
  output range; float32 ``(1, rows, cols)``;
* spacing: ImagerPixelSpacing, else PixelSpacing, for the projection-radiography classes (MG, DX,
  CR), as GDCM (ITK, SimpleITK, Slicer's DICOM reader) places them, so that outputs overlay
  Slicer's own load of the file; for others (secondary capture) PixelSpacing, else
  NominalScannedPixelSpacing, as GDCM; else ImagerPixelSpacing (GDCM: 1 mm), else 1 mm (a
  warning). A value outside 0.01-5 mm is implausible for a mammogram and ignored (a warning);
* orientation: a mammogram stored otherwise than in the standard orientation (turned, upside
  down or mirrored, by its PatientOrientation) is re-indexed to it, each pixel's place in space
  kept (``mg_orientation``);
* magnification: EstimatedRadiographicMagnificationFactor is recorded (``SourceInfo``), not
  applied (GDCM does not apply it); a magnification view is a note of the report.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..study import MG_VIEWS, Image, Modality, Role, SourceInfo
from .dicom_common import (
    plane_geometry, skip_unreadable, sop_class,
    CR_SOP, DX_PRESENTATION_SOP, DX_PROCESSING_SOP, MG_PRESENTATION_SOP, MG_PROCESSING_SOP, Skipped, decode,
    dicom_date, frames_of, modality_lut, number, numbers, read_full, text, to_float32,
)
from .files import to_grayscale
from .mg_orientation import checked_orientation, other_breasts_storage, reorient, reorientation, steps_text

log = logging.getLogger(__name__)

#: ViewCodeSequence code meanings (lower case, letters only) to view codes, longest first.
_VIEW_MEANINGS = (
    ("craniocaudalexaggeratedlaterally", "XCCL"), ("craniocaudalexaggeratedmedially", "XCCM"),
    ("mediolateraloblique", "MLO"), ("lateromedialoblique", "LMO"),
    ("superolateraltoinferomedialoblique", "SIO"), ("caudocranial", "FB"), ("frombelow", "FB"),
    ("craniocaudal", "CC"), ("mediolateral", "ML"), ("lateromedial", "LM"),
    ("axillarytail", "AT"), ("cleavage", "CV"),
)
#: ViewCodeSequence code values (DICOM CID 4014: SNOMED-RT and SNOMED CT) to view codes.
VIEW_CODES = {
    "R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO",
    "R-10224": "ML", "399260004": "ML", "R-10228": "LM", "399352003": "LM",
    "R-10230": "LMO", "399099002": "LMO", "R-1024A": "XCCL", "399192003": "XCCL",
    "R-1024B": "XCCM", "399101009": "XCCM", "R-10236": "FB", "399196006": "FB",
    "R-10233": "SIO", "399188001": "SIO", "R-10234": "AT", "399265009": "AT",
    "R-102D0": "CV", "399255005": "CV",
}
_LATERALITY_WORDS = {"L": "L", "LEFT": "L", "LT": "L", "R": "R", "RIGHT": "R", "RT": "R"}
_COMBINED_RE = re.compile(r"^(?P<lat>[LR])(?P<view>" + "|".join(MG_VIEWS) + r")$")
_PLAUSIBLE_SPACING_MM = (0.01, 5.0)
#: SOP classes whose pixels GDCM spaces by ImagerPixelSpacing (the detector plane), as digitised
#: film is (the mammography models were trained on film).
_DETECTOR_SPACED_SOPS = frozenset({MG_PRESENTATION_SOP, MG_PROCESSING_SOP, DX_PRESENTATION_SOP,
                                   DX_PROCESSING_SOP, CR_SOP})


def words(*texts: str) -> list[str]:
    """Upper-case alphanumeric words of ``texts`` (``'Mass-Test_P_00173_LEFT_CC'`` ->
    ``['MASS', 'TEST', 'P', '00173', 'LEFT', 'CC']``)."""
    out: list[str] = []
    for t in texts:
        out.extend(w for w in re.split(r"[^A-Z0-9]+", (t or "").upper()) if w)
    return out


def view_from_words(ws: list[str]) -> str | None:
    """The last view code among ``ws`` (``CC``, ``MLO``, ``LCC`` -> ``CC``), or ``None``."""
    for w in reversed(ws):
        if w in MG_VIEWS:
            return w
        m = _COMBINED_RE.match(w)
        if m:
            return m["view"]
    return None


def laterality_from_words(ws: list[str]) -> str | None:
    """The last laterality among ``ws`` (``LEFT``, ``RT``, ``LMLO`` -> ``L``), or ``None``."""
    for w in reversed(ws):
        if w in _LATERALITY_WORDS:
            return _LATERALITY_WORDS[w]
        m = _COMBINED_RE.match(w)
        if m:
            return m["lat"]
    return None


def _fallback_words(ds) -> list[str]:
    return words(text(ds, "SeriesDescription"), text(ds, "ProtocolName"), text(ds, "PatientID"))


def view_from_code_sequence(ds) -> str | None:
    """View from ViewCodeSequence: the code value, else the code meaning."""
    for item in ds.get("ViewCodeSequence") or []:
        code = text(item, "CodeValue")
        if code in VIEW_CODES:
            return VIEW_CODES[code]
        meaning = re.sub(r"[^a-z]", "", text(item, "CodeMeaning").lower())
        for key, view in _VIEW_MEANINGS:
            if key in meaning:
                return view
    return None


def mg_view(ds) -> str | None:
    """Mammographic view code (one of ``study.MG_VIEWS``), or ``None`` if unknown."""
    return (view_from_words(words(text(ds, "ViewPosition")))
            or view_from_code_sequence(ds)
            or view_from_words(_fallback_words(ds)))


def mg_laterality(ds) -> str | None:
    """``'L'`` or ``'R'`` from ImageLaterality, Laterality or descriptive text, or ``None``."""
    for kw in ("ImageLaterality", "Laterality"):
        v = text(ds, kw).upper()
        if v in ("L", "R"):
            return v
    return laterality_from_words(_fallback_words(ds))


def is_for_processing(ds) -> bool:
    """Whether the image is raw detector data (For Processing) rather than For Presentation."""
    intent = text(ds, "PresentationIntentType").upper()
    if intent:
        return intent == "FOR PROCESSING"
    return text(ds, "SOPClassUID") in (MG_PROCESSING_SOP, DX_PROCESSING_SOP)


def mg_role(ds) -> Role:
    """The :class:`Role` of a mammogram header (view/laterality ``None`` when unknown)."""
    return Role(Modality.MG, laterality=mg_laterality(ds), view=mg_view(ds))


def mg_spacing_mm(ds, path=None) -> tuple[float, float]:
    """Pixel spacing ``(column, row)`` in mm, from the tag GDCM reads for the file's SOP class:
    ImagerPixelSpacing, else PixelSpacing, for MG, DX and CR; PixelSpacing, else
    NominalScannedPixelSpacing (film digitised), else ImagerPixelSpacing, for others (secondary
    capture); else 1 mm. An implausible value is skipped (a warning)."""
    lo, hi = _PLAUSIBLE_SPACING_MM
    order = ("PixelSpacing", "NominalScannedPixelSpacing", "ImagerPixelSpacing")
    sop = sop_class(ds)
    if sop in _DETECTOR_SPACED_SOPS or (not sop and text(ds, "Modality").upper() in ("MG", "DX", "CR")):
        order = ("ImagerPixelSpacing", "PixelSpacing")
    for kw in order:
        sp = _spacing_pair(ds, kw, path)
        if sp is None:
            continue
        row_mm, col_mm = sp
        if lo <= row_mm <= hi and lo <= col_mm <= hi:
            return col_mm, row_mm
        log.warning("%s: ignoring implausible %s %s mm for a mammogram", path, kw, list(sp))
    log.warning("%s: no usable %s; assuming 1 mm pixels", path, " or ".join(order))
    return 1.0, 1.0


def _spacing_pair(ds, keyword: str, path) -> tuple[float, float] | None:
    """``(row, column)`` spacing of a spacing tag: its two values; one value for both axes and the
    first two of more, as GDCM reads them (with a warning); ``None`` when absent, or unusable
    (not numbers, not finite: a warning names the file and the value)."""
    try:
        value = ds.get(keyword)
    except (TypeError, ValueError) as e:  # (pydicom converting a malformed decimal string)
        log.warning("%s: ignoring %s: not two numbers (%s)", path, keyword, e)
        return None
    if value is None or value == "":
        return None
    items = list(value) if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)) else [value]
    try:
        numbers_ = [float(v) for v in items]
    except (TypeError, ValueError):
        numbers_ = []
    if not numbers_ or not np.all(np.isfinite(numbers_[:2])):
        log.warning("%s: ignoring %s '%s': not two numbers", path, keyword, "\\".join(str(v) for v in items))
        return None
    if len(numbers_) != 2:
        log.warning("%s: %s has %d value(s) %s; read as GDCM reads it: %s", path, keyword, len(numbers_),
                    numbers_, "both axes at the one value" if len(numbers_) == 1 else "the first two")
    return (numbers_[0], numbers_[0]) if len(numbers_) == 1 else (numbers_[0], numbers_[1])


def mg_magnification(ds, path=None) -> float | None:
    """EstimatedRadiographicMagnificationFactor when it is a plausible factor (1-5), else ``None``."""
    m = number(ds, "EstimatedRadiographicMagnificationFactor")
    if m is not None and 1.0 <= m <= 5.0:
        return m
    if ds.get("EstimatedRadiographicMagnificationFactor") not in (None, ""):
        log.warning("%s: ignoring EstimatedRadiographicMagnificationFactor '%s': not a factor from 1 to 5",
                    path, text(ds, "EstimatedRadiographicMagnificationFactor"))
    return None


def _output_range(ds, voi_lut_used: bool) -> tuple[float, float]:
    """Range of values after the modality and VOI steps (what MONOCHROME1 is inverted in)."""
    if voi_lut_used:
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    bits = int(number(ds, "BitsStored") or number(ds, "BitsAllocated") or 16)
    if int(number(ds, "PixelRepresentation") or 0) == 1:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        lo, hi = 0.0, 2.0**bits - 1
    slope, intercept = number(ds, "RescaleSlope"), number(ds, "RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def display_values(arr: np.ndarray, ds) -> np.ndarray:
    """Stored values ``(frames, rows, cols)`` to display values: modality LUT, VOI LUT or window
    (first of each), MONOCHROME1 inverted. Returns float64 of the same shape."""
    from pydicom.pixels import apply_voi_lut

    values = modality_lut(arr, ds)
    voi_lut_used = bool(ds.get("VOILUTSequence")) and "LUTData" in ds.VOILUTSequence[0]
    has_window = number(ds, "WindowCenter") is not None and number(ds, "WindowWidth") is not None
    if voi_lut_used or has_window:
        source = values
        if voi_lut_used and np.array_equal(values, np.round(values)):
            source = values.astype(np.int64)  # a VOI LUT is indexed by integers
        values = np.asarray(apply_voi_lut(source, ds, index=0), dtype=np.float64)
    if text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        lo, hi = _output_range(ds, voi_lut_used)
        values = (lo + hi) - values
    return values


def read_mg_pixels(ds, path) -> np.ndarray:
    """Display values of a mammogram as float32 ``(1, rows, cols)``."""
    if frames_of(ds) > 1:
        raise InputError(f"multi-frame mammography ({frames_of(ds)} frames, e.g. tomosynthesis) "
                         "is not supported; export the 2D views", path)
    arr, photometric = decode(ds, path)
    if arr.ndim == 4:  # colour secondary capture of a mammogram
        return to_float32(to_grayscale(arr), path)
    return to_float32(display_values(arr, ds), path)


def read_mg_image(path: Path, header) -> Image:
    """One mammogram as an :class:`Image` (``voxels`` float32 ``(1, rows, cols)``)."""
    ds = read_full(path)
    voxels = read_mg_pixels(ds, path)
    sx, sy = mg_spacing_mm(header, path)
    acq = (dicom_date(text(header, "AcquisitionDate")) or dicom_date(text(header, "ContentDate"))
           or dicom_date(text(header, "StudyDate")))
    source = SourceInfo(files=(str(path),), study_instance_uid=text(header, "StudyInstanceUID") or None,
                        series_instance_uid=text(header, "SeriesInstanceUID") or None,
                        sop_instance_uids=tuple(u for u in [text(header, "SOPInstanceUID")] if u),
                        manufacturer=text(header, "Manufacturer") or None,
                        description=text(header, "SeriesDescription") or None,
                        magnification=mg_magnification(header, path))
    role = mg_role(header)
    geometry = plane_geometry(header, sx, sy, path=path)
    orientation, problem = checked_orientation(header.get("PatientOrientation"),
                                               numbers(header, "ImageOrientationPatient", 6))
    if problem:
        log.warning("%s: %s", path, problem)
    if other_breasts_storage(orientation, role.view, role.laterality):
        log.warning("%s: PatientOrientation '%s' is how the other breast's %s is stored: is the laterality %s "
                    "right? (read as stored)", path, text(header, "PatientOrientation"), role.view, role.laterality)
    steps = reorientation(orientation, role.view, role.laterality)
    if any(steps):
        how = steps_text(steps)
        log.info("%s: stored %s (PatientOrientation %s): re-indexed to the standard orientation", path, how,
                 "\\".join(orientation))
        voxels, geometry = reorient(voxels, geometry, *steps)
        source = dataclasses.replace(source, reoriented=how)
    return Image(voxels, geometry, role, acquisition_date=acq, source=source)


def select_presentation(files) -> tuple[list, list[Skipped]]:
    """Keep For Presentation images; skip For Processing ones (see module docstring).

    Parameters
    ----------
    files : list of DicomFile
        The mammograms of one study.

    Returns
    -------
    kept, skipped
    """
    by_view: dict[tuple, list] = {}
    for f in files:
        role = mg_role(f.header)
        by_view.setdefault((role.laterality, role.view), []).append(f)
    kept, skipped = [], []
    for (lat, view), group in by_view.items():
        name = " ".join(p for p in (lat, view) if p) or "unknown view"
        presentation = [f for f in group if not is_for_processing(f.header)]
        kept.extend(presentation)
        for f in group:
            if f in presentation:
                continue
            if presentation:
                reason = (f"For Processing image of {name} skipped: the For Presentation image "
                          "of the same view is used")
            else:
                reason = (f"For Processing only: the {name} view has no For Presentation image; "
                          "BINDS needs the For Presentation image (export it from the PACS or "
                          "the modality)")
            log.debug("skipped %s: %s", f.path, reason)  # the caller reports Skipped
            skipped.append(Skipped(str(f.path), reason))
    return kept, skipped


def read_mg_series(series_list) -> tuple[list[Image], list[Skipped]]:
    """All mammograms of one study's MG series (For Presentation only)."""
    files = [f for s in series_list for f in s.files]
    kept, skipped = select_presentation(files)
    images = []
    for f in kept:
        im = skip_unreadable(f.path, lambda: read_mg_image(f.path, f.header), skipped)
        if im is None:
            continue
        if im.role.view is None or im.role.laterality is None:
            log.warning("%s: mammogram with unknown %s", f.path,
                        "view" if im.role.view is None else "laterality")
        images.append(im)
    return images, skipped
