"""One screening exam to the network's input: four standard views, canonical and normalised.

Steps for each of L-CC, L-MLO, R-CC, R-MLO (:data:`~BINDSLib.risk.config.STANDARD_VIEWS`):

1. pick the view's MG image from the study (a missing view is masked, with a warning);
2. orient it canonically: the right breast is mirrored so that every breast has its chest
   wall at the left edge; if the stored image was already mirrored (the brighter tissue side
   is at the right), it is flipped back -- so both storage conventions end the same;
3. resize to ``input_size`` (rows, cols) with anti-aliasing (no aspect preservation, as Mirai);
4. map the ``intensity_percentiles`` (0.5 %, 99.5 % by default) to 0 and 1 and clip (robust to
   vendor bit depth and to a few very bright markers).

The result is a float32 array ``(4, 1, H, W)`` plus a boolean view mask ``(4,)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..study import Modality, Study
from .config import STANDARD_VIEWS, RiskConfig

log = logging.getLogger(__name__)

#: Ratio of mean intensity (far side / chest-wall side) above which an image is taken as
#: stored mirrored and flipped back.
MIRROR_RATIO = 1.2


@dataclass
class PreparedExam:
    """Network input of one exam.

    Attributes
    ----------
    images : float32 array ``(4, 1, H, W)`` in STANDARD_VIEWS order; zeros where missing.
    view_mask : bool array ``(4,)``, True where the view is present.
    warnings : human-readable notes (missing views, extra images ignored).
    """

    images: np.ndarray
    view_mask: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def views_present(self) -> tuple[str, ...]:
        return tuple(f"{lat}-{view}" for (lat, view), ok in zip(STANDARD_VIEWS, self.view_mask) if ok)


def view_name(laterality: str, view: str) -> str:
    return f"{laterality}-{view}"


def usable_views(study: Study) -> tuple[list, list[str]]:
    """:func:`select_views`, a view with nothing to read (constant, or too small) left out as a
    missing view (a warning says which and why)."""
    chosen, warnings = select_views(study)
    for i, im in enumerate(chosen):
        if im is None:
            continue
        rows, cols = im.voxels.shape[-2:]
        if min(rows, cols) < MIN_VIEW_SIDE or im.voxels.max() == im.voxels.min():
            what = f"{rows} x {cols} pixels" if min(rows, cols) < MIN_VIEW_SIDE else "constant"
            warnings.append(f"{im.label} is {what}: left out, as a missing view")
            chosen[i] = None
    return chosen, warnings


def no_view_text(warnings: list[str]) -> str:
    """Why an exam has no view to read (``usable_views`` found none), for an error message."""
    left_out = [w.split(": left out")[0] for w in warnings if w.endswith("left out, as a missing view")]
    if left_out:
        return f"has no readable standard mammography view ({'; '.join(left_out)})"
    return "has no standard mammography view (needs MG images with laterality L/R and view CC/MLO)"


def select_views(study: Study) -> tuple[list, list[str]]:
    """The study's image for each standard view (``None`` when missing), and warnings.

    When a view occurs more than once the first is used (a warning names the others).
    """
    chosen = [None] * len(STANDARD_VIEWS)
    warnings: list[str] = []
    for im in study.of(Modality.MG):
        key = (im.role.laterality, im.role.view)
        if key not in STANDARD_VIEWS:
            warnings.append(f"image {im.label} ({im.role.key}) is not a standard CC/MLO view; ignored")
            continue
        i = STANDARD_VIEWS.index(key)
        if chosen[i] is None:
            chosen[i] = im
        else:
            warnings.append(f"view {view_name(*key)} occurs more than once; using {chosen[i].label}, "
                            f"ignoring {im.label}")
    missing = [view_name(*k) for k, im in zip(STANDARD_VIEWS, chosen) if im is None]
    if missing:
        warnings.append(f"missing view(s) {', '.join(missing)}: scored with them masked "
                        "(risk is less reliable)")
    return chosen, warnings


def canonical_orientation(pixels: np.ndarray, laterality: str) -> np.ndarray:
    """Mirror a 2D view so that the chest wall is at the left edge.

    Parameters
    ----------
    pixels : ``(rows, cols)`` array as stored.
    laterality : ``"L"`` or ``"R"``; the right breast is mirrored (DICOM display convention).

    Returns
    -------
    ``(rows, cols)`` array. After the laterality rule, if the right third of the image is
    clearly brighter than the left third (``MIRROR_RATIO``), the image was stored mirrored
    and is flipped back.
    """
    out = pixels[:, ::-1] if laterality == "R" else pixels
    step = max(1, min(out.shape) // 256)  # the decision needs no full resolution
    small = out[::step, ::step]
    third = max(1, small.shape[1] // 3)
    lo = float(np.percentile(small, 1))
    left = float(small[:, :third].mean()) - lo
    right = float(small[:, -third:].mean()) - lo
    if right > MIRROR_RATIO * max(left, 1e-12) and right > 0:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def normalise_intensity(pixels: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the ``percentiles`` of ``pixels`` to 0 and 1 and clip; float32, same shape.

    Percentiles of a large image are estimated on a regular subsample (every k-th row and
    column, at most ~262k pixels). A constant image becomes all zeros.
    """
    x = pixels.astype(np.float32, copy=False)
    step = max(1, int(np.sqrt(x.size / 2**18)))  # percentiles from <= ~262k pixels
    lo, hi = np.percentile(x[::step, ::step] if x.ndim == 2 else x, percentiles)
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return np.zeros_like(x, dtype=np.float32)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(rows, cols)`` to ``size`` (bilinear, anti-aliased when shrinking); float32."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if tuple(x.shape[-2:]) == tuple(size):
        return x[0, 0].numpy()
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)
    return y[0, 0].numpy()


def prepare_view(voxels: np.ndarray, laterality: str, config: RiskConfig) -> np.ndarray:
    """One view ``(depth, rows, cols)`` to ``(1, H, W)`` float32 in [0, 1].

    A multi-frame image (e.g. tomosynthesis) contributes its central frame.
    """
    v = np.asarray(voxels)
    frame = v[v.shape[0] // 2] if v.ndim == 3 else v
    frame = canonical_orientation(frame.astype(np.float32, copy=False), laterality)
    frame = resize(frame, config.input_size)
    return normalise_intensity(frame, config.intensity_percentiles)[None]


#: a view with a shorter side (pixels) is left out as missing
MIN_VIEW_SIDE = 8


def prepare_exam(study: Study, config: RiskConfig, name: str | None = None) -> PreparedExam:
    """The network input of ``study`` (see module docstring); ``name``: the exam as messages
    name it (default its study ID; ``binds risk`` gives its pseudonym).

    Raises
    ------
    InputError
        when the study holds none of the four standard views.
    """
    from ..errors import InputError

    chosen, warnings = usable_views(study)
    if all(im is None for im in chosen):
        raise InputError(f"exam {name or study.study_id} {no_view_text(warnings)}")
    h, w = config.input_size
    images = np.zeros((len(STANDARD_VIEWS), 1, h, w), dtype=np.float32)
    mask = np.zeros(len(STANDARD_VIEWS), dtype=bool)
    for i, ((lat, _), im) in enumerate(zip(STANDARD_VIEWS, chosen)):
        if im is None:
            continue
        if im.voxels.shape[0] > 1:
            warnings.append(f"{im.label} has {im.voxels.shape[0]} frames; using the central one")
        images[i] = prepare_view(im.voxels, lat, config)
        mask[i] = True
    return PreparedExam(images, mask, warnings)


def load_exam(path) -> Study:
    """Read one exam from a study folder or a DICOM folder/file as a single :class:`Study`.

    Uses :func:`BINDSLib.io.loader.load` when available (DICOM, study folders, files), else
    reads study folders directly.

    Raises
    ------
    InputError
        when the path holds no exam or several exams.
    """
    from ..errors import InputError

    studies = load_exams(path)
    if len(studies) > 1:
        raise InputError(f"holds {len(studies)} mammography exams; give one exam per folder", path)
    return studies[0]


def load_exams(path) -> list[Study]:
    """The mammography exams of a study folder or a DICOM folder/file (a DICOM folder may hold
    several: a woman's exams, one per study, of different dates); :class:`InputError` when there
    is none, or when two studies of the folder share a date (an exam split into studies would be
    scored as two half-exams)."""
    from pathlib import Path

    from ..errors import InputError
    from ..studyfolder import is_study_folder, read_study_folder

    path = Path(path)
    if not path.exists():
        raise InputError("exam not found", path)
    if is_study_folder(path):
        return [read_study_folder(path, reference_masks=False)]  # risk reads no lesion masks
    try:
        from ..io.loader import load
    except ImportError:
        load = None
    if load is None:
        try:
            from ..io.dicom import load_dicom_folder
        except ImportError:
            raise InputError("not a study folder, and this build cannot read DICOM", path) from None
        studies, skipped = load_dicom_folder(path)
    else:
        result = load(path, reference_masks=False)
        studies, skipped = result.studies, result.skipped
    for sk in skipped:  # e.g. a For Processing view: the exam is scored without it
        log.warning("skipped %s: %s", sk.path, sk.reason)
    studies = [s for s in studies if s.of(Modality.MG)]
    if not studies:
        why = f" ({len(skipped)} file(s) skipped)" if skipped else ""
        raise InputError(f"no mammography exam found{why}", path)
    if len(studies) > 1:  # her exams, one study each: not one exam a site split into studies
        days = [s.study_date for s in studies]
        same = sorted({str(d) for d in days if d is not None and days.count(d) > 1})
        if same:
            raise InputError(f"holds {len(studies)} mammography studies, several of one date ({', '.join(same)}): "
                             "one exam split into studies (a breast or a view each)? Give each exam a folder "
                             "of its own", path)
    return studies
