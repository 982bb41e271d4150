"""Breast ultrasound from DICOM: grayscale frames, physical spacing and the tissue region.

Rules (documented in docs/DICOM.md):

* colour: YBR_FULL / YBR_FULL_422 are converted to RGB (``pydicom.pixels.convert_color_space``),
  PALETTE COLOR through its lookup table (``apply_color_lut``, 16-bit entries scaled to
  0-255), then RGB to luma (ITU-R BT.601). JPEG 2000 YBR_RCT / YBR_ICT arrive as RGB from the
  codec. MONOCHROME1 is inverted; the modality LUT is applied to grayscale data;
* a multi-frame cine keeps its frames along ``depth`` (depth spacing 1);
* spacing and crop: the largest 2D tissue region of SequenceOfUltrasoundRegions
  (RegionSpatialFormat 1) with PhysicalUnits 3 (cm) gives the spacing (PhysicalDeltaX/Y x 10
  mm) and the image is **cropped to that region** (clipped to the image), which removes
  annotations, colour bars and text around it. The crop is recorded in the geometry: the
  origin is the region's top-left corner in mm of the original frame. Without such a region:
  PixelSpacing, else 1 mm (a warning), no crop.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..study import Image, Modality, Role, SourceInfo
from .dicom_common import (
    plane_geometry, skip_unreadable,
    Skipped, decode, dicom_date, modality_lut, number, numbers, read_full, text, to_float32,
)
from .dicom_mg import laterality_from_words, words
from .files import to_grayscale

log = logging.getLogger(__name__)

_CM = 3  # PhysicalUnitsX/YDirection code for centimetres
_CLOCK_RE = re.compile(r"(?<![\d.])(\d{1,2}(?:\.\d+)?)\s*(?:H|HRS?|O\W?CLOCK)\b")


@dataclass(frozen=True)
class USRegion:
    """A 2D tissue region: inclusive pixel box and spacing in mm."""

    x0: int
    y0: int
    x1: int
    y1: int
    spacing_x_mm: float
    spacing_y_mm: float

    @property
    def area(self) -> int:
        return (self.x1 - self.x0 + 1) * (self.y1 - self.y0 + 1)


def tissue_region(ds, rows: int, cols: int) -> USRegion | None:
    """The largest 2D tissue region in centimetres, clipped to a ``rows x cols`` image."""
    best = None
    for r in ds.get("SequenceOfUltrasoundRegions") or []:
        if number(r, "RegionSpatialFormat") != 1:
            continue
        if number(r, "PhysicalUnitsXDirection") != _CM or number(r, "PhysicalUnitsYDirection") != _CM:
            continue
        dx, dy = number(r, "PhysicalDeltaX"), number(r, "PhysicalDeltaY")
        box = [number(r, k) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                      "RegionLocationMaxX1", "RegionLocationMaxY1")]
        if not dx or not dy or dx <= 0 or dy <= 0 or None in box:
            continue
        x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
        x1, y1 = min(cols - 1, int(box[2])), min(rows - 1, int(box[3]))
        if x1 < x0 or y1 < y0:
            continue
        region = USRegion(x0, y0, x1, y1, abs(dx) * 10.0, abs(dy) * 10.0)
        if best is None or region.area > best.area:
            best = region
    return best


def us_laterality(ds) -> str | None:
    for kw in ("ImageLaterality", "Laterality"):
        v = text(ds, kw).upper()
        if v in ("L", "R"):
            return v
    return laterality_from_words(words(text(ds, "SeriesDescription"), text(ds, "ImageComments")))


def us_clock_position(ds) -> float | None:
    """Clock position (hours) from descriptive text such as ``'L 10h'`` or ``"10 o'clock"``."""
    for kw in ("SeriesDescription", "ImageComments", "StudyDescription"):
        for m in _CLOCK_RE.finditer(text(ds, kw).upper()):
            hours = float(m[1])
            if 1 <= hours < 13:
                return hours
    return None


def us_role(ds) -> Role:
    frame = number(ds, "RepresentativeFrameNumber")
    return Role(Modality.US, laterality=us_laterality(ds), clock_position=us_clock_position(ds),
                frame=None if frame is None else max(0, int(frame) - 1))


def grayscale_frames(ds, path) -> np.ndarray:
    """Decoded pixels as float32 grayscale ``(frames, rows, cols)``."""
    from pydicom.pixels import apply_color_lut, convert_color_space

    arr, photometric = decode(ds, path)
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        if arr.dtype != np.uint8:
            raise InputError(f"{photometric} with {arr.dtype} samples is not supported", path)
        arr = convert_color_space(arr, photometric, "RGB", per_frame=True)
        photometric = "RGB"
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        scale = 255.0 / 65535.0 if rgb.dtype == np.uint16 else 1.0
        return to_float32(to_grayscale(rgb) * scale, path)
    if photometric in ("RGB", "YBR_RCT", "YBR_ICT"):
        return to_float32(to_grayscale(arr), path)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"photometric interpretation {photometric!r} is not supported", path)
    values = modality_lut(arr, ds)
    if photometric == "MONOCHROME1":
        bits = int(number(ds, "BitsStored") or 8)
        values = modality_lut(np.full((1,), 2**bits - 1), ds)[0] - values
    return to_float32(values, path)


def read_us_image(path: Path, header) -> Image:
    """One ultrasound file as an :class:`Image` (``voxels`` float32 ``(frames, rows, cols)``)."""
    ds = read_full(path)
    voxels = grayscale_frames(ds, path)
    _, rows, cols = voxels.shape
    region = tissue_region(ds, rows, cols)
    if region is not None:
        voxels = voxels[:, region.y0:region.y1 + 1, region.x0:region.x1 + 1]
        sx, sy = region.spacing_x_mm, region.spacing_y_mm
        geometry = plane_geometry(header, sx, sy, region.x0, region.y0, path=path)
        log.info("%s: cropped to the ultrasound region x %d-%d, y %d-%d (%.3f x %.3f mm pixels)",
                 path, region.x0, region.x1, region.y0, region.y1, sx, sy)
    else:
        sp = numbers(ds, "PixelSpacing", 2)
        sx, sy = (sp[1], sp[0]) if sp and min(sp) > 0 else (1.0, 1.0)
        geometry = plane_geometry(header, sx, sy, path=path)
        if not sp:
            log.warning("%s: no ultrasound region in cm and no PixelSpacing; assuming 1 mm pixels", path)
    acq = (dicom_date(text(header, "AcquisitionDate")) or dicom_date(text(header, "ContentDate"))
           or dicom_date(text(header, "StudyDate")))
    role = us_role(header)
    if role.frame is not None and role.frame >= voxels.shape[0]:
        role = Role(Modality.US, laterality=role.laterality, clock_position=role.clock_position)
    source = SourceInfo(files=(str(path),), study_instance_uid=text(header, "StudyInstanceUID") or None,
                        series_instance_uid=text(header, "SeriesInstanceUID") or None,
                        sop_instance_uids=tuple(u for u in [text(header, "SOPInstanceUID")] if u),
                        manufacturer=text(header, "Manufacturer") or None,
                        description=text(header, "SeriesDescription") or None)
    return Image(voxels, geometry, role, acquisition_date=acq, source=source)


def read_us_series(series_list) -> tuple[list[Image], list[Skipped]]:
    """Every ultrasound file of one study's US series, one image per file."""
    images, skipped = [], []
    for s in series_list:
        for f in s.files:
            im = skip_unreadable(f.path, lambda: read_us_image(f.path, f.header), skipped)
            if im is not None:
                images.append(im)
    return images, skipped
