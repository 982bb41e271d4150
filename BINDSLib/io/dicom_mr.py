"""Breast MRI from DICOM: series split into volumes, sorted along the slice normal, checked,
and read through SimpleITK (classic one-file-per-slice series) or pydicom (enhanced
multi-frame files, float pixel data, per-slice rescale).

Roles (T1_PRE / DCE phases / T2 / DWI / ADC) are given by :mod:`.dicom_mr_roles`.
Rules are documented in docs/DICOM.md.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fsutil import sitk_path
from ..study import Geometry, Image, Role, SourceInfo
from .dicom_common import (
    Skipped, check_pixel_size, decode, dicom_date, dicom_time_s, frames_of, modality_lut,
    number, numbers, orthonormal_axes, read_full, text, to_float32,
)
from .dicom_mr_roles import assign_roles, b_value_of, series_skip_reason
from .files import check_declared_size

log = logging.getLogger(__name__)

#: Slices whose positions along the normal differ by less than this are at the same place.
SAME_POSITION_MM = 0.01
#: Allowed deviation of a slice gap from the median gap: max(absolute, relative * median).
SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL = 0.01, 0.01
#: Attributes that can separate the volumes of one series, in order of preference.
SPLIT_ATTRIBUTES = ("temporal", "trigger_ms", "b_value", "acq_time_s", "echo_ms", "stack")


@dataclass(frozen=True)
class MRSlice:
    """One 2D slice: a classic file, or one frame of an enhanced multi-frame file."""

    file: object  # DicomFile
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    spacing_rc_mm: tuple[float, float] | None  # (row spacing, column spacing)
    shape: tuple[int, int]
    temporal: float | None = None
    trigger_ms: float | None = None
    b_value: float | None = None
    acq_time_s: float | None = None
    echo_ms: float | None = None
    stack: str | None = None
    rescale: tuple[float, float] | None = None  # enhanced per-frame (slope, intercept)


@dataclass(eq=False)
class MRVolume:
    """Slices of one 3D volume, sorted along the normal, with their geometry and role."""

    series: object  # DicomSeries
    slices: list[MRSlice]
    geometry: Geometry
    split_by: str | None = None
    index_in_series: int = 0
    role: Role | None = None
    extra: dict = field(default_factory=dict)

    @property
    def header(self):
        return self.slices[0].file.header

    @property
    def label(self) -> str:
        desc = text(self.header, "SeriesDescription") or self.series.series_instance_uid
        return f"{desc!r}" + (f" volume {self.index_in_series + 1}" if self.split_by else "")

    def first(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.slices if getattr(s, attr) is not None]
        return min(values) if values else None


# -- slices from headers ---------------------------------------------------------------------

def classic_slice(f) -> MRSlice:
    ds = f.header
    acq = dicom_time_s(text(ds, "AcquisitionTime")) or dicom_time_s(text(ds, "AcquisitionDateTime")[8:])
    return MRSlice(
        file=f, frame=None, position=numbers(ds, "ImagePositionPatient", 3),
        orientation=numbers(ds, "ImageOrientationPatient", 6),
        spacing_rc_mm=numbers(ds, "PixelSpacing", 2),
        shape=(int(number(ds, "Rows") or 0), int(number(ds, "Columns") or 0)),
        temporal=number(ds, "TemporalPositionIdentifier"), trigger_ms=number(ds, "TriggerTime"),
        b_value=b_value_of(ds), acq_time_s=acq, echo_ms=number(ds, "EchoTime"))


def _group_item(groups, sequence: str):
    for g in groups:
        if g is not None and sequence in g and len(g[sequence].value):
            return g[sequence][0]
    return None


def _group_value(groups, sequence: str, keyword: str, n: int = 1):
    item = _group_item(groups, sequence)
    if item is None:
        return None
    return number(item, keyword) if n == 1 else numbers(item, keyword, n)


def enhanced_slices(f) -> list[MRSlice]:
    """One :class:`MRSlice` per frame of an enhanced multi-frame file (functional groups)."""
    ds = f.header
    shared = ds["SharedFunctionalGroupsSequence"][0] if ds.get("SharedFunctionalGroupsSequence") else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frames_of(ds):
        raise InputError(f"enhanced file has {frames_of(ds)} frames but {len(per_frame)} "
                         "per-frame functional groups", f.path)
    shape = (int(number(ds, "Rows") or 0), int(number(ds, "Columns") or 0))
    out = []
    for i, pf in enumerate(per_frame):
        groups = (pf, shared)
        content = _group_item(groups, "FrameContentSequence")
        slope = _group_value(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _group_value(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        offset_s = _group_value(groups, "TemporalPositionSequence", "TemporalPositionTimeOffset")
        acq = None if content is None else dicom_time_s(text(content, "FrameAcquisitionDateTime")[8:])
        out.append(MRSlice(
            file=f, frame=i,
            position=_group_value(groups, "PlanePositionSequence", "ImagePositionPatient", 3),
            orientation=_group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient", 6),
            spacing_rc_mm=_group_value(groups, "PixelMeasuresSequence", "PixelSpacing", 2),
            shape=shape,
            temporal=None if content is None else number(content, "TemporalPositionIndex"),
            trigger_ms=None if offset_s is None else offset_s * 1000.0,
            b_value=_group_value(groups, "MRDiffusionSequence", "DiffusionBValue"),
            acq_time_s=acq,
            echo_ms=_group_value(groups, "MREchoSequence", "EffectiveEchoTime"),
            stack=None if content is None else (text(content, "StackID") or None),
            rescale=None if slope is None else (slope, intercept or 0.0)))
    return out


def is_enhanced(ds) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds


def series_slices(series) -> list[MRSlice]:
    slices: list[MRSlice] = []
    for f in series.files:
        if is_enhanced(f.header):
            slices.extend(enhanced_slices(f))
        elif frames_of(f.header) > 1:
            raise InputError(f"multi-frame MR without functional groups ({frames_of(f.header)} "
                             "frames) is not supported", f.path)
        else:
            slices.append(classic_slice(f))
    return slices


# -- geometry --------------------------------------------------------------------------------

def plane_axes(orientation, path) -> np.ndarray:
    """Orthonormal ``(3, 3)`` matrix whose columns are the row, column and normal directions
    (LPS) of ImageOrientationPatient (slightly non-orthogonal values are corrected)."""
    axes = orthonormal_axes(orientation)
    if axes is None:
        raise InputError(f"invalid ImageOrientationPatient {list(orientation)} "
                         "(directions must be unit length and orthogonal)", path)
    return axes


def _same_orientation(a, b) -> bool:
    return a is not None and b is not None and np.allclose(a, b, atol=1e-3)


def check_plane(slices: list[MRSlice], where: str) -> None:
    """All slices share rows x columns, orientation and pixel spacing (or raise)."""
    first = slices[0]
    path = first.file.path
    if len({s.shape for s in slices}) > 1:
        raise InputError(f"series {where} mixes image sizes {sorted({s.shape for s in slices})}", path)
    if len(slices) > 1:
        if any(s.position is None or s.orientation is None for s in slices):
            raise InputError(f"series {where} has slices without ImagePositionPatient or "
                             "ImageOrientationPatient; cannot place them in 3D", path)
        kinds = []
        for s in slices:
            if not any(_same_orientation(s.orientation, k) for k in kinds):
                kinds.append(s.orientation)
        if len(kinds) > 1:
            raise InputError(f"series {where} has slices in {len(kinds)} different orientations "
                             "(a localizer or a multi-plane series); BINDS reads single-orientation "
                             "3D series", path)
        sp = {tuple(float(v) for v in np.round(s.spacing_rc_mm, 4)) for s in slices if s.spacing_rc_mm}
        if len(sp) > 1:
            found = ", ".join(f"{r:g} x {c:g}" for r, c in sorted(sp))
            raise InputError(f"series {where} mixes pixel spacings (mm, row x column): {found}", path)


def _projections(slices: list[MRSlice], normal: np.ndarray) -> np.ndarray:
    return np.array([float(np.dot(s.position, normal)) for s in slices])


def _odd_gaps(gaps: np.ndarray) -> tuple[float, np.ndarray]:
    """The median gap between sorted slices, and the indices of the gaps that differ from it by
    more than max(:data:`SPACING_TOLERANCE_MM`, :data:`SPACING_TOLERANCE_REL` x median)."""
    median = float(np.median(gaps))
    return median, np.flatnonzero(np.abs(gaps - median) > max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * median))


def _regular_stack(proj: np.ndarray) -> bool:
    gaps = np.diff(np.sort(proj))
    return len(gaps) > 0 and gaps.min() >= SAME_POSITION_MM and not _odd_gaps(gaps)[1].size


def _interleaved_b_values(slices: list[MRSlice], normal: np.ndarray, where: str) -> list[list[MRSlice]] | None:
    """Slices at distinct positions whose b-values (to 1 s/mm^2; none given is a value of its
    own, b0's usual way) take turns: one group per b-value, lowest first, when each is a
    regular stack of 2 or more slices. None when there is one b-value (one volume). Two
    b-values or more that do not form such stacks are refused: never one mixed volume."""
    groups: dict = {}
    for s in slices:
        groups.setdefault(None if s.b_value is None else round(s.b_value), []).append(s)
    if len(groups) < 2:
        return None
    if any(len(g) < 2 or not _regular_stack(_projections(g, normal)) for g in groups.values()):
        if sum(v is not None for v in groups) < 2:
            return None  # (one b-value and slices without one: read as one volume, as before)
        found = ", ".join(f"b{v}: {len(g)}" for v, g in sorted(groups.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))
        raise InputError(f"series {where} mixes b-values at distinct positions ({found} slices) that do not "
                         "form one stack per b-value", slices[0].file.path)
    return [groups[v] for v in sorted(groups, key=lambda v: -1 if v is None else v)]


def split_volumes(slices: list[MRSlice], where: str) -> tuple[list[list[MRSlice]], str | None]:
    """Split a series into volumes when slice positions repeat (DCE phases, b-values...).

    Returns the groups (in order of the separating attribute) and that attribute's name
    (``None`` when the series is one volume; ``'order'`` for the rank fallback).
    """
    if len(slices) < 2 or slices[0].position is None:
        return [slices], None
    normal = plane_axes(slices[0].orientation, slices[0].file.path)[:, 2]
    keys = [round(p / SAME_POSITION_MM) for p in _projections(slices, normal)]
    n_pos = len(set(keys))
    if n_pos == len(slices):
        groups = _interleaved_b_values(slices, normal, where)
        return (groups, "b_value") if groups else ([slices], None)
    for attr in SPLIT_ATTRIBUTES:
        values = [getattr(s, attr) for s in slices]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        groups: dict = {}
        for s, k in zip(slices, keys):
            groups.setdefault(getattr(s, attr), []).append((k, s))
        if all(len(g) == n_pos and len({k for k, _ in g}) == n_pos for g in groups.values()):
            return [[s for _, s in groups[v]] for v in sorted(groups)], attr
    counts = Counter(keys)
    if n_pos == 1:  # nothing to stack: not volumes told apart by order (an anonymiser's blanked position?)
        raise InputError(f"series {where}: all {len(slices)} slices are at the same position "
                         "(ImagePositionPatient), and no attribute separates them into volumes; "
                         "cannot stack them in 3D", slices[0].file.path)
    if len(set(counts.values())) == 1:
        log.warning("series %s: %d volumes told apart only by acquisition order", where, counts[keys[0]])
        ranked: dict = {}
        order = sorted(zip(keys, slices), key=lambda ks: (ks[1].acq_time_s or 0.0,
                                                          *ks[1].file.sort_key(), ks[1].frame or 0))
        for k, s in order:
            ranked.setdefault(k, []).append(s)
        return [[ranked[k][i] for k in ranked] for i in range(counts[keys[0]])], "order"
    raise InputError(f"series {where}: {len(slices)} slices at {n_pos} positions; some positions "
                     "repeat and no attribute (temporal position, trigger time, b-value, "
                     "acquisition time, echo time) separates them into volumes",
                     slices[0].file.path)


def stack_geometry(slices: list[MRSlice], where: str) -> tuple[list[MRSlice], Geometry]:
    """Sort slices along the normal of their plane and check the spacing is uniform.

    Returns
    -------
    slices : list of MRSlice
        Sorted by position along ``cross(row, column)`` (not by file name).
    geometry : Geometry
        Spacing (column, row, slice) mm, origin = first slice position, direction columns =
        row, column and normal directions (LPS).
    """
    first = slices[0]
    # the spacing the slices share (check_plane: one at most), from any slice that has one
    sp = next((s.spacing_rc_mm for s in slices if s.spacing_rc_mm and min(s.spacing_rc_mm) > 0), None) or \
        numbers(first.file.header, "PixelSpacing", 2)
    if sp and min(sp) > 0:
        row_mm, col_mm = sp
    else:
        row_mm, col_mm = 1.0, 1.0
        log.warning("series %s (%s): no usable PixelSpacing; assuming 1 mm pixels", where, first.file.path)
    if first.orientation is None or first.position is None:
        if len(slices) > 1:
            raise InputError(f"series {where} cannot be placed in 3D (no ImagePositionPatient)",
                             first.file.path)
        return slices, Geometry((col_mm, row_mm, 1.0))
    axes = plane_axes(first.orientation, first.file.path)
    proj = _projections(slices, axes[:, 2])
    order = np.argsort(proj, kind="stable")
    slices, proj = [slices[i] for i in order], proj[order]
    if len(slices) > 1:
        z_mm = _check_gaps(slices, proj, where)
        _check_not_sheared(slices, axes[:, 2], where)
    else:
        hdr = first.file.header
        z_mm = number(hdr, "SpacingBetweenSlices") or number(hdr, "SliceThickness") or 1.0
    geometry = Geometry((col_mm, row_mm, abs(z_mm)), tuple(slices[0].position), tuple(axes.ravel()))
    return slices, geometry


def _check_gaps(slices: list[MRSlice], proj: np.ndarray, where: str) -> float:
    gaps = np.diff(proj)
    if gaps.min() < SAME_POSITION_MM:
        i = int(np.argmin(gaps)) + 1
        raise InputError(f"series {where}: two slices at the same position "
                         f"({slices[i - 1].file.path} and {slices[i].file.path})", slices[i].file.path)
    median, bad = _odd_gaps(gaps)
    if bad.size:
        i = int(bad[0]) + 1
        found = sorted({round(float(g), 3) for g in gaps})
        raise InputError(
            f"inconsistent slice spacing in series {where}: slices are {median:.4g} mm apart but "
            f"{gaps[i - 1]:.4g} mm before {slices[i].file.path} (a missing or extra slice?); "
            f"spacings found (mm): {found}", slices[i].file.path)
    return median


def _check_not_sheared(slices: list[MRSlice], normal: np.ndarray, where: str) -> None:
    d = np.asarray(slices[-1].position) - np.asarray(slices[0].position)
    lateral = np.linalg.norm(d - np.dot(d, normal) * normal)
    if lateral > 0.01 * np.linalg.norm(d) + 0.05:
        raise InputError(f"series {where}: slices are not stacked along the normal of their plane "
                         f"(offset {lateral:.2f} mm; a tilted or sheared stack)", slices[-1].file.path)


def plan_series(series) -> list[MRVolume]:
    """The volumes of one MR series with their geometry (headers only, no pixels read)."""
    where = f"{text(series.header, 'SeriesDescription') or '(no description)'!r} ({series.series_instance_uid})"
    slices = series_slices(series)
    if not slices:
        raise InputError(f"series {where} has no slices", series.files[0].path)
    check_plane(slices, where)
    groups, split_by = split_volumes(slices, where)
    volumes = []
    for i, g in enumerate(groups):
        ordered, geometry = stack_geometry(g, where)
        volumes.append(MRVolume(series, ordered, geometry, split_by, i))
    return volumes


# -- pixels ----------------------------------------------------------------------------------

def _needs_pydicom(vol: MRVolume) -> bool:
    hdr = vol.header
    if any(s.frame is not None for s in vol.slices):
        return True
    if int(number(hdr, "BitsAllocated") or 16) in (32, 64) and "BitsStored" not in hdr:
        return True  # Float Pixel Data
    rescales = {(number(s.file.header, "RescaleSlope"), number(s.file.header, "RescaleIntercept"))
                for s in vol.slices}
    return len(rescales) > 1


def _monochrome1(ds) -> bool:
    return text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1"


def _undo_gdcm_inversion(arr: np.ndarray, ds) -> np.ndarray:
    """The stored values (after the rescale) of a MONOCHROME1 slice stack read by SimpleITK,
    whose GDCM inverts the stored bits first: ``~x`` within BitsStored (``max - x`` unsigned,
    ``-x - 1`` signed), then rescales."""
    slope = number(ds, "RescaleSlope") or 1.0
    intercept = number(ds, "RescaleIntercept") or 0.0
    stored = (np.asarray(arr, dtype=np.float64) - intercept) / slope
    if int(number(ds, "PixelRepresentation") or 0):
        stored = -stored - 1.0
    else:
        stored = float(2 ** int(number(ds, "BitsStored") or number(ds, "BitsAllocated") or 16) - 1) - stored
    return stored * slope + intercept


def _check_not_truncated(vol: MRVolume) -> None:
    """Uncompressed files must be long enough for their declared pixels, and no element may
    declare more bytes than its file holds (checked by a safe pydicom read before SimpleITK)."""
    from pydicom.pixels.utils import get_expected_length

    for path in dict.fromkeys(s.file.path for s in vol.slices):
        read_full(path)
    for s in vol.slices:
        hdr = s.file.header
        ts = getattr(hdr, "file_meta", {}).get("TransferSyntaxUID")
        if ts is None or ts.is_compressed:
            continue
        try:
            need = get_expected_length(hdr, "bytes")
        except (AttributeError, TypeError, ValueError, KeyError):
            continue
        if os.path.getsize(s.file.path) < need:
            raise InputError(f"file is shorter than its {need} bytes of declared pixel data "
                             "(truncated)", s.file.path)


def read_sitk(vol: MRVolume) -> np.ndarray:
    """Voxels ``(depth, rows, cols)`` of a classic series through SimpleITK's series reader."""
    import SimpleITK as sitk

    _check_not_truncated(vol)
    names = [sitk_path(s.file.path) for s in vol.slices]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"SimpleITK cannot read the series ({str(e).strip().splitlines()[-1][:150]})",
                         names[0]) from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("colour MR images are not supported", names[0])
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 2:
        arr = arr[None]
    expected = (len(names), *vol.slices[0].shape)
    if arr.shape != expected:
        raise InputError(f"SimpleITK read shape {arr.shape}, expected {expected}", names[0])
    if len(names) > 1:
        g = Geometry.from_sitk(img)
        if not (np.allclose(g.origin_mm, vol.geometry.origin_mm, atol=1e-2)
                and np.allclose(g.spacing_mm, vol.geometry.spacing_mm, atol=1e-3)
                and np.allclose(g.direction, vol.geometry.direction, atol=1e-3)):
            log.warning("series %s: SimpleITK geometry %s differs from the header geometry %s; "
                        "using the header geometry", vol.label, g, vol.geometry)
    return arr


def _frame_values(ds, arr: np.ndarray, s: MRSlice) -> np.ndarray:
    from pydicom import Dataset
    from pydicom.pixels import apply_modality_lut

    frame = arr[s.frame or 0]
    if s.rescale is None:
        return modality_lut(frame, ds)
    t = Dataset()
    t.RescaleSlope, t.RescaleIntercept = s.rescale
    return np.asarray(apply_modality_lut(frame, t), dtype=np.float64)


def read_pydicom(vol: MRVolume) -> np.ndarray:
    """Voxels ``(depth, rows, cols)`` decoded by pydicom, frame by frame, with each frame's
    rescale (enhanced multi-frame files, float pixel data, per-slice rescale)."""
    cache: dict[Path, tuple] = {}
    out = []
    for s in vol.slices:
        path = s.file.path
        if path not in cache:
            ds = read_full(path)
            arr, photometric = decode(ds, path)
            if arr.ndim != 3:
                raise InputError(f"colour ({photometric}) MR images are not supported", path)
            cache = {path: (ds, arr)}  # slices of one file are consecutive or one file per slice
        ds, arr = cache[path]
        if (s.frame or 0) >= arr.shape[0]:
            raise InputError(f"frame {s.frame} is missing from the pixel data", path)
        out.append(_frame_values(ds, arr, s))
    return np.stack(out)


def read_volume(vol: MRVolume) -> np.ndarray:
    """Voxels of ``vol`` as finite float32 ``(depth, rows, cols)``: the stored values after the
    modality LUT (signal, or ADC in its unit). MONOCHROME1 ("show high values dark") is a
    display instruction, which is not applied to MR values (a warning says so)."""
    rows, cols = vol.slices[0].shape
    if any(_monochrome1(s.file.header) for s in vol.slices):
        log.warning("series %s is MONOCHROME1 (high values shown dark): its values are read as "
                    "stored, not inverted", vol.label)
    check_declared_size(rows * cols * len(vol.slices), 8, vol.slices[0].file.path)
    for s in vol.slices:
        check_pixel_size(s.file.header, s.file.path)
    if _needs_pydicom(vol):
        arr = read_pydicom(vol)
    elif any(_monochrome1(s.file.header) for s in vol.slices):
        # pydicom reads stored values; SimpleITK inverts the stored bits: a T2 becomes negative,
        # an ADC map nonsense. It is the fallback only (compressed data without pydicom's
        # codecs: Slicer's "Load study..." installs none), its inversion undone.
        try:
            arr = read_pydicom(vol)
        except InputError as e:
            if not all(_monochrome1(s.file.header) for s in vol.slices):
                raise  # (GDCM would invert some slices only)
            log.info("series %s: %s; trying SimpleITK", vol.label, e)
            arr = _undo_gdcm_inversion(read_sitk(vol), vol.header)
    else:
        try:
            arr = read_sitk(vol)
        except InputError as e:
            log.info("series %s: %s; trying pydicom", vol.label, e)
            arr = read_pydicom(vol)
    return to_float32(arr, vol.slices[0].file.path)


# -- study level -----------------------------------------------------------------------------

def _image(vol: MRVolume, voxels: np.ndarray) -> Image:
    hdr = vol.header
    files = tuple(dict.fromkeys(str(s.file.path) for s in vol.slices))
    sops = tuple(dict.fromkeys(s.file.sop_instance_uid for s in vol.slices if s.file.sop_instance_uid))
    acq = (dicom_date(text(hdr, "AcquisitionDate")) or dicom_date(text(hdr, "SeriesDate"))
           or dicom_date(text(hdr, "StudyDate")))
    source = SourceInfo(files=files, study_instance_uid=text(hdr, "StudyInstanceUID") or None,
                        series_instance_uid=vol.series.series_instance_uid or None,
                        sop_instance_uids=sops, manufacturer=text(hdr, "Manufacturer") or None,
                        description=text(hdr, "SeriesDescription") or None)
    return Image(voxels, vol.geometry, vol.role, acquisition_date=acq, source=source)


def read_mr_series(series_list) -> tuple[list[Image], list[Skipped]]:
    """All MR volumes of one study: plan (headers), give roles, then read the pixels.

    Series that cannot be used (localizers, subtractions, unknown sequences, inconsistent
    spacing, broken files) are skipped with the reason; the others are returned.
    """
    skipped: list[Skipped] = []
    volumes: list[MRVolume] = []
    for series in series_list:
        reason = series_skip_reason(series.header)
        if reason is None:
            try:
                volumes.extend(plan_series(series))
                continue
            except InputError as e:
                reason = e.reason if e.path else str(e)
                path = e.path or str(series.files[0].path)
        else:
            path = str(series.files[0].path)
        log.warning("skipped MR series %s: %s", series.series_instance_uid, reason)
        skipped.append(Skipped(path, reason))
    skipped.extend(assign_roles(volumes))
    images = []
    for vol in (v for v in volumes if v.role is not None):
        try:
            images.append(_image(vol, read_volume(vol)))
        except InputError as e:
            log.warning("skipped MR volume %s: %s", vol.label, e.reason)
            skipped.append(Skipped(e.path or str(vol.slices[0].file.path), f"series {vol.label}: {e.reason}"))
    return images, skipped


__all__ = ["MRSlice", "MRVolume", "plan_series", "read_mr_series", "read_volume", "stack_geometry",
           "split_volumes"]
