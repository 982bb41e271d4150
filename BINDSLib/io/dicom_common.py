"""Small DICOM helpers shared by the DICOM reader and writer (header values, pixel decoding).

All DICOM parsing is pydicom's; this module only turns header values into plain Python values
and wraps pixel decoding so that every failure becomes an :class:`~BINDSLib.errors.InputError`
naming the file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..study import MG_VIEWS, Modality, MRSequence
from .files import check_declared_size

log = logging.getLogger(__name__)

#: SOP classes BINDS reads, by what they hold.
MG_PRESENTATION_SOP = "1.2.840.10008.5.1.4.1.1.1.2"
MG_PROCESSING_SOP = "1.2.840.10008.5.1.4.1.1.1.2.1"
DX_PRESENTATION_SOP = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING_SOP = "1.2.840.10008.5.1.4.1.1.1.1.1"
CR_SOP = "1.2.840.10008.5.1.4.1.1.1"
SC_SOP = "1.2.840.10008.5.1.4.1.1.7"
US_SOP = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_SOP = "1.2.840.10008.5.1.4.1.1.3.1"
MR_SOP = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_SOP = "1.2.840.10008.5.1.4.1.1.4.1"
MEDIA_STORAGE_DIRECTORY_SOP = "1.2.840.10008.1.3.10"

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class Skipped:
    """A file or series that was not read, with the reason (one line a user can act on)."""

    path: str
    reason: str

    def to_json(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def damaged(e: Exception) -> str:
    """The skip reason of a file whose reading raised an unexpected error (damaged data)."""
    first = str(e).splitlines()[0][:160] if str(e) else ""
    return f"damaged DICOM data ({type(e).__name__}: {first})"


def skip_unreadable(path, read, skipped: list[Skipped]):
    """``read()``, or None with ``path`` added to ``skipped`` (the reason of an
    :class:`InputError`, or :func:`damaged`): one bad file never takes the other files of its
    series or study with it."""
    try:
        return read()
    except InputError as e:
        reason = e.reason
    except Exception as e:  # noqa: BLE001 - damaged data raises many kinds inside pydicom and numpy
        log.debug("reading %s failed", path, exc_info=True)
        reason = damaged(e)
    log.debug("skipped %s: %s", path, reason)
    skipped.append(Skipped(str(path), reason))
    return None


def text(ds, keyword: str, default: str = "") -> str:
    """A header value as stripped text (multi-valued elements joined by ``\\``)."""
    value = ds.get(keyword)
    if value is None:
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def number(ds, keyword: str) -> float | None:
    """A numeric header value (first value if multi-valued); ``None`` if absent or invalid."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def numbers(ds, keyword: str, n: int) -> tuple[float, ...] | None:
    """Exactly ``n`` finite numbers from a multi-valued element, else ``None``."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def image_type(ds) -> tuple[str, ...]:
    """ImageType values, upper case."""
    value = ds.get("ImageType")
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).strip().upper() for v in value)


def dicom_date(value) -> _dt.date | None:
    """A DICOM DA (``YYYYMMDD``; old ``YYYY.MM.DD`` accepted) as a date, ``None`` if invalid."""
    s = re.sub(r"[^0-9]", "", str(value or ""))[:8]
    if len(s) != 8:
        return None
    try:
        return _dt.datetime.strptime(s, "%Y%m%d").date()
    except ValueError:
        return None


def dicom_time_s(value) -> float | None:
    """A DICOM TM (``HHMMSS.FFFFFF``, or ``HH:MM:SS``) as seconds after midnight."""
    s = str(value or "").strip().replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", s)
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    return int(hh) * 3600 + int(mm or 0) * 60 + int(ss or 0) + float(frac or 0)


def sop_class(ds) -> str:
    """The SOP class UID as GDCM takes it for the spacing (checked with SimpleITK): the data set's
    SOPClassUID, else the file meta's MediaStorageSOPClassUID (``''`` when neither is there)."""
    return text(ds, "SOPClassUID") or text(getattr(ds, "file_meta", None) or {}, "MediaStorageSOPClassUID")


def sop_class_name(uid: str) -> str:
    """Readable name of a SOP class UID (``'Basic Text SR Storage'``), or the UID."""
    from pydicom.uid import UID

    uid = str(uid or "").strip()
    if not uid:
        return "unknown SOP class"
    name = UID(uid).name
    return name if name and name != uid else f"SOP class {uid}"


def frames_of(ds) -> int:
    """NumberOfFrames (1 when absent or invalid)."""
    n = number(ds, "NumberOfFrames")
    return max(1, int(n)) if n else 1


def check_pixel_size(ds, path) -> None:
    """Refuse an image whose declared Rows x Columns x Frames x Samples is too large,
    before any pixel is read (worst case decoded to float64)."""
    rows, cols = int(number(ds, "Rows") or 0), int(number(ds, "Columns") or 0)
    samples = int(number(ds, "SamplesPerPixel") or 1)
    check_declared_size(rows * cols * frames_of(ds) * samples, 8, path)


class CappedFile:
    """A binary file whose ``read(n)`` never asks for more than what is left in the file.

    A damaged element length (say 0xFFFFFFF0) would otherwise make Python allocate gigabytes
    for the read before finding the file is short; with this, pydicom gets a short read and
    reports the file as damaged.
    """

    def __init__(self, path):
        self._f = open(path, "rb")
        self._size = os.fstat(self._f.fileno()).st_size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return self._f.read()
        return self._f.read(max(0, min(n, self._size - self._f.tell())))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def require_pydicom3():
    """A clear error instead of an AttributeError deep in the readers when an older pydicom
    is first on the path (e.g. Slicer's own pydicom 2.4)."""
    import pydicom

    major = int(str(pydicom.__version__).split(".")[0] or 0)
    if major < 3:
        from ..errors import BindsError

        raise BindsError(f"BINDS needs pydicom 3 or later to read DICOM; found pydicom "
                         f"{pydicom.__version__} at {os.path.dirname(pydicom.__file__)}")


def dcmread_safe(path, **kwargs):
    """``pydicom.dcmread`` through :class:`CappedFile` (the file is closed afterwards)."""
    import pydicom

    with CappedFile(path) as f:
        ds = pydicom.dcmread(f, **kwargs)
        ds.filename = str(path)
        return ds


def read_full(path: Path):
    """The whole dataset of ``path`` (with pixels), or :class:`InputError`.

    An element that declares more bytes than the file holds (a truncated or damaged file) is
    refused here, before any other reader (SimpleITK/GDCM) tries to allocate for it.
    """
    try:
        ds = dcmread_safe(path, force=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on damaged files
        raise InputError(f"cannot read DICOM file ({type(e).__name__}: {str(e)[:150]})", path) from None
    short = _short_element(ds)
    if short is not None:
        tag, declared, got = short
        raise InputError(f"truncated or damaged: element {tag} declares {declared} bytes but the file "
                         f"holds only {got}", path)
    return ds


def _short_element(ds):
    """(tag, declared, available) of the first top-level element read short, else ``None``."""
    from pydicom.dataelem import RawDataElement

    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and raw.value is not None \
                and len(raw.value) < raw.length:
            return str(tag), raw.length, len(raw.value)
    return None


def decode(ds, path) -> tuple[np.ndarray, str]:
    """Decoded stored values and their photometric interpretation.

    Returns
    -------
    arr : np.ndarray
        ``(frames, rows, cols)`` or ``(frames, rows, cols, samples)``; a single frame gets a
        leading axis of 1. No colour conversion is done (``raw``), except what the codec itself
        does (JPEG 2000 YBR_RCT/ICT come back as RGB).
    photometric : str
        The photometric interpretation of ``arr`` as decoded.
    """
    from pydicom.pixels.decoders.base import get_decoder

    if not any(k in ds and ds[k].value for k in PIXEL_KEYWORDS):  # absent, or present but empty
        raise InputError("no pixel data: the file looks truncated or damaged", path)
    check_pixel_size(ds, path)
    import warnings

    try:
        decoder = get_decoder(transfer_syntax(ds))
        pydicom_log = logging.getLogger("pydicom")  # (it logs each warning too, without the file)
        level = pydicom_log.level
        pydicom_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(record=True) as said:  # pydicom's warnings, said with the file
                warnings.simplefilter("always")
                arr, meta = decoder.as_array(ds, raw=True)
        finally:
            pydicom_log.setLevel(level)
        for w in said:
            log.warning("%s: %s", path, str(w.message).splitlines()[0][:300])
    except NotImplementedError as e:
        raise InputError(f"cannot decode pixel data ({str(e)[:200]}); install the decoders with "
                         "'pip install binds[codecs]' (pylibjpeg)", path) from None
    except Exception as e:  # noqa: BLE001 - codecs raise many kinds on damaged data
        if "missing dependencies" in str(e):
            raise InputError(f"cannot decode {transfer_syntax(ds).name} pixel data: no decoder is "
                             "installed; install them with 'pip install binds[codecs]' (pylibjpeg)",
                             path) from None
        raise InputError(f"cannot decode pixel data, the file looks truncated or damaged "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:150]})", path) from None
    photometric = str(meta.get("photometric_interpretation") or text(ds, "PhotometricInterpretation"))
    samples = int(number(ds, "SamplesPerPixel") or 1)
    if frames_of(ds) == 1 and arr.ndim == (2 if samples == 1 else 3):
        arr = arr[None]
    if arr.shape[0] != frames_of(ds):  # pixel data for more frames than the header declares
        raise InputError(f"the pixel data holds {arr.shape[0]} frames of {text(ds, 'Rows')} x "
                         f"{text(ds, 'Columns')} pixels, the header {frames_of(ds)} (NumberOfFrames, Rows or "
                         "Columns wrong?)", path)
    return arr, photometric.upper()


def transfer_syntax(ds):
    """The dataset's Transfer Syntax UID; for files without file meta information, the
    uncompressed syntax they were read with (set on ``ds.file_meta`` for the decoders)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return meta.TransferSyntaxUID
    implicit, little = getattr(ds, "original_encoding", (None, None))
    uid = (ImplicitVRLittleEndian if implicit else
           ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid
    return uid


def modality_lut(arr: np.ndarray, ds) -> np.ndarray:
    """Stored values to modality values (Rescale Slope/Intercept or Modality LUT), float64."""
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def to_float32(arr: np.ndarray, path) -> np.ndarray:
    """``arr`` as finite float32 (``InputError`` naming ``path`` on NaN or infinity)."""
    from .files import check_finite

    out = np.asarray(arr, dtype=np.float32)
    check_finite(out, path)
    return out


_MR_ORDER = {MRSequence.T1_PRE: 0, MRSequence.DCE: 1, MRSequence.T2: 2, MRSequence.DWI: 3,
             MRSequence.ADC: 4}


def image_order(im) -> tuple:
    """Sort key of images in a study: MG (R before L, by view), US, MR (T1_PRE, DCE phases,
    T2, DWI by b-value, ADC)."""
    r = im.role
    modality = list(Modality).index(r.modality)
    if r.modality is Modality.MG:
        view = MG_VIEWS.index(r.view) if r.view else len(MG_VIEWS)
        return (modality, r.laterality != "R", r.laterality is None, view, 0.0)
    if r.modality is Modality.US:
        return (modality, r.laterality != "R", r.laterality is None, 0, r.clock_position or 0.0)
    return (modality, _MR_ORDER[r.sequence], r.phase or 0, 0, r.b_value or 0.0)


def orthonormal_axes(orientation) -> np.ndarray | None:
    """Orthonormal ``(3, 3)`` matrix whose columns are the row, column and normal directions
    (LPS) of an ImageOrientationPatient (slightly non-orthogonal or non-unit values, as files
    written with few digits hold, are corrected), or None when they are not two directions at
    right angles."""
    r, c = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(c))):
        return None
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-6 or nc < 1e-6 or abs(np.dot(r, c)) / (nr * nc) > 1e-2:
        return None
    r = r / nr
    c = c - np.dot(c, r) * r
    c = c / np.linalg.norm(c)
    return np.column_stack([r, c, np.cross(r, c)])


def plane_geometry(ds, spacing_x_mm: float, spacing_y_mm: float, first_col: int = 0,
                   first_row: int = 0, path=None):
    """Geometry of a 2D image: ImagePositionPatient / ImageOrientationPatient when the file has
    them (BINDS writes them for mammography and ultrasound; some vendors do), else the pixel
    grid at the origin with identity direction. One without the other is used as GDCM (ITK,
    Slicer) uses it: the plane's axes at the origin, or the position unrotated; so is an
    orientation that is not two directions at right angles (the position, unrotated). A value
    that cannot be used is said, naming ``path``. ``first_col``/``first_row``: the top-left
    pixel of a crop, whose position is shifted accordingly."""
    from ..study import Geometry

    ipp = numbers(ds, "ImagePositionPatient", 3)
    iop = numbers(ds, "ImageOrientationPatient", 6)
    axes = np.eye(3) if iop is None else orthonormal_axes(iop)
    if axes is None or (iop is None and ds.get("ImageOrientationPatient") not in (None, "")):
        log.warning("%s: ImageOrientationPatient %s is not two directions at right angles: the image is "
                    "placed unrotated", path or "a file", text(ds, "ImageOrientationPatient"))
        axes = np.eye(3)
    if ipp is None and ds.get("ImagePositionPatient") not in (None, ""):
        log.warning("%s: ImagePositionPatient %s is not a position: the image is placed at the origin",
                    path or "a file", text(ds, "ImagePositionPatient"))
    whole = Geometry((spacing_x_mm, spacing_y_mm, 1.0), tuple(float(o) for o in (ipp or (0.0, 0.0, 0.0))),
                     tuple(float(a) for a in axes.ravel()))
    return dataclasses.replace(whole, origin_mm=tuple(float(o) for o in whole.index_to_lps((first_col, first_row, 0))))

