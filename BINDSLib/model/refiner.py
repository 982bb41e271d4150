"""The lesion outline refiner: the predicted lesion redrawn on the image's own pixels.

The lesion locators draw the lesion on the model grid (256 x 256 for the BUSI bundle, with
features at a quarter of that), so the outline mapped back onto a 500-pixel ultrasound image
is smooth and loses the lesion's margins. With ``DiagnosisConfig.lesion_refiner`` set, a small
2D U-Net (MONAI ``UNet``) reads a square crop of the image around the predicted lesion
(``box_scale`` x its largest extent, plus ``box_pad`` pixels, in millimetres) at
``size`` x ``size`` pixels and draws the lesion again. The refiner is trained on crops that
hold a lesion, so its map says which pixels belong to the lesion *given* that there is one;
whether there is one stays the locator's call. Inside the square the lesion probability
becomes the refiner's map scaled so that its peak is the locator's peak there (outside it
the locator's map stays), so the map's maximum - the lesion score that tells normal from
abnormal images - is the locator's, and the outline is the refiner's (``peak_component``
draws the region where the refiner's map passes half its peak, as with no refiner). When the refiner finds no lesion
in the square (its peak below the lesion threshold) the locator's map is kept.

Training (:func:`train_refiner`, a stage of ``binds train`` after the network's epochs):
crops of the training images around their reference lesion, with the box side drawn in
``scale_range`` x the lesion's extent and its centre moved by up to ``jitter`` of the extent
(the predicted lesion the refiner is given at inference is not the reference one), mirrored,
with gamma / contrast / brightness changes; binary cross-entropy + soft Dice; AdamW with a
one-cycle learning rate.

All coordinates are continuous pixel indices of the 2D plane (row ``y``, column ``x``; pixel
centres at integers).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import RefinerConfig

log = logging.getLogger(__name__)


class LesionRefiner(nn.Module):
    """The refiner network: one grey-level crop in, one lesion logit map out (same size)."""

    def __init__(self, config: RefinerConfig):
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config
        self.net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=config.channels,
                        strides=(2,) * (len(config.channels) - 1), num_res_units=config.res_units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.inference_mode()
    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion probability of crops ``(N, 1, S, S)`` (mirrored average with ``flip``)."""
        p = torch.sigmoid(self.net(x).float())
        if self.config.flip:
            p = (p + torch.sigmoid(self.net(x.flip(-1)).float()).flip(-1)) / 2
        return p


@dataclass(frozen=True)
class Box:
    """A square crop (in millimetres) of a plane: centre and half sizes, in pixels per axis."""

    cy: float
    cx: float
    hy: float
    hx: float

    @classmethod
    def around(cls, mask: np.ndarray, spacing_yx: tuple[float, float], scale: float,
               pad: float) -> "Box | None":
        """The square around the bounding box of ``mask`` (2D): side ``scale`` x its largest
        extent plus ``pad`` pixels of the finer axis, in mm; ``None`` for an empty mask."""
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not rows.size:
            return None
        return cls.of_extent(rows[0], rows[-1], cols[0], cols[-1], spacing_yx, scale, pad)

    @classmethod
    def of_extent(cls, y0, y1, x0, x1, spacing_yx, scale: float, pad: float,
                  shift: tuple[float, float] = (0.0, 0.0)) -> "Box":
        """The square around rows ``y0..y1`` and columns ``x0..x1`` (inclusive), its centre
        moved by ``shift`` (fractions of the extent per axis)."""
        sy, sx = (float(s) for s in spacing_yx)
        ey, ex = (y1 - y0 + 1) * sy, (x1 - x0 + 1) * sx
        side = scale * max(ey, ex) + pad * min(sy, sx)
        return cls((y0 + y1) / 2 + shift[0] * (y1 - y0 + 1), (x0 + x1) / 2 + shift[1] * (x1 - x0 + 1),
                   side / 2 / sy, side / 2 / sx)

    def pixels(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """The plane's pixels whose centres lie in the box (possibly empty slices)."""
        def axis(c, h, n):
            return slice(max(0, math.ceil(c - h)), min(n, math.floor(c + h) + 1))

        return axis(self.cy, self.hy, shape[0]), axis(self.cx, self.hx, shape[1])


def crop(plane: np.ndarray, box: Box, size: int,
         value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """``(1, size, size)`` bilinear samples of a 2D plane over ``box`` (zeros outside the plane).

    Only the pixels under the box are converted and read (a mammogram is not copied whole).
    ``value_range``: the pixels are first normalised as ``normalise_intensity`` does (``lo``
    -> 0, ``hi`` -> 1, clipped), so a crop of the raw image equals the crop of the normalised
    one (training crops normalised planes).
    """
    from .crops import crop as crop_boxes
    from .preprocess import normalise_intensity

    h, w = plane.shape
    # the pixels the samples read (the box + 1 pixel); samples outside the plane are 0
    y0, y1 = max(0, math.floor(box.cy - box.hy) - 1), min(h, math.ceil(box.cy + box.hy) + 2)
    x0, x1 = max(0, math.floor(box.cx - box.hx) - 1), min(w, math.ceil(box.cx + box.hx) + 2)
    if y1 - y0 < 1 or x1 - x0 < 1:  # the box misses the plane
        return torch.zeros(1, size, size)
    sub = plane[y0:y1, x0:x1]
    # float32 copies in native byte order (the percentiles are unused with a value_range)
    sub = (np.array(sub, dtype=np.float32) if value_range is None
           else normalise_intensity(sub, (0.0, 100.0), value_range))
    # the box in crops.crop's normalised coordinates of the sub-array (x, y order)
    sh, sw = y1 - y0, x1 - x0
    centre = torch.tensor([[2 * (box.cx - x0 + 0.5) / sw - 1, 2 * (box.cy - y0 + 0.5) / sh - 1]], dtype=torch.float64)
    half = torch.tensor([[2 * box.hx / sw, 2 * box.hy / sh]], dtype=torch.float64)
    return crop_boxes(torch.from_numpy(sub)[None, None], centre, half, (size, size))[0]


def paste(probability: torch.Tensor, box: Box, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """A crop's ``(size, size)`` map on the plane's pixels inside ``box``: ``(pixels, values)``."""
    size = probability.shape[-1]
    py, px = box.pixels(shape)
    ys = torch.arange(py.start, py.stop, dtype=torch.float64)
    xs = torch.arange(px.start, px.stop, dtype=torch.float64)
    if not len(ys) or not len(xs):
        return (py, px), np.zeros((len(ys), len(xs)), np.float32)
    # plane pixel -> continuous crop index (crop pixel centres at (i + 0.5) / size across the box)
    gy = ((ys - box.cy) / box.hy + 1) / 2 * size - 0.5
    gx = ((xs - box.cx) / box.hx + 1) / 2 * size - 0.5
    grid = torch.stack(torch.meshgrid(gy / (size - 1) * 2 - 1, gx / (size - 1) * 2 - 1,
                                      indexing="ij")[::-1], -1)[None].float()
    out = F.grid_sample(probability.reshape(1, 1, size, size).float().cpu(), grid, mode="bilinear",
                        padding_mode="border", align_corners=True)
    return (py, px), out[0, 0].numpy()


@dataclass(frozen=True)
class Refinement:
    """The refiner's map on the pixels of one plane: ``values`` at ``plane[pixels]``."""

    pixels: tuple[slice, slice]
    values: np.ndarray

    def apply(self, probability: np.ndarray) -> np.ndarray:
        """Write the refined values into a 2D lesion probability map (in place); returns it."""
        probability[self.pixels] = self.values
        return probability


def refine(refiner: LesionRefiner, plane: np.ndarray, lesion: np.ndarray, probability: np.ndarray,
           spacing_yx: tuple[float, float], value_range: tuple[float, float],
           threshold: float, device=None) -> Refinement | None:
    """The refined lesion map around the predicted ``lesion`` (2D mask) of ``plane`` (the raw
    2D image, normalised with ``value_range``): the refiner's map scaled so that its peak is
    the peak of the locator's ``probability`` (2D, on the plane's pixels) in the square.
    ``None``: no predicted lesion, or the refiner finds none in the square (its peak below
    ``threshold``, or not a finite number)."""
    cfg = refiner.config
    box = Box.around(lesion, spacing_yx, cfg.box_scale, cfg.box_pad)
    if box is None:
        return None
    x = crop(plane, box, cfg.size, value_range)
    device = device or next(refiner.parameters()).device
    p = refiner.probability(x[None].to(device))[0, 0]
    peak = float(p.max())
    if not peak >= threshold:  # also NaN
        return None
    pixels, values = paste(p, box, plane.shape)
    values = np.clip(values, 0.0, 1.0, out=values)
    # the box holds the locator's lesion (never empty); the refiner's peak becomes its peak
    values *= np.float32(float(probability[pixels].max()) / peak)
    return Refinement(pixels, values)


# -- training ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RefinerTraining:
    """Settings of the refiner's training stage (``train.refiner`` of a training config)."""

    epochs: int = 60
    lr: float = 2e-3
    batch_size: int = 16
    weight_decay: float = 1e-4
    scale_range: tuple[float, float] = (1.3, 2.0)
    jitter: float = 0.15

    def __post_init__(self):
        from .config import _check_field_types, _tuple

        _check_field_types(self)
        object.__setattr__(self, "scale_range", _tuple(self.scale_range, 2, "refiner scale_range", float))
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError("refiner training needs epochs >= 0, lr > 0 and batch_size >= 1")
        if len(self.scale_range) != 2 or not 1.0 <= self.scale_range[0] <= self.scale_range[1]:
            raise ValueError("refiner scale_range must be (low, high) with 1 <= low <= high")
        if not 0.0 <= self.jitter < 0.5:
            raise ValueError("refiner jitter must be in [0, 0.5)")


@dataclass
class LesionPlane:
    """One training image for the refiner: normalised 2D plane, its reference lesion mask."""

    plane: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # uint8 (H, W), 0 / 1
    spacing_yx: tuple[float, float]
    bounds: tuple[int, int, int, int]  # y0, y1, x0, x1 of the lesion (inclusive)


def lesion_planes(studies, config: RefinerConfig, percentiles,
                  training: RefinerTraining | None = None) -> list[LesionPlane]:
    """The refiner's training planes of ``studies``: each image of the refiner's modalities
    with a non-empty reference lesion mask (the frame the network reads), normalised over the
    whole frame, then cut to the region the largest training box can reach (``training``:
    its ``scale_range`` and ``jitter``; a mammogram is not kept whole)."""
    from .preprocess import _frame_of, normalise_intensity

    training = training or RefinerTraining()
    out = []
    for study in studies:
        for im in study.images:
            if im.modality.value not in config.modalities or im.lesion_mask is None:
                continue
            f = _frame_of(im) or 0
            mask = np.asarray(im.lesion_mask[f]) > 0
            if not mask.any():
                continue
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
            spacing = (im.geometry.spacing_mm[1], im.geometry.spacing_mm[0])
            reach = Box.of_extent(y0, y1, x0, x1, spacing, training.scale_range[1], config.box_pad)
            # + the largest centre shift, + 2 pixels for the bilinear neighbours
            ry = math.ceil(reach.hy + training.jitter * (y1 - y0 + 1)) + 2
            rx = math.ceil(reach.hx + training.jitter * (x1 - x0 + 1)) + 2
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            sy = slice(max(0, cy - ry), min(mask.shape[0], cy + ry + 1))
            sx = slice(max(0, cx - rx), min(mask.shape[1], cx + rx + 1))
            plane = normalise_intensity(im.voxels[f:f + 1], percentiles)[0][sy, sx].copy()
            out.append(LesionPlane(plane, mask[sy, sx].astype(np.uint8), spacing,
                                   (y0 - sy.start, y1 - sy.start, x0 - sx.start, x1 - sx.start)))
    return out


def _sample(item: LesionPlane, config: RefinerConfig, training: RefinerTraining,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y0, y1, x0, x1 = item.bounds
    box = Box.of_extent(y0, y1, x0, x1, item.spacing_yx, rng.uniform(*training.scale_range),
                        config.box_pad, tuple(rng.uniform(-training.jitter, training.jitter, 2)))
    x, m = crop(item.plane, box, config.size), crop(item.mask, box, config.size)
    if rng.random() < 0.5:
        x, m = x.flip(-1), m.flip(-1)
    gamma, contrast, brightness = rng.uniform(0.7, 1.4), rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
    return x.clamp(0, 1) ** gamma * contrast + brightness, (m > 0.5).float()


def refiner_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice (per crop, averaged)."""
    p = torch.sigmoid(logits)
    dims = tuple(range(1, logits.dim()))
    dice = 1 - (2 * (p * target).sum(dims) + 1) / (p.sum(dims) + target.sum(dims) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def train_refiner(refiner: LesionRefiner, train_planes: list[LesionPlane], training: RefinerTraining,
                  seed: int, device=None, val_planes: list[LesionPlane] = ()) -> dict:
    """Train ``refiner`` in place on crops around the reference lesions; returns the final
    training loss and, with ``val_planes``, the mean Dice of the crops around the validation
    lesions (box at the inference ``box_scale``, reference-centred: the refiner alone, not the
    locator's placement of it)."""
    cfg = refiner.config
    device = torch.device(device or "cpu")
    refiner.to(device).train()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    steps_per_epoch = math.ceil(len(train_planes) / training.batch_size)
    result: dict = {"n_train": len(train_planes)}
    if not train_planes or not training.epochs:
        refiner.eval()
        return result
    opt = torch.optim.AdamW(refiner.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=training.lr, pct_start=0.1,
                                                total_steps=training.epochs * steps_per_epoch)
    t0 = time.perf_counter()
    loss_sum = 0.0
    for epoch in range(training.epochs):
        order = rng.permutation(len(train_planes))
        loss_sum = 0.0
        for i in range(0, len(order), training.batch_size):
            xs, ms = zip(*(_sample(train_planes[j], cfg, training, rng) for j in order[i:i + training.batch_size]))
            loss = refiner_loss(refiner(torch.stack(xs).to(device)), torch.stack(ms).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(xs)
        log.info("refiner epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, training.epochs,
                 loss_sum / len(train_planes), time.perf_counter() - t0)
    refiner.eval()
    result["train_loss"] = loss_sum / len(train_planes)
    if val_planes:
        result["validation_dice_reference_box"] = float(np.mean([_crop_dice(refiner, v) for v in val_planes]))
        result["n_validation"] = len(val_planes)
    return result


def _crop_dice(refiner: LesionRefiner, item: LesionPlane) -> float:
    cfg = refiner.config
    y0, y1, x0, x1 = item.bounds
    box = Box.of_extent(y0, y1, x0, x1, item.spacing_yx, cfg.box_scale, cfg.box_pad)
    device = next(refiner.parameters()).device
    p = refiner.probability(crop(item.plane, box, cfg.size)[None].to(device))[0, 0]
    pixels, values = paste(p, box, item.plane.shape)
    pred = np.zeros(item.plane.shape, bool)
    pred[pixels] = values >= 0.5
    ref = item.mask > 0
    return float(2 * (pred & ref).sum() / max(pred.sum() + ref.sum(), 1))
