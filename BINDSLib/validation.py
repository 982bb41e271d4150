"""Checks a study must pass before a model sees it.

Errors (:class:`~BINDSLib.errors.InputError`, naming the image's file) for inputs no model
should be run on; warnings (returned, logged, written into the report) for inputs that are
usable but suspicious.

========================================  =========================================
problem                                   outcome
========================================  =========================================
mammogram or ultrasound that is 3D        error (tomosynthesis / volumes unsupported)
MRI that is a single 2D slice             error
the same MG view twice (e.g. 2x MG_L_CC)  error: keep one
non-finite voxels                         error (readers refuse them already)
constant image (no contrast)              error
the same mammogram under two roles        error: a view is duplicated
left and right breasts against the same   warning: laterality may be swapped
  image edge, or one breast's views
  against different edges
a pixel or slice spacing no breast image  warning: the model resamples by it, so
  has (:data:`PLAUSIBLE_SPACING_MM`)        its result is likely wrong
========================================  =========================================
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import InputError
from .io.files import PICTURE_SUFFIXES, suffix_of
from .study import Image, Modality, Study

log = logging.getLogger(__name__)


def _where(im: Image) -> str:
    return im.source.files[0] if im.source.files else f"image {im.label}"


def breast_side(voxels2d: np.ndarray) -> str:
    """Which half of a mammogram (``"left"`` or ``"right"`` of the array) holds more tissue.

    The breast is brighter than the background on a For Presentation image (after MONOCHROME1
    inversion), and it lies against the chest wall: the image side with more signal.
    """
    step = max(1, int(np.sqrt(voxels2d.size / 250_000)))  # ~250k samples decide as well
    img = voxels2d[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(img, [1, 99])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    half = img.shape[1] // 2
    return "left" if img[:, :half].sum() >= img[:, img.shape[1] - half:].sum() else "right"


#: the smallest image side (pixels) BINDS diagnoses
MIN_SIDE = 8
#: A mammogram magnified this much is a magnification (spot) view; standard views are ~1.1.
MAGNIFICATION_VIEW = 1.3
#: (in-plane, between slices) spacings in mm that breast images have; outside: warned about.
#: Films digitised at 0.05 mm to MR slices of several mm; a wrong tag or header is far off.
PLAUSIBLE_SPACING_MM = {Modality.MG: ((0.01, 5.0), None), Modality.US: ((0.01, 5.0), None),
                        Modality.MR: ((0.05, 10.0), (0.1, 50.0))}
#: below this share of pixels differing from an image's most common value, it is nearly blank
NEAR_BLANK = 0.001


def _spacing_warnings(im: Image) -> list[str]:
    sx, sy, sz = im.geometry.spacing_mm
    in_plane, between = PLAUSIBLE_SPACING_MM.get(im.modality, (None, None))
    found = []
    if in_plane and not (in_plane[0] <= sx <= in_plane[1] and in_plane[0] <= sy <= in_plane[1]):
        found.append(f"pixel spacing {sx:.4g} x {sy:.4g} mm (expected {in_plane[0]:g}-{in_plane[1]:g})")
    if between and im.shape[0] > 1 and not between[0] <= sz <= between[1]:
        found.append(f"slice spacing {sz:.4g} mm (expected {between[0]:g}-{between[1]:g})")
    if not found:
        return []
    return [f"{im.label} ({_where(im)}) has an implausible {' and '.join(found)} for {im.modality.value}: "
            "check its geometry; the model resamples by it, so its result is likely wrong"]


def check_study(study: Study) -> list[str]:
    """Raise :class:`InputError` on unusable images; return warnings for suspicious ones."""
    warnings: list[str] = []
    for im in study.images:
        depth = im.shape[0]
        if im.modality is Modality.MG and depth > 1:
            raise InputError(f"{im.label} is 3D ({depth} slices): a mammogram must be a 2D image "
                             "(tomosynthesis is not supported)", _where(im))
        if im.modality is Modality.MR and depth < 2:
            raise InputError(f"{im.label} is a single 2D slice: an MRI sequence must be a 3D volume",
                             _where(im))
        v = im.voxels
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise InputError(f"{im.label} has NaN or infinite voxels", _where(im))
        rows, cols = im.shape[-2:]
        if min(rows, cols) < MIN_SIDE:
            raise InputError(f"{im.label} is {rows} x {cols} pixels: too small to diagnose (at least "
                             f"{MIN_SIDE} x {MIN_SIDE})", _where(im))
        if v.max() == v.min():
            raise InputError(f"{im.label} is a constant image (every voxel {v.flat[0].item()!r}): "
                             "nothing to analyse", _where(im))
        sample = v.reshape(-1)[:: max(1, v.size // 100_000)]  # ~100k voxels: a cheap count
        varied = 1.0 - np.unique(sample, return_counts=True)[1].max() / sample.size
        if varied < NEAR_BLANK:
            warnings.append(f"{im.label} is nearly blank ({100 * varied:.2g} % of its pixels differ from the "
                            "most common value): its result means little")
        warnings += _spacing_warnings(im)
        magnified = im.source.magnification if im.source is not None else None
        if im.modality is Modality.MG and magnified is not None and magnified >= MAGNIFICATION_VIEW:
            warnings.append(f"{im.label} ({_where(im)}) is a magnification view (x{magnified:.3g}, "
                            "EstimatedRadiographicMagnificationFactor): the model reads standard views, "
                            "so its result for this image is less reliable")
        files = im.source.files if im.source is not None else ()
        if files and suffix_of(Path(files[0])) in PICTURE_SUFFIXES and im.geometry.spacing_mm[:2] == (1.0, 1.0):
            warnings.append(f"{im.label} is a picture file without a pixel size ({Path(files[0]).name}): 1 mm "
                            "pixels assumed, so its lesion sizes are in pixels, not millimetres")
    mg_roles = Counter(im.role.key for im in study.images if im.modality is Modality.MG)
    dup = sorted(k for k, n in mg_roles.items() if n > 1)
    if dup:
        files = [_where(im) for im in study.images if im.role.key in dup]
        raise InputError(f"study {study.study_id} has the mammography view(s) {', '.join(dup)} more "
                         f"than once ({', '.join(files)}): keep one image per view")
    mg = [im for im in study.images if im.modality is Modality.MG]
    for a_i, a in enumerate(mg):
        for b in mg[a_i + 1:]:
            if a.shape == b.shape and np.array_equal(a.voxels, b.voxels):
                raise InputError(f"the same mammogram appears as {a.label} and {b.label} "
                                 f"({_where(a)}, {_where(b)}): a view is duplicated", _where(b))
    warnings += _laterality_warnings(mg)
    for w in warnings:
        log.warning("study %s: %s", study.study_id, w)
    return warnings


def _laterality_warnings(mg: list[Image]) -> list[str]:
    """Convention-free laterality check: a breast's views lie against the same image edge,
    and the two breasts against opposite edges (whatever the source's display convention)."""
    sides: dict[str, set[str]] = {}
    for im in mg:
        if im.role.laterality in ("L", "R"):
            sides.setdefault(im.role.laterality, set()).add(breast_side(im.voxels[0]))
    out = []
    for lat, s in sorted(sides.items()):
        if len(s) > 1:
            out.append(f"the {'left' if lat == 'L' else 'right'} breast's views lie against different "
                       "image edges: check that no view carries the wrong laterality")
    if len(sides.get("L", ())) == 1 and sides.get("L") == sides.get("R"):
        out.append("the left and right breasts lie against the same image edge: the views of the "
                   "two breasts may be swapped or mislabelled")
    return out
