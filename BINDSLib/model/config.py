"""Settings of the diagnosis network, with named presets.

A :class:`DiagnosisConfig` travels inside every diagnosis bundle (``metadata.json`` ->
``binds`` -> ``model_config``), so :meth:`DiagnosisModel.from_bundle` rebuilds exactly the
network that was trained. Training files (``configs/diagnosis-*.json``) hold
``{"model": {...DiagnosisConfig or {"preset": NAME, ...overrides}}, "data": ..., "train": ...}``.

Presets
-------
``demo``
    Tiny and fast: MG views 160 x 128, US 128 x 128, MR 24 x 64 x 128; small MONAI ResNets
    (one basic block per stage); a 2-layer fusion transformer. One study with every modality
    runs in well under a second on a laptop CPU.
``paper``
    As the BINDS code: MONAI ResNet-18 encoders (``spatial_dims`` 2 and 3), 224 x 224 lesion
    crops for US and MG, 96^3 for MRI, a 6-layer fusion transformer. The lesion locators are
    ResNet-18 backbones too; the MRI one, which reads the whole 96 x 192 x 192 volume, has a
    3^3 stem instead of a 7^3 one (about a third of the study's FLOPs less).

Sizes are ``(rows, cols)`` for 2D and ``(slices, rows, cols)`` for 3D.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from ..study import MG_VIEWS, Subtype

#: Modalities in the fixed order of the network (token type embedding index).
MODALITIES = ("MG", "US", "MR")
#: All non-empty modality combinations, in reporting order.
COMBINATIONS = (("MG",), ("US",), ("MR",), ("MG", "US"), ("MG", "MR"), ("US", "MR"),
                ("MG", "US", "MR"))
#: MR channels of the stacked MRI input, in order (DCE1 = first post-contrast phase, DCE3 =
#: the last one when a study has more than three; DWI = the highest b-value).
MR_CHANNELS = ("T1_PRE", "DCE1", "DCE2", "DCE3", "T2", "DWI", "ADC")
#: Molecular subtype classes, in the order of the subtype head.
SUBTYPES = tuple(s.value for s in Subtype)
#: Mammography view codes known to the view embedding (anything else is "other").
MG_VIEW_CODES = ("CC", "MLO", "other")
#: Laterality codes of the side embedding.
SIDES = ("L", "R", "unknown")

_PRESETS = ("demo", "paper")
#: What a mammogram's model grid covers (``DiagnosisConfig.mg_fit``).
MG_FITS = ("image", "breast")
#: How a study with more mammograms than slots picks them (``DiagnosisConfig.mg_select``).
MG_SELECTS = ("order", "finding")


def _tuple(v, n: int | None, name: str, kind=int) -> tuple:
    """``v`` as a tuple of ``n`` numbers of ``kind`` (a whole number for ``int``); ``ValueError``
    naming ``name`` otherwise (text such as ``"64"`` is no list of numbers)."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):  # (a list, a tuple, a numpy array)
        raise ValueError(f"{name} must be a list of {n or 'some'} numbers, not {v!r}")
    values = list(v)
    for x in values:
        whole = isinstance(x, numbers.Integral) or (isinstance(x, numbers.Real) and float(x).is_integer())
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x) or (kind is int and not whole):
            raise ValueError(f"{name} must be a list of {'whole ' if kind is int else ''}numbers, not {values!r}")
    t = tuple(kind(x) for x in values)
    if n is not None and len(t) != n:
        raise ValueError(f"{name} needs {n} values, got {values}")
    return t


def _check_field_types(config) -> None:
    """``ValueError`` for a field of ``config`` (a dataclass) whose value is not of its declared
    scalar type: a whole number for ``int``, a finite number for ``float``, true/false for
    ``bool``, text for ``str`` (JSON configs are hand-written)."""
    for f in dataclasses.fields(config):
        v, kind = getattr(config, f.name), str(f.type).replace(" | None", "")
        if v is None and "None" in str(f.type):
            continue
        if kind == "int" and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
            raise ValueError(f"{f.name} must be a whole number, not {v!r}")
        if kind == "float" and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)):
            raise ValueError(f"{f.name} must be a number, not {v!r}")
        if kind == "bool" and not isinstance(v, bool):
            raise ValueError(f"{f.name} must be true or false, not {v!r}")
        if kind == "str" and not isinstance(v, str):
            raise ValueError(f"{f.name} must be text, not {v!r}")


@dataclass(frozen=True)
class EncoderConfig:
    """A MONAI ``ResNet`` backbone (basic blocks, four stages).

    Attributes
    ----------
    layers : blocks per stage; ``(2, 2, 2, 2)`` with ``channels (64, 128, 256, 512)`` is
        ResNet-18 (``monai.networks.nets.resnet18``).
    channels : stage widths; the feature size of the encoder is ``channels[-1]``.
    stem_kernel : kernel size of the first convolution (stride 2).
    max_pool : max-pooling after the stem (total stride 32 instead of 16).
    norm : ``"batch"`` (BatchNorm, as ResNet-18) or ``"group"`` (GroupNorm with
        ``norm_groups`` groups: independent of the batch, but measured to train the lesion
        locators several times slower). With BatchNorm a training batch needs more than one
        value per channel at the last stage: >= 2 images of a modality, or a last feature map
        larger than 1 voxel (crops of at least 32 pixels per axis, 2 slices).
    head_level : lesion locators only: the finest backbone stage whose features enter the
        pyramid head that draws the lesion map: ``1`` (default; stride 4 without max-pooling)
        or ``0`` (stride 2: sharper lesion outlines, at about 4x the head's cost - fine in
        2D, costly for the 3D locator on a full MRI grid) or ``2`` (stride 8: a coarse map of
        the deeper stages only). EfficientNet-Lite0's stages are one level coarser (levels 0,
        1, 2 at strides 4, 8, 16).
    head_channels, head_convs : lesion locators only: width of the pyramid head and its number
        of 3x3 convolution + norm + ReLU layers (default 16 and 1: a light head; a wider, deeper
        one gives the lesion outline more capacity of its own).
    head_decoder : lesion locators only: ``"sum"`` (default: the stages, projected to
        ``head_channels``, are resized to the finest level and added, as a light feature pyramid)
        or ``"unet"`` (a top-down decoder as in U-Net: from the coarsest stage, each level is
        up-sampled, added to the next finer stage and passed through a 3x3 convolution + norm +
        ReLU, so the outline is refined one scale at a time).
    head_refine : lesion locators only: width of a refinement at the input resolution (0, the
        default: none). The decoder output, up-sampled to the input grid and stacked with the
        input image, passes a 3x3 convolution + norm + ReLU and a 1x1 convolution (initialised
        to zero) whose output is added to the head's up-sampled logits, so that an outline can
        follow image edges finer than the head's level.
    arch : ``"resnet"`` (default: the MONAI ``ResNet`` above) or ``"efficientnet_lite0"`` (2D
        only: :class:`~BINDSLib.model.efficientnet.EfficientNetLite0`, a fixed architecture that
        can start from ImageNet weights, see the training setting ``pretrained``; ``layers``,
        ``channels``, ``stem_kernel`` and ``max_pool`` do not apply to it).
    frozen_blocks : ``efficientnet_lite0`` only: the stem and this many first blocks are not
        trained (0-16; 3 keeps the pretrained stride-2 and stride-4 blocks as they are).
    """

    layers: tuple[int, ...] = (1, 1, 1, 1)
    channels: tuple[int, ...] = (8, 16, 32, 64)
    stem_kernel: int = 7
    max_pool: bool = False
    norm: str = "batch"
    norm_groups: int = 4
    head_level: int = 1
    head_channels: int = 16
    head_convs: int = 1
    head_decoder: str = "sum"
    head_refine: int = 0
    arch: str = "resnet"
    frozen_blocks: int = 0

    def __post_init__(self):
        _check_field_types(self)
        object.__setattr__(self, "layers", _tuple(self.layers, 4, "layers"))
        if self.arch not in ("resnet", "efficientnet_lite0"):
            raise ValueError(f"arch must be 'resnet' or 'efficientnet_lite0', not {self.arch!r}")
        if self.arch == "efficientnet_lite0" and self.norm != "batch":
            raise ValueError("efficientnet_lite0 needs norm 'batch' (its pretrained BatchNorm layers)")
        if not 0 <= self.frozen_blocks <= 16 or (self.frozen_blocks and self.arch != "efficientnet_lite0"):
            raise ValueError(f"frozen_blocks must be 0 (resnet) or 0-16 (efficientnet_lite0), "
                             f"not {self.frozen_blocks!r}")
        object.__setattr__(self, "channels", _tuple(self.channels, 4, "channels"))
        if min(self.layers) < 1 or min(self.channels) < 1:
            raise ValueError("encoder layers and channels must be positive")
        if self.head_level not in (0, 1, 2):
            raise ValueError(f"head_level must be 0, 1 or 2, not {self.head_level!r}")
        if self.head_channels < 1 or self.head_convs < 1:
            raise ValueError("head_channels and head_convs must be positive")
        if self.head_refine < 0:
            raise ValueError(f"head_refine must be >= 0, not {self.head_refine!r}")
        if self.norm == "group" and self.head_refine % self.norm_groups:
            raise ValueError(f"head_refine {self.head_refine} must be divisible by norm_groups "
                             f"{self.norm_groups}")
        if self.head_decoder not in ("sum", "unet"):
            raise ValueError(f"head_decoder must be 'sum' or 'unet', not {self.head_decoder!r}")
        if self.norm == "group" and self.head_channels % self.norm_groups:
            raise ValueError(f"head_channels {self.head_channels} must be divisible by norm_groups "
                             f"{self.norm_groups}")
        if self.norm not in ("group", "batch"):
            raise ValueError(f"norm must be 'group' or 'batch', not {self.norm!r}")
        if self.norm == "group" and any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be divisible by norm_groups {self.norm_groups}")

    @property
    def norm_layer(self):
        """The MONAI ``norm`` argument."""
        return ("group", {"num_groups": self.norm_groups}) if self.norm == "group" else "batch"

    @property
    def stride(self) -> int:
        """Total down-sampling of the last feature map."""
        return 32 if self.max_pool else 16


@dataclass(frozen=True)
class RefinerConfig:
    """The lesion outline refiner (:mod:`~.refiner`): a 2D MONAI ``UNet`` that redraws the
    predicted lesion on the image's own pixels, from a square crop around it.

    Attributes
    ----------
    modalities : 2D modalities whose lesions are refined (``("US",)``; ``"MG"`` allowed).
    size : side of the crop fed to the U-Net (pixels).
    channels : U-Net widths per level (stride 2 between levels); res_units : residual units
        per level (MONAI ``num_res_units``).
    box_scale, box_pad : the crop is a square of side ``box_scale`` x the largest extent of
        the predicted lesion plus ``box_pad`` pixels (of the image's finer axis), in
        millimetres, centred on the lesion's box.
    flip : average with the left-right mirrored crop (test-time augmentation).
    """

    modalities: tuple[str, ...] = ("US",)
    size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    res_units: int = 1
    box_scale: float = 1.5
    box_pad: float = 8.0
    flip: bool = True

    def __post_init__(self):
        _check_field_types(self)
        mods = (self.modalities,) if isinstance(self.modalities, str) else self.modalities
        object.__setattr__(self, "modalities", tuple(str(m).upper() for m in mods))
        object.__setattr__(self, "channels", _tuple(self.channels, None, "channels"))
        if not self.modalities or any(m not in ("US", "MG") for m in self.modalities):
            raise ValueError(f"lesion_refiner modalities must be US and/or MG, not {list(self.modalities)}")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError("lesion_refiner channels need at least two positive widths")
        if self.size < 16 or self.size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"lesion_refiner size {self.size} must be >= 16 and divisible by "
                             f"{2 ** (len(self.channels) - 1)} (one halving per level)")
        if self.res_units < 0 or self.box_scale < 1.0 or self.box_pad < 0:
            raise ValueError("lesion_refiner needs res_units >= 0, box_scale >= 1 and box_pad >= 0")


@dataclass(frozen=True)
class DiagnosisConfig:
    """Network and input settings of a diagnosis model.

    Attributes
    ----------
    preset : name of the preset the settings started from (informational).
    mg_size, us_size : ``(rows, cols)`` of each prepared MG view / US image (aspect kept,
        padded). mr_size : ``(slices, rows, cols)`` of the stacked MRI volume.
    mg_crop, us_crop, mr_crop : size of the lesion-focused crop fed to the classifier encoder.
    mg_max_views, us_max_images : slots per study (extra images are ignored, with a note;
        images with a lesion mask are kept first).
    mg_fit : what a mammogram's model grid covers: ``"image"`` (default, the whole image) or
        ``"breast"`` (the breast's bounding box, :func:`~.preprocess.breast_box`: on film or
        with a wide detector the breast then fills the grid, at a finer spacing).
    mg_views : MG views to keep first when a study has more than ``mg_max_views``, most
        preferred first (``("MLO",)`` for a bundle trained on MLO views only); empty: slot
        order (L before R, CC before MLO).
    mg_select : among films of equal preference, ``"order"`` (default) keeps slot order;
        ``"finding"`` keeps the most suspicious: each film is first encoded alone and ranked by
        its finding logit (compared with the other breast when ``bilateral_weight`` > 0), so a
        one-slot bundle reads the breast with the finding, not always the left one. A film the
        user outlined still comes first. Inference only (training fills slots in order).
    unsided : 2D modalities (``"MG"``, ``"US"``) read without their side: the bundle's
        training images of that modality had none (BUSI ultrasound), so its left and right
        side embeddings are untrained and every image is read as of unknown side, as in
        training. ``binds train`` sets it from the training data.
    locator_2d, locator_3d : backbones of the lesion localisers (feature map, context token,
        lesion probability map). classifier_2d, classifier_3d : backbones encoding the crops.
    locator_mg : the mammography branch's own locator backbone (default ``None``: MG and US
        share ``locator_2d``); a bundle trained on one 2D modality can thus give that one a
        large pretrained encoder without the other carrying a copy of it.
    embed_dim : width of the fusion tokens; fusion_layers / fusion_heads : transformer size.
    evidence_fusion : add the learned-weighted per-modality (auxiliary head) logits of the
        present modalities to the fused malignancy logit.
    dropout : dropout inside the fusion transformer and before the heads.
    align_dim : width of the radiology-pathology alignment space.
    pathology_hidden : hidden width of the pathology encoder. wsi_dim : length of optional
        whole-slide feature vectors (0: not used).
    crop_margin : margin added on each side of the lesion box, as a fraction of its size.
    crop_min_fraction : smallest crop side, as a fraction of the image side.
    lesion_threshold : probability above which a pixel belongs to the predicted lesion.
    intensity_percentiles : (low, high) percentiles of each image mapped to 0 and 1.
    saliency_lesion_gate : multiply the saliency map by the model's lesion probability
        (saliency then highlights the malignancy-aligned evidence *inside* the lesion the model
        found; without pathology records in training the alignment term is flat and the map is
        the lesion probability). Default off (the plain alignment / Grad-CAM saliency).
    tta_flip : at inference, also encode the left-right mirrored US images and average the
        malignancy logits and lesion maps with the unflipped ones (test-time augmentation;
        about twice the US encoder time). Default off.
    lesion_mask_mode : how the predicted lesion mask is drawn from the lesion probability on
        the image grid: ``"threshold"`` (default: ``p >= lesion_threshold``) or
        ``"peak_component"`` (the connected region around the probability maximum, at
        ``min(lesion_threshold, max(0.5 * peak, 0.2))``; empty when the peak is below 0.2):
        one lesion per image, with fewer missed faint lesions and no scattered false blobs.
    lesion_prior : initial lesion probability of the locators' output (bias of their last
        layer, as RetinaNet's prior): small lesions in large images (MG, MRI) start from "no
        lesion" instead of 0.5, which a from-scratch locator otherwise spends its first
        hundreds of steps unlearning. ``None`` (default): PyTorch's default initialisation.
        Only training depends on it.
    finding_cell, finding_topk : the image-level finding score (abnormal vs normal; reported
        as ``finding_probability``) is the mean of the ``finding_topk`` largest cells of the
        lesion logit map averaged over ``finding_cell``-pixel cells
        (:func:`~.network.finding_logits`); trained when ``train.loss_weights.finding`` > 0.
    bilateral_weight : at inference, a mammogram's finding logit ``f`` becomes
        ``f - bilateral_weight * (c - r)`` where ``c`` is the other breast's finding logit (the
        mean over that breast's films of the same view, else of any view, from the study's
        images or its ``comparison`` images) and ``r`` the bundle's
        ``calibration.finding_reference`` (the logit of a typical unremarkable breast): what
        both breasts share (density, film, processing) is discounted, as a reader compares
        left with right. ``0`` (default): off. A mammogram without the other breast keeps ``f``.
    lesion_refiner : a :class:`RefinerConfig` (JSON: its fields, ``{}`` for the defaults) to
        redraw the predicted lesion of 2D images at the image's own resolution, trained in a
        stage of its own after the network (``train.refiner``); ``None`` (default): the
        locator's map, up-sampled, is the outline.
    """

    preset: str = "demo"
    mg_size: tuple[int, int] = (160, 128)
    us_size: tuple[int, int] = (128, 128)
    mr_size: tuple[int, int, int] = (24, 64, 128)
    mg_crop: tuple[int, int] = (64, 64)
    us_crop: tuple[int, int] = (64, 64)
    mr_crop: tuple[int, int, int] = (16, 32, 32)
    mg_max_views: int = 4
    us_max_images: int = 2
    mg_views: tuple[str, ...] = ()
    unsided: tuple[str, ...] = ()
    mg_fit: str = "image"
    mg_select: str = "order"
    locator_2d: EncoderConfig = field(default_factory=EncoderConfig)
    locator_3d: EncoderConfig = field(default_factory=lambda: EncoderConfig(stem_kernel=3))
    classifier_2d: EncoderConfig = field(default_factory=EncoderConfig)
    classifier_3d: EncoderConfig = field(default_factory=lambda: EncoderConfig(stem_kernel=3))
    locator_mg: EncoderConfig | None = None
    embed_dim: int = 64
    fusion_layers: int = 2
    fusion_heads: int = 4
    evidence_fusion: bool = True
    dropout: float = 0.1
    align_dim: int = 32
    pathology_hidden: int = 64
    wsi_dim: int = 0
    crop_margin: float = 0.25
    crop_min_fraction: float = 0.15
    lesion_threshold: float = 0.5
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    saliency_lesion_gate: bool = False
    tta_flip: bool = False
    lesion_mask_mode: str = "threshold"
    lesion_prior: float | None = None
    lesion_refiner: RefinerConfig | None = None
    finding_cell: int = 16
    finding_topk: int = 4
    bilateral_weight: float = 0.0

    def __post_init__(self):
        _check_field_types(self)
        for name, n in (("mg_size", 2), ("us_size", 2), ("mr_size", 3), ("mg_crop", 2),
                        ("us_crop", 2), ("mr_crop", 3)):
            object.__setattr__(self, name, _tuple(getattr(self, name), n, name))
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1 in every axis, not {list(getattr(self, name))}")
        views = (self.mg_views,) if isinstance(self.mg_views, str) else self.mg_views
        object.__setattr__(self, "mg_views", tuple(str(v).upper() for v in views))
        bad = [v for v in self.mg_views if v not in MG_VIEWS]
        if bad:
            raise ValueError(f"mg_views {bad} are not mammography views ({', '.join(MG_VIEWS)})")
        unsided = (self.unsided,) if isinstance(self.unsided, str) else self.unsided
        if not isinstance(unsided, (list, tuple)) or any(str(m).upper() not in ("MG", "US") for m in unsided):
            raise ValueError(f"unsided must list 2D modalities (MG, US), not {self.unsided!r}")
        object.__setattr__(self, "unsided", tuple(sorted({str(m).upper() for m in unsided})))
        object.__setattr__(self, "intensity_percentiles",
                           _tuple(self.intensity_percentiles, 2, "intensity_percentiles", float))
        lo, hi = self.intensity_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"intensity_percentiles must be (low, high) with 0 <= low < high <= 100, "
                             f"not {list(self.intensity_percentiles)}")
        for name in ("locator_2d", "locator_3d", "classifier_2d", "classifier_3d", "locator_mg"):
            v = getattr(self, name)
            if isinstance(v, dict):
                object.__setattr__(self, name, EncoderConfig(**v))
            elif not (isinstance(v, EncoderConfig) or (v is None and name == "locator_mg")):
                raise ValueError(f"{name} must be an object of encoder settings, not {v!r}")
        for name, low in (("embed_dim", 1), ("fusion_layers", 1), ("fusion_heads", 1), ("align_dim", 1),
                          ("pathology_hidden", 1), ("wsi_dim", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, not {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout!r}")
        for name in ("locator_3d", "classifier_3d"):
            if getattr(self, name).arch != "resnet":
                raise ValueError(f"{name}: the 3D encoders are ResNets (arch 'resnet')")
        if isinstance(self.lesion_refiner, dict):
            object.__setattr__(self, "lesion_refiner", RefinerConfig(**self.lesion_refiner))
        elif self.lesion_refiner is not None and not isinstance(self.lesion_refiner, RefinerConfig):
            raise ValueError("lesion_refiner must be an object of refiner settings or null")
        if self.embed_dim % self.fusion_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by fusion_heads "
                             f"{self.fusion_heads}")
        for name in ("mg_size", "us_size"):
            if min(getattr(self, name)) < 32:
                raise ValueError(f"{name} must be at least 32 x 32")
        if min(self.mr_size) < 8:
            raise ValueError("mr_size must be at least 8 in every axis")
        if self.mg_max_views < 1 or self.us_max_images < 1:
            raise ValueError("mg_max_views and us_max_images must be >= 1")
        if self.lesion_prior is not None and not 0.0 < self.lesion_prior < 1.0:
            raise ValueError("lesion_prior must be in (0, 1) or null")
        if self.lesion_mask_mode not in ("threshold", "peak_component"):
            raise ValueError("lesion_mask_mode must be 'threshold' or 'peak_component'")
        if int(self.finding_cell) < 1 or int(self.finding_topk) < 1:
            raise ValueError("finding_cell and finding_topk must be >= 1")
        if not 0.0 <= float(self.bilateral_weight) <= 1.0:
            raise ValueError(f"bilateral_weight must be in [0, 1], not {self.bilateral_weight!r}")
        if self.mg_select not in MG_SELECTS:
            raise ValueError(f"mg_select must be one of {MG_SELECTS}, not {self.mg_select!r}")
        if self.mg_fit not in MG_FITS:
            raise ValueError(f"mg_fit must be one of {MG_FITS}, not {self.mg_fit!r}")
        if not 0.0 < self.lesion_threshold < 1.0:
            raise ValueError("lesion_threshold must be in (0, 1)")

    def locator_for(self, modality: str) -> EncoderConfig:
        """The locator settings of ``modality``'s branch (``locator_mg`` for MG when set)."""
        if modality == "MR":
            return self.locator_3d
        if modality == "MG" and self.locator_mg is not None:
            return self.locator_mg
        return self.locator_2d

    @property
    def channels_last_2d(self) -> bool:
        """Whether the 2D branches should run channels-last on the CPU too: an EfficientNet
        locator (depthwise convolutions) trains 1.3-1.7x faster so on 2 cores (a step on a
        batch of 8 at 448 x 320: 1.7x with every block trained, 1.3x with the first 3 frozen);
        the ResNets gain nothing."""
        return any(self.locator_for(m).arch == "efficientnet_lite0" for m in ("MG", "US"))

    # -- JSON form -------------------------------------------------------------------------
    def to_json(self) -> dict:
        """Plain JSON-serialisable dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: dict) -> "DiagnosisConfig":
        """Inverse of :meth:`to_json`; ``{"preset": NAME, ...}`` starts from a preset.

        Raises ``ValueError`` on unknown fields.
        """
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        base = preset(d.get("preset", "demo"))
        for name in ("locator_2d", "locator_3d", "classifier_2d", "classifier_3d"):
            if name in d and isinstance(d[name], dict):
                d[name] = dataclasses.replace(getattr(base, name), **d[name])
        return dataclasses.replace(base, **d)


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def preset(name: str) -> DiagnosisConfig:
    """The named preset (``demo`` or ``paper``)."""
    if name == "demo":
        return DiagnosisConfig()
    if name == "paper":
        resnet18 = EncoderConfig(layers=(2, 2, 2, 2), channels=(64, 128, 256, 512), max_pool=True)
        # the MRI locator only finds the lesion on the whole 96 x 192 x 192 grid: a 3^3 stem
        # (as the demo preset's locators, measured there) instead of ResNet-18's 7^3 one, which
        # alone cost 136 of the study's 362 GFLOP; the crop encoders stay ResNet-18
        return DiagnosisConfig(
            preset="paper", mg_size=(512, 416), us_size=(320, 320), mr_size=(96, 192, 192),
            mg_crop=(224, 224), us_crop=(224, 224), mr_crop=(96, 96, 96),
            locator_2d=resnet18, locator_3d=dataclasses.replace(resnet18, stem_kernel=3),
            classifier_2d=resnet18,
            classifier_3d=resnet18, embed_dim=512, fusion_layers=6, fusion_heads=8,
            dropout=0.1, align_dim=256, pathology_hidden=256)
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(_PRESETS)}")
