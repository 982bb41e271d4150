"""A :class:`~BINDSLib.study.Study` to the network's inputs, and network maps back to images.

Geometry is kept exact in both directions. Every prepared array lies on a *model grid*
(:class:`ModelGrid`): a voxel grid with its own LPS :class:`~BINDSLib.study.Geometry` in the
same physical space as the image it came from. Inputs are resampled onto it, and every output
map (lesion probability, saliency) is resampled back onto each input image's own grid in
physical space (separable linear passes between parallel grids, SimpleITK otherwise; see
:func:`resample`), so it overlays exactly in Slicer.

* MG and US images become ``(1, rows, cols)`` planes of ``mg_size`` / ``us_size``: isotropic
  in-plane spacing, aspect kept, the image centred and padded with 0 (with ``mg_fit:
  "breast"`` a mammogram's grid is fitted to the breast's bounding box instead, :func:`breast_box`:
  the background, labels and markers are cut off and the breast gets more of the grid). Mammograms are oriented
  canonically (chest wall at the left edge: right breasts mirrored, and an image stored
  mirrored is detected by its brighter side) by a model grid whose column axis is reversed;
  mapping back undoes it. A multi-frame image (cine, tomosynthesis) contributes one frame
  (``role.frame``, else the central one); maps come back on that frame, 0 elsewhere.
* MRI: the sequences are resampled in physical space onto one reference grid (the DCE1 image,
  else T1_PRE, else the first MR image) of ``mr_size`` and stacked as the channels
  :data:`~BINDSLib.model.config.MR_CHANNELS`, with a channel-presence mask.
* Intensities: the ``intensity_percentiles`` of each image map to 0 and 1 (clipped); the DCE
  series (T1_PRE, DCE1-3) shares the scale of its first post-contrast phase, so that the
  enhancement curve (wash-in, plateau, wash-out) is kept.
* Down-sampling is anti-aliased (``BinShrink`` averaging before linear interpolation).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..memory import mapped_zeros
from ..study import Geometry, Image, Modality, MRSequence, Study
from ..threads import thread_map
from .config import MG_VIEW_CODES, MR_CHANNELS, SIDES, DiagnosisConfig

log = logging.getLogger(__name__)

#: Channels of the DCE series, normalised together; enhancement above the reference phase's
#: upper percentile is kept up to DCE_CLIP.
DCE_CHANNELS = ("T1_PRE", "DCE1", "DCE2", "DCE3")
DCE_CLIP = 2.0

#: Ratio of mean intensity (far side / chest-wall side) above which a mammogram is taken as
#: stored mirrored (same rule as the risk model's canonical orientation).
MIRROR_RATIO = 1.2


@dataclass(frozen=True)
class ModelGrid:
    """The voxel grid of a prepared array: ``shape`` (slices, rows, cols) and its geometry."""

    shape: tuple[int, int, int]
    geometry: Geometry


@dataclass(frozen=True)
class SourceImage:
    """An image of the study that an input slot was prepared from.

    ``frame`` is the frame used when the image has several (2D inputs), else ``None``.
    """

    label: str
    shape: tuple[int, int, int]
    geometry: Geometry
    frame: int | None = None


@dataclass
class ModalityInput:
    """The prepared inputs of one modality of one study (slots, no batch axis).

    Attributes
    ----------
    images : float32 ``(S, C, *spatial)``; 2D: ``(S, 1, 1, H, W)`` is stored as
        ``(S, 1, H, W)``; MR: ``(1, len(MR_CHANNELS), D, H, W)``.
    masks : uint8 ``(S, 1, *spatial)`` lesion masks on the model grid (zeros when unknown).
    mask_given : bool ``(S,)``; True where ``masks`` holds a known (user or reference) mask.
    view, side : int ``(S,)`` indices into ``MG_VIEW_CODES`` / ``SIDES`` (2D modalities).
    channels : bool ``(S, len(MR_CHANNELS))`` MR channel presence (all True for 2D).
    grids : the model grid of each slot. sources : per slot, the study images it maps back
        to (one for MG/US, every used sequence for MR).
    """

    images: np.ndarray
    masks: np.ndarray
    mask_given: np.ndarray
    view: np.ndarray
    side: np.ndarray
    channels: np.ndarray
    grids: list[ModelGrid]
    sources: list[list[SourceImage]]

    @property
    def n_slots(self) -> int:
        return int(self.images.shape[0])


@dataclass
class PreparedStudy:
    """Network inputs of a study: one :class:`ModalityInput` per present modality."""

    study_id: str
    inputs: dict[str, ModalityInput]
    notes: list[str] = field(default_factory=list)
    mask_source: dict[str, str] = field(default_factory=dict)
    #: MR: the sequence whose lesion mask each sequence's model input took (one for all)
    mask_from: dict[str, str] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in ("MG", "US", "MR") if m in self.inputs)


# -- intensities -------------------------------------------------------------------------

def intensity_range(voxels: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The ``percentiles`` of ``voxels``, estimated on at most ~1M voxels (regular subsample)."""
    x = np.asarray(voxels)
    step = max(1, int(np.ceil((x.size / 1_000_000) ** (1 / max(1, x.ndim)))))
    sample = x[tuple(slice(None, None, step) for _ in range(x.ndim))].astype(np.float32)
    lo, hi = np.percentile(sample, percentiles)
    return float(lo), float(hi)


def normalise_intensity(voxels: np.ndarray, percentiles: tuple[float, float],
                        value_range: tuple[float, float] | None = None,
                        clip_max: float = 1.0) -> np.ndarray:
    """Map the ``percentiles`` of ``voxels`` (or a given ``value_range``) to 0 and 1, clip to
    ``[0, clip_max]``; float32, same shape. A constant image becomes all zeros."""
    lo, hi = value_range or intensity_range(voxels, percentiles)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return np.zeros(np.shape(voxels), np.float32)
    x = np.array(voxels, dtype=np.float32)  # a copy, then in place: one array, not four
    x -= np.float32(lo)
    x /= np.float32(hi - lo)
    return np.clip(x, 0.0, clip_max, out=x)


def chest_wall_on_right(plane: np.ndarray, laterality: str | None) -> bool:
    """Whether a stored mammogram ``(rows, cols)`` must be mirrored to put the chest wall left.

    Right breasts are mirrored (DICOM display convention); if after that the far third of the
    image is clearly brighter than the chest-wall third (``MIRROR_RATIO``), the image was
    stored mirrored and the decision is reversed.
    """
    flip = laterality == "R"
    cols = plane.shape[1]
    third = max(1, cols // 3)
    lo = float(np.percentile(plane[::4, ::4], 1))
    left = float(plane[:, :third].mean()) - lo
    right = float(plane[:, -third:].mean()) - lo
    if flip:
        left, right = right, left
    if right > MIRROR_RATIO * max(left, 1e-12) and right > 0:
        flip = not flip
    return flip


#: Breast: pixels above this share of the normalised range (0 background, 1 the upper
#: percentile), the largest connected region of them.
BREAST_THRESHOLD = 0.1
#: A breast region smaller than this share of the image is not trusted (the whole image is used).
BREAST_MIN_FRACTION = 0.05
#: Margin added around the breast's bounding box, as a share of the image's side; also the
#: breast region's growth in :func:`breast_support`, as a share of the grid's longer side.
BREAST_MARGIN = 0.02


def breast_region(plane: np.ndarray) -> np.ndarray | None:
    """The breast's pixels (bool, the shape of ``plane``) in a normalised mammogram: the
    largest connected region above :data:`BREAST_THRESHOLD` (film labels and markers, apart
    from it, left out); ``None`` when it covers less than :data:`BREAST_MIN_FRACTION` of the
    image."""
    import SimpleITK as sitk

    above = np.ascontiguousarray(np.asarray(plane) > BREAST_THRESHOLD, dtype=np.uint8)
    if not above.any():
        return None
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(above)),
                                   sortByObjectSize=True)
    largest = sitk.GetArrayFromImage(labels) == 1
    return None if largest.sum() < BREAST_MIN_FRACTION * above.size else largest


def breast_box(plane: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(row0, row1, col0, col1)`` (half-open) of the breast in a normalised
    mammogram ``(rows, cols)`` (:func:`normalise_intensity`), with a margin.

    The breast is the largest connected region above :data:`BREAST_THRESHOLD`: film labels,
    markers and scanner borders, smaller and apart from it, are left out. Found on a copy
    subsampled to at most ~512 pixels a side. ``None`` when no region covers
    :data:`BREAST_MIN_FRACTION` of the image (a blank or unusual image: use all of it).
    """
    rows, cols = plane.shape
    step = max(1, int(np.ceil(max(rows, cols) / 512)))
    largest = breast_region(plane[::step, ::step])
    if largest is None:
        return None
    rr = np.flatnonzero(largest.any(1))
    cc = np.flatnonzero(largest.any(0))
    mr, mc = int(round(BREAST_MARGIN * rows)), int(round(BREAST_MARGIN * cols))
    r0 = max(0, int(rr[0]) * step - mr)
    r1 = min(rows, (int(rr[-1]) + 1) * step + mr)
    c0 = max(0, int(cc[0]) * step - mc)
    c1 = min(cols, (int(cc[-1]) + 1) * step + mc)
    return r0, r1, c0, c1


def breast_support(images: np.ndarray) -> np.ndarray:
    """Where a mammogram's saliency may point: per slot of normalised mammograms ``(S, 1, H,
    W)`` on the model grid, the breast (:func:`breast_region`) grown by :data:`BREAST_MARGIN` of
    the grid's longer side, so that a finding on the skin line stays in; the whole slot where no
    breast is found. bool, the shape of ``images``.

    Film labels, markers and scanner borders are apart from the breast: a saliency maximum
    there points at nothing the reader could biopsy."""
    import SimpleITK as sitk

    images = np.asarray(images)
    out = np.ones(images.shape, bool)
    radius = max(1, int(round(BREAST_MARGIN * max(images.shape[-2:]))))
    for s in range(images.shape[0]):
        region = breast_region(images[s, 0])
        if region is not None:
            grown = sitk.BinaryDilate(sitk.GetImageFromArray(region.astype(np.uint8)), [radius] * 2,
                                      sitk.sitkBall, 0, 1)
            out[s, 0] = sitk.GetArrayFromImage(grown) > 0
    return out


# -- grids -------------------------------------------------------------------------------

def frame_geometry(geometry: Geometry, frame: int) -> Geometry:
    """Geometry of frame ``frame`` (slice index) of a multi-frame image, as a 1-slice grid."""
    origin = geometry.index_to_lps((0.0, 0.0, float(frame)))
    return Geometry(geometry.spacing_mm, tuple(origin), geometry.direction)


def plane_grid(shape: tuple[int, int, int], geometry: Geometry, size: tuple[int, int],
               mirror: bool = False, box: tuple[int, int, int, int] | None = None) -> ModelGrid:
    """Model grid ``(1, *size)`` for a 1-slice image: isotropic in-plane, aspect kept, centred.

    Parameters
    ----------
    shape : ``(1, rows, cols)`` of the image. geometry : its geometry.
    size : ``(H, W)`` of the model grid. mirror : reverse the column axis (mirrored view).
    box : ``(row0, row1, col0, col1)`` (half-open pixel ranges): fit the grid to that part of
        the image instead of the whole of it (:func:`breast_box`); the rest is cut off.
    """
    return _centred_grid(shape, geometry, (1, *size), mirror, stretch_slices=False, box=box)


def volume_grid(shape: tuple[int, int, int], geometry: Geometry,
                size: tuple[int, int, int]) -> ModelGrid:
    """Model grid ``size`` (D, H, W) over a volume: in-plane isotropic with the aspect kept
    (centred, padded), the slice axis stretched to cover the volume's extent."""
    return _centred_grid(shape, geometry, size, False, stretch_slices=True)


def _centred_grid(shape, geometry: Geometry, size, mirror: bool, stretch_slices: bool,
                  box: tuple[int, int, int, int] | None = None) -> ModelGrid:
    d, r, c = shape
    r0, c0 = 0, 0
    if box is not None:
        r0, r1, c0, c1 = (int(v) for v in box)
        if not (0 <= r0 < r1 <= r and 0 <= c0 < c1 <= c):
            raise ValueError(f"box {box} is not inside an image of {r} x {c} pixels")
        r, c = r1 - r0, c1 - c0
    sd, sh, sw = size
    sx, sy, sz = geometry.spacing_mm
    s = max(c * sx / sw, r * sy / sh)
    s_slice = (d * sz / sd) if stretch_slices else sz
    centre = geometry.index_to_lps((c0 + (c - 1) / 2.0, r0 + (r - 1) / 2.0, (d - 1) / 2.0))
    flip = np.diag([-1.0 if mirror else 1.0, 1.0, 1.0])
    direction = geometry.direction_matrix @ flip
    half = np.array([(sw - 1) / 2.0 * s, (sh - 1) / 2.0 * s, (sd - 1) / 2.0 * s_slice])
    origin = centre - direction @ half
    geom = Geometry((s, s, s_slice), tuple(origin), tuple(direction.ravel()))
    return ModelGrid((int(sd), int(sh), int(sw)), geom)


# -- resampling --------------------------------------------------------------------------

def _sitk_image(voxels: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(voxels, dtype=np.float32))
    geometry.apply_to_sitk(img)
    return img


def resample(voxels: np.ndarray, geometry: Geometry, shape: tuple[int, int, int],
             target: Geometry, linear: bool = True, antialias: bool = True) -> np.ndarray:
    """Resample ``voxels`` ``(D, R, C)`` with ``geometry`` onto the grid ``shape``/``target``.

    Physical-space resampling: a voxel of the output takes the value of the input at the same
    LPS position; outside the input it is 0. With ``antialias`` the input is first averaged
    over bins (SimpleITK ``BinShrink``) when the target spacing is coarser. Linear resampling
    between parallel grids takes :func:`_separable_linear`; the rest, SimpleITK.

    Returns
    -------
    float32 ``shape``.
    """
    import SimpleITK as sitk

    size_xyz = tuple(int(n) for n in np.shape(voxels)[::-1])
    factors = [1, 1, 1]
    if antialias:
        finest = min(target.spacing_mm[:2]) if shape[0] == 1 else min(target.spacing_mm)
        factors = [max(1, int(finest / sp)) if n > 1 else 1
                   for sp, n in zip(geometry.spacing_mm, size_xyz)]
        factors = [min(f, max(1, n // 2)) for f, n in zip(factors, size_xyz)]
    if linear and max(factors) == 1:
        out = _separable_linear(voxels, geometry, shape, target)
        if out is not None:
            return out
    img = _sitk_image(voxels, geometry)
    if max(factors) > 1:
        img = sitk.BinShrink(img, factors)
    # the output grid given directly (a reference image would be allocated and zero-filled)
    f = sitk.ResampleImageFilter()
    f.SetSize((int(shape[2]), int(shape[1]), int(shape[0])))
    f.SetOutputSpacing(target.spacing_mm)
    f.SetOutputOrigin(target.origin_mm)
    f.SetOutputDirection(target.direction)
    f.SetTransform(sitk.Transform())
    f.SetInterpolator(sitk.sitkLinear if linear else sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(0.0)
    f.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(f.Execute(img))


#: Largest deviation of ``source_direction.T @ target_direction`` from a diagonal of +-1 for
#: which :func:`_separable_linear` takes the grids as axis-aligned (1e-6 of a 300 mm extent is
#: 0.3 um).
AXIS_ALIGNED_TOL = 1e-6


def _separable_linear(voxels: np.ndarray, geometry: Geometry, shape: tuple[int, int, int],
                      target: Geometry) -> np.ndarray | None:
    """Linear resampling as SimpleITK's ``sitkLinear`` does it, for grids whose axes are
    parallel (each target axis along the same source axis, either sense); else ``None``.

    Each source axis then depends on one target axis only, ``ci = offset + step * j``, so the
    interpolation is three 1D passes (gather the two neighbours, blend): 2-4x faster than
    ITK's per-voxel interpolator, on one thread. ITK's rules are kept: a target voxel whose
    continuous source index is outside ``[-0.5, n - 0.5)`` on any axis is 0; inside, the
    index is clamped to ``[0, n - 1]``. Values agree with SimpleITK to float32 rounding (ITK
    blends in float64, x before y before z).

    The output is made in blocks of :data:`RESAMPLE_BLOCK` voxels along its first axis longer
    than 1, each from the source slab it needs: the temporaries stay small and in cache.
    """
    ds, dt = geometry.direction_matrix, target.direction_matrix
    m = ds.T @ dt
    sign = np.sign(np.diag(m))
    if np.abs(m - np.diag(sign)).max() > AXIS_ALIGNED_TOL:
        return None
    src_spacing = np.asarray(geometry.spacing_mm, np.float64)
    offset = ds.T @ (np.asarray(target.origin_mm, np.float64)
                     - np.asarray(geometry.origin_mm, np.float64)) / src_spacing
    step = sign * np.asarray(target.spacing_mm, np.float64) / src_spacing
    x = np.ascontiguousarray(voxels, dtype=np.float32)
    out_shape = tuple(int(n) for n in shape)
    out = mapped_zeros(out_shape)  # long-lived: kept out of malloc's heap
    # per array axis (z, y, x; xyz axis 2 - d): the run of target indices inside the source
    # (one run: ci is monotonic) and, for it, the two source neighbours and the blend weight
    inside, taps = [], []
    for d in range(3):
        n_src = x.shape[d]
        ci = offset[2 - d] + step[2 - d] * np.arange(out_shape[d], dtype=np.float64)
        j = np.flatnonzero((ci >= -0.5) & (ci < n_src - 0.5))
        if j.size == 0:
            return out
        inside.append(slice(int(j[0]), int(j[-1]) + 1))
        ci = np.clip(ci[j], 0.0, n_src - 1)
        i0 = np.floor(ci).astype(np.int64)
        taps.append((i0, np.minimum(i0 + 1, n_src - 1), (ci - i0).astype(np.float32)))
    view = out[tuple(inside)]
    c = 0 if view.shape[0] > 1 else 1  # the blocked axis
    rows = max(1, RESAMPLE_BLOCK // max(1, view[0].size if c == 0 else view[0, 0].size))
    # the other axes first, the one that shrinks most first (less to blend afterwards)
    order = sorted((d for d in range(3) if d != c), key=lambda d: view.shape[d] / x.shape[d])
    for start in range(0, view.shape[c], rows):
        n = min(rows, view.shape[c] - start)
        i0, i1, frac = (t[start:start + n] for t in taps[c])
        lo = int(min(i0.min(), i1.min()))
        slab = x[(slice(None),) * c + (slice(lo, int(max(i0.max(), i1.max())) + 1),)]
        for d in order:
            slab = _lerp_along(slab, d, taps[d])
        _lerp_along(slab, c, (i0 - lo, i1 - lo, frac),
                    out=view[(slice(None),) * c + (slice(start, start + n),)])
    return out


#: Output voxels per block of :func:`_separable_linear` (1 MiB of float32).
RESAMPLE_BLOCK = 2**18


def _lerp_along(x: np.ndarray, dim: int, taps, out: np.ndarray | None = None) -> np.ndarray:
    """``lerp(x[i0], x[i1], frac)`` along ``dim`` (``taps = (i0, i1, frac)``); the identity
    (every ``i0 = j``, ``frac = 0``) returns ``x`` itself."""
    i0, i1, frac = taps
    if out is None and len(i0) == x.shape[dim] and not frac.any() and (
            i0 == np.arange(len(i0))).all():
        return x
    lo = np.take(x, i0, axis=dim)
    hi = np.take(x, i1, axis=dim)
    hi -= lo
    hi *= frac.reshape([-1 if d == dim else 1 for d in range(3)])
    return np.add(lo, hi, out=lo if out is None else out)


def to_model_grid(voxels: np.ndarray, source: SourceImage, grid: ModelGrid,
                  linear: bool = True) -> np.ndarray:
    """An image's array ``source.shape`` onto the model grid (``grid.shape``, float32)."""
    geom = source.geometry
    if source.frame is not None:
        voxels = voxels[source.frame:source.frame + 1]
        geom = frame_geometry(source.geometry, source.frame)
    return resample(voxels, geom, grid.shape, grid.geometry, linear=linear)


def covered(coverage: np.ndarray) -> np.ndarray:
    """A lesion mask resampled onto another grid (``coverage``: the share of each voxel the
    lesion covers) as a binary mask: the voxels at least half covered or, when there is none (a
    lesion smaller than half a voxel of that grid), the most covered ones, so that an outline
    never vanishes on a coarser grid. uint8, zeros only where ``coverage`` is 0."""
    out = coverage >= 0.5
    if not out.any():
        top = float(coverage.max()) if coverage.size else 0.0
        if top > 0.0:
            out = coverage >= top
    return out.astype(np.uint8)


def mask_on_grid(mask: np.ndarray, source: SourceImage, target: SourceImage) -> np.ndarray:
    """A lesion mask of image ``source`` on image ``target``'s grid (MR sequences of other
    grids sharing one outline): a copy on the same grid, else resampled in physical space
    (:func:`covered`). uint8 ``target.shape``."""
    from ..io.files import same_grid

    mask = (np.asarray(mask).reshape(source.shape) > 0).astype(np.uint8)
    if source.shape == target.shape and same_grid(source.geometry, target.geometry):
        return mask
    return covered(resample(mask.astype(np.float32), source.geometry, target.shape, target.geometry))


def to_image_grid(array: np.ndarray, grid: ModelGrid, source: SourceImage) -> np.ndarray:
    """A map on the model grid back onto the image's own grid (``source.shape``, float32; a new
    array, the caller's to change).

    For a 2D input from a multi-frame image the map fills the frame used; other frames are 0.
    """
    array = np.asarray(array, dtype=np.float32).reshape(grid.shape)
    if source.frame is None:
        return resample(array, grid.geometry, source.shape, source.geometry, antialias=True)
    out = np.zeros(source.shape, np.float32)
    plane = resample(array, grid.geometry, (1, *source.shape[1:]),
                     frame_geometry(source.geometry, source.frame), antialias=True)
    out[source.frame] = plane[0]
    return out


# -- selecting images --------------------------------------------------------------------

def _view_index(view: str | None) -> int:
    return MG_VIEW_CODES.index(view) if view in MG_VIEW_CODES[:-1] else len(MG_VIEW_CODES) - 1


def _side_index(laterality: str | None) -> int:
    return SIDES.index(laterality) if laterality in SIDES[:-1] else len(SIDES) - 1


def _frame_of(image: Image, user_mask: np.ndarray | None = None) -> int | None:
    """The frame of a cine the model reads: ``role.frame``, else the central one; but the frame a
    reader outlined the lesion on, when the outline leaves that frame empty."""
    if image.shape[0] == 1:
        return None
    f = image.role.frame
    if f is None or not 0 <= f < image.shape[0]:
        f = image.shape[0] // 2
    if user_mask is not None and np.asarray(user_mask).shape[0] == image.shape[0]:
        per_frame = np.asarray(user_mask).reshape(image.shape[0], -1).sum(axis=1)
        if per_frame[f] == 0 and per_frame.any():
            f = int(np.argmax(per_frame))
    return int(f)


def _keep_first(ims: list[Image], max_n: int, rank) -> tuple[list[Image], list[Image]]:
    """The ``max_n`` images of ``ims`` that sort first by ``rank``, in their original order,
    and the others."""
    chosen = set(id(im) for im in sorted(ims, key=rank)[:max_n])
    return [im for im in ims if id(im) in chosen], [im for im in ims if id(im) not in chosen]


def select_mg(study: Study, max_views: int, prefer_views: tuple[str, ...] = (),
              marked: frozenset[str] = frozenset(), suspicion: dict[str, float] | None = None
              ) -> tuple[list[Image], list[str]]:
    """MG images in slot order (L before R, CC before MLO before others), at most ``max_views``.

    When the study has more, images with a lesion mask (``marked`` labels: the user's outline
    must be used) are kept first, then views in ``prefer_views`` order (a bundle trained on
    MLO views only prefers ``("MLO",)``), then the higher ``suspicion`` (label -> score;
    ``DiagnosisConfig.mg_select`` ``"finding"``), then slot order.
    """
    ims = sorted(study.of(Modality.MG),
                 key=lambda im: (_side_index(im.role.laterality), _view_index(im.role.view), im.label))
    prefer = [v.upper() for v in prefer_views]

    def rank(im: Image):
        view = (im.role.view or "").upper()
        return (im.label not in marked, prefer.index(view) if view in prefer else len(prefer),
                -(suspicion or {}).get(im.label, -math.inf))

    kept, left = _keep_first(ims, max_views, rank)
    notes = [f"{im.label}: more than the model's {max_views} mammogram slot(s); not read for the diagnosis"
             for im in left]
    return kept, notes


def select_us(study: Study, max_images: int, marked: frozenset[str] = frozenset()
              ) -> tuple[list[Image], list[str]]:
    """US images in label order, at most ``max_images`` (images with a lesion mask first)."""
    ims = sorted(study.of(Modality.US), key=lambda im: im.label)
    kept, left = _keep_first(ims, max_images, lambda im: im.label not in marked)
    notes = [f"{im.label}: more than the model's {max_images} ultrasound slot(s); not read for the diagnosis"
             for im in left]
    return kept, notes


def select_mr(study: Study) -> tuple[dict[str, Image], list[str]]:
    """The MR image for each channel of :data:`MR_CHANNELS` (missing ones absent).

    DCE post-contrast phases in order give DCE1, DCE2 and (the last one) DCE3; DWI is the one
    with the highest b-value; further duplicates are ignored with a note.
    """
    chosen: dict[str, Image] = {}
    notes: list[str] = []
    mr = study.of(Modality.MR)
    dce = sorted((im for im in mr if im.role.sequence is MRSequence.DCE), key=lambda im: im.role.phase)
    phases = sorted({im.role.phase for im in dce})
    pick = {p: f"DCE{i + 1}" for i, p in enumerate(phases[:2])}
    if len(phases) >= 3:
        pick[phases[-1]] = "DCE3"
    dwi = sorted((im for im in mr if im.role.sequence is MRSequence.DWI),
                 key=lambda im: -(im.role.b_value or 0.0))
    for im in [*(i for i in mr if i.role.sequence is MRSequence.T1_PRE), *dce, *dwi,
               *(i for i in mr if i.role.sequence in (MRSequence.T2, MRSequence.ADC))]:
        seq = im.role.sequence
        if seq is MRSequence.DCE:
            ch = pick.get(im.role.phase)
        else:
            ch = seq.value
        if ch is None or ch in chosen:
            notes.append(f"{im.label}: MR {ch or 'phase'} already used; not read for the diagnosis")
            continue
        chosen[ch] = im
    return chosen, notes


# -- preparing a study -------------------------------------------------------------------

def _check_masks(study: Study, lesion_masks: dict | None) -> dict[str, np.ndarray]:
    out = {}
    for label, mask in (lesion_masks or {}).items():
        try:
            im = study.image(label)
        except KeyError as e:
            raise InputError(str(e.args[0])) from None
        m = np.asarray(mask)
        if m.ndim == 2:
            m = m[None]
        if m.shape != im.shape:
            raise InputError(f"lesion mask for {label} has shape {m.shape}, the image has {im.shape}")
        out[label] = (m > 0).astype(np.uint8)
    return out


def _plane_input(images: list[Image], size, modality: str, masks: dict, config: DiagnosisConfig,
                 mask_source: dict) -> ModalityInput:
    n = len(images)
    arr = np.zeros((n, 1, *size), np.float32)
    mk = np.zeros((n, 1, *size), np.uint8)
    given = np.zeros(n, bool)
    view = np.array([_view_index(im.role.view) for im in images], np.int64)
    # a modality the bundle learnt without sides is read so (its side embeddings are untrained)
    side = np.array([_side_index(None if modality in config.unsided else im.role.laterality) for im in images],
                    np.int64)

    def one(i: int) -> tuple[ModelGrid, SourceImage]:  # fills row i (images side by side)
        im = images[i]
        user = im.label in masks and masks.source_of(im.label) == "user"
        frame = _frame_of(im, masks[im.label] if user else None)
        src = SourceImage(im.label, im.shape, im.geometry, frame)
        plane = normalise_intensity(im.voxels if frame is None else im.voxels[frame:frame + 1],
                                    config.intensity_percentiles)
        mirror = modality == "MG" and chest_wall_on_right(plane[0], im.role.laterality)
        geom = im.geometry if frame is None else frame_geometry(im.geometry, frame)
        box = breast_box(plane[0]) if modality == "MG" and config.mg_fit == "breast" else None
        grid = plane_grid(plane.shape, geom, size, mirror=mirror, box=box)
        arr[i, 0] = resample(plane, geom, grid.shape, grid.geometry)[0]
        if im.label in masks:
            mk[i, 0] = covered(to_model_grid(masks[im.label].astype(np.float32), src, grid)[0])
            given[i] = True
        return grid, src

    done = thread_map(one, range(n))
    grids, sources = [g for g, _ in done], [[s] for _, s in done]
    for im in images:
        if im.label in masks:
            mask_source[im.label] = masks.source_of(im.label)
    return ModalityInput(arr, mk, given, view, side, np.ones((n, len(MR_CHANNELS)), bool),
                         grids, sources)


def _mr_input(chosen: dict[str, Image], config: DiagnosisConfig, masks: dict,
              mask_source: dict, mask_from: dict) -> ModalityInput:
    ref = next(chosen[c] for c in ("DCE1", "T1_PRE", *MR_CHANNELS) if c in chosen)
    grid = volume_grid(ref.shape, ref.geometry, config.mr_size)
    arr = np.zeros((1, len(MR_CHANNELS), *config.mr_size), np.float32)
    present = np.zeros((1, len(MR_CHANNELS)), bool)
    mk = np.zeros((1, 1, *config.mr_size), np.uint8)
    given = np.zeros(1, bool)
    sources = []
    # the DCE series (pre-contrast and post-contrast phases) share one intensity scale, that
    # of its first available post-contrast phase, so that enhancement and wash-out survive
    dce = next((chosen[c] for c in ("DCE1", "DCE2", "DCE3", "T1_PRE") if c in chosen), None)
    dce_range = None if dce is None else intensity_range(dce.voxels, config.intensity_percentiles)

    def one(k: int) -> SourceImage:  # fills channel k (the sequences side by side)
        ch = MR_CHANNELS[k]
        im = chosen[ch]
        src = SourceImage(im.label, im.shape, im.geometry)
        in_dce = ch in DCE_CHANNELS
        norm = normalise_intensity(im.voxels, config.intensity_percentiles,
                                   dce_range if in_dce else None, DCE_CLIP if in_dce else 1.0)
        arr[0, k] = to_model_grid(norm, src, grid)
        return src

    channels = [k for k, ch in enumerate(MR_CHANNELS) if ch in chosen]
    sources += thread_map(one, channels)
    present[0, channels] = True
    # the mask of the reference if known, else of any other sequence
    for src in sorted(sources, key=lambda s: s.label != ref.label):
        if src.label in masks:
            mk[0, 0] = covered(to_model_grid(masks[src.label].astype(np.float32), src, grid))
            given[0] = True
            for s in sources:
                mask_source[s.label] = masks.source_of(src.label)
                mask_from[s.label] = src.label
            break
    return ModalityInput(arr, mk, given, np.zeros(1, np.int64),
                         np.full(1, len(SIDES) - 1, np.int64), present, [grid], [sources])


class _Masks(dict):
    """Lesion masks by image label, remembering where each came from ("user"/"reference")."""

    def __init__(self):
        super().__init__()
        self._source: dict[str, str] = {}

    def add(self, label: str, mask: np.ndarray, source: str) -> None:
        self[label] = mask
        self._source[label] = source

    def source_of(self, label: str) -> str:
        return self._source[label]


def prepare_study(study: Study, config: DiagnosisConfig, *, lesion_masks: dict | None = None,
                  modalities=None, use_reference_masks: bool = False,
                  mg_suspicion: dict[str, float] | None = None) -> PreparedStudy:
    """The network inputs of ``study``.

    Parameters
    ----------
    study : the study (any combination of MG, US and MR images).
    config : sizes and intensity settings.
    lesion_masks : user lesion masks by image label, each on its image's grid
        ``(depth, rows, cols)`` (or ``(rows, cols)``); they replace the predicted lesion for
        the lesion-focused crop of that image (for MR: of the whole MR input).
    modalities : modalities to use (default: all present), e.g. ``("MG", "US")``.
    use_reference_masks : also use the study's own ``lesion_mask`` of each image (training).
    mg_suspicion : label -> score ranking the mammograms when there are more than the slots
        (:func:`select_mg`; inference with ``mg_select: "finding"``).

    Raises
    ------
    InputError
        when the study has none of the requested modalities, or a user mask does not fit.
    """
    wanted = tuple(m.value if isinstance(m, Modality) else str(m).upper()
                   for m in (modalities or ("MG", "US", "MR")))
    for m in wanted:
        if m not in ("MG", "US", "MR"):
            raise InputError(f"unknown modality {m!r}; use MG, US and/or MR")
    masks = _Masks()
    if use_reference_masks:
        for im in study.images:
            if im.lesion_mask is not None:
                masks.add(im.label, im.lesion_mask, "reference")
    for label, m in _check_masks(study, lesion_masks).items():
        masks.add(label, m, "user")
    inputs: dict[str, ModalityInput] = {}
    notes: list[str] = []
    mask_source: dict[str, str] = {}
    mask_from: dict[str, str] = {}
    if "MG" in wanted and study.of(Modality.MG):
        ims, n = select_mg(study, config.mg_max_views, config.mg_views, frozenset(masks), mg_suspicion)
        notes += n
        inputs["MG"] = _plane_input(ims, config.mg_size, "MG", masks, config, mask_source)
    if "US" in wanted and study.of(Modality.US):
        ims, n = select_us(study, config.us_max_images, frozenset(masks))
        notes += n
        inputs["US"] = _plane_input(ims, config.us_size, "US", masks, config, mask_source)
    if "MR" in wanted and study.of(Modality.MR):
        chosen, n = select_mr(study)
        notes += n
        if chosen:
            inputs["MR"] = _mr_input(chosen, config, masks, mask_source, mask_from)
    if not inputs:
        have = ", ".join(m.value for m in study.modalities()) or "no images"
        raise InputError(f"study {study.study_id} has none of the requested modalities "
                         f"{', '.join(wanted)} (it has {have})")
    for note in notes:
        log.info("%s: %s", study.study_id, note)
    return PreparedStudy(study.study_id, inputs, notes, mask_source, mask_from)
