"""Per-modality image encoders built from MONAI networks (one class for 2D and 3D).

* :class:`Backbone` - the stages of a MONAI ``ResNet`` (``spatial_dims`` 2 or 3) returning
  the multi-scale feature maps.
* :func:`make_backbone` - that ``Backbone``, or for ``arch: efficientnet_lite0`` the 2D
  :class:`~BINDSLib.model.efficientnet.EfficientNetLite0` (strides 4, 8, 16, 32).
* :class:`LesionLocator` - backbone + a feature-pyramid head (summed, or a U-Net-like
  top-down decoder): a lesion logit map at the input resolution, the last feature map (for
  alignment and saliency) and a pooled context vector of the whole image.
* :class:`CropClassifier` - backbone + global pooling: the feature vector of a lesion crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import ResNet
from torch import nn

from ..fusedconv import channels_last, conv_act, eligible
from .config import EncoderConfig


def make_backbone(spatial_dims: int, in_channels: int, config: EncoderConfig) -> nn.Module:
    """The backbone ``config.arch`` names: a multi-scale feature extractor with ``channels``."""
    if config.arch == "efficientnet_lite0":
        if spatial_dims != 2:
            raise ValueError("efficientnet_lite0 is a 2D backbone")
        from .efficientnet import EfficientNetLite0

        return EfficientNetLite0(in_channels, config.frozen_blocks)
    return Backbone(spatial_dims, in_channels, config)


class Backbone(nn.Module):
    """MONAI ``ResNet`` stages (basic blocks) as a multi-scale feature extractor.

    With ``layers (2, 2, 2, 2)`` and ``channels (64, 128, 256, 512)`` this is
    ``monai.networks.nets.resnet18``. Input ``(N, C, *spatial)``; output the feature maps of
    the four stages, strides 2, 4, 8, 16 (x2 with ``max_pool``).
    """

    #: Grad-CAM's target layer, under the backbone
    cam_layer = "net.layer4"

    def __init__(self, spatial_dims: int, in_channels: int, config: EncoderConfig):
        super().__init__()
        self.net = ResNet(block="basic", layers=list(config.layers),
                          block_inplanes=list(config.channels), spatial_dims=spatial_dims,
                          n_input_channels=in_channels, conv1_t_size=config.stem_kernel,
                          conv1_t_stride=2, no_max_pool=not config.max_pool, feed_forward=False,
                          norm=config.norm_layer)
        if config.norm != "batch":
            _replace_batch_norm(self.net, config, spatial_dims)
        self.channels = tuple(config.channels)
        self.fused = False  #: set by :meth:`fuse_for_inference`

    def _blocks(self):
        n = self.net
        return [b for layer in (n.layer1, n.layer2, n.layer3, n.layer4) for b in layer]

    def fuse_for_inference(self) -> bool:
        """Run each convolution with its ReLU (and a block's residual sum) as one call
        (:func:`~BINDSLib.fusedconv.conv_act`), with channels-last weights and activations.

        Only once every norm layer has been folded into its convolution
        (:meth:`~BINDSLib.model.network.DiagnosisNetwork.fold_batch_norm` leaves ``Identity``);
        returns whether the backbone is fused. Used on the CPU without autograd or autocast (a
        GPU, autocast and Grad-CAM keep the module path); the outputs are the same up to float
        rounding.
        """
        n = self.net

        def folded(*modules):
            return all(isinstance(m, nn.Identity) for m in modules)

        ok = folded(n.bn1) and isinstance(n.act, nn.ReLU) and all(
            folded(b.bn1, b.bn2) and isinstance(b.act, nn.ReLU)
            and (b.downsample is None or (isinstance(b.downsample, nn.Sequential)
                                          and len(b.downsample) == 2 and folded(b.downsample[1])))
            for b in self._blocks())
        if ok:
            for conv in self.modules():
                if isinstance(conv, nn.modules.conv._ConvNd):
                    conv.weight.data = conv.weight.data.contiguous(
                        memory_format=channels_last(conv.weight.dim()))
        self.fused = ok
        return ok

    def _forward_fused(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net

        def run(conv, t, relu, residual=None, padding=None):
            return conv_act(t, conv.weight, conv.bias, conv.stride,
                            conv.padding if padding is None else padding, conv.dilation,
                            conv.groups, relu, residual)

        x = x.contiguous(memory_format=channels_last(x.ndim))
        if not n.no_max_pool and _stem_bytes(n.conv1, x) > STEM_SLAB_BYTES and _slab_poolable(n.maxpool):
            x = _stem_in_slabs(lambda t, pad: run(n.conv1, t, True, padding=pad), n.conv1, n.maxpool, x)
        else:
            x = run(n.conv1, x, True)
            if not n.no_max_pool:
                x = n.maxpool(x)
        feats = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            for b in layer:
                identity = run(b.downsample[0], x, False) if b.downsample is not None else x
                x = run(b.conv2, run(b.conv1, x, True), True, identity)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.fused and eligible(x):
            return self._forward_fused(x)  # elsewhere the modules (autocast, autograd) as usual
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        feats = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            feats.append(x)
        return feats


#: Above this size (bytes) the stem's output is computed and max-pooled in slabs along the
#: first spatial axis (fused inference path): the paper preset's MRI locator stem alone is
#: 108 MiB, its pooled output 13.5 MiB.
STEM_SLAB_BYTES = 32 * 2**20


def _tuple(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _conv_sizes(conv, x: torch.Tensor) -> list[int]:
    """Spatial sizes of ``conv``'s output for input ``x``."""
    nd = x.ndim - 2
    k, s, p, d = (_tuple(getattr(conv, a), nd) for a in ("kernel_size", "stride", "padding", "dilation"))
    return [max((x.shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1, 0) for i in range(nd)]


def _stem_bytes(conv, x: torch.Tensor) -> int:
    """Bytes of ``conv``'s output for input ``x``."""
    n = x.shape[0] * conv.out_channels * x.element_size()
    for size in _conv_sizes(conv, x):
        n *= size
    return n


def _slab_poolable(pool) -> bool:
    return (isinstance(pool, (nn.MaxPool2d, nn.MaxPool3d)) and not pool.ceil_mode
            and all(v == 1 for v in _tuple(pool.dilation, 3)))


def _stem_in_slabs(conv_relu, conv, pool, x: torch.Tensor) -> torch.Tensor:
    """``pool(relu(conv(x)))`` computed in slabs along the first spatial axis, so that the
    stem's full-resolution output never exists at once (only one slab of it plus the pooled
    result). The same values as the whole call: each slab gets exactly the input rows (zero
    padding at the image borders) and the convolution rows (``-inf`` padding) it needs.

    ``conv_relu(t, padding)`` runs the stem convolution + ReLU on ``t`` with ``padding``.
    """
    nd = x.ndim - 2
    k, s, p, d = (_tuple(getattr(conv, a), nd) for a in ("kernel_size", "stride", "padding", "dilation"))
    pk, ps, pp = (_tuple(getattr(pool, a), nd) for a in ("kernel_size", "stride", "padding"))
    length = x.shape[2]
    conv_len = _conv_sizes(conv, x)[0]
    pool_len = (conv_len + 2 * pp[0] - pk[0]) // ps[0] + 1
    fmt = channels_last(x.ndim)
    row_bytes = _stem_bytes(conv, x) / max(conv_len, 1)
    step = max(1, int(STEM_SLAB_BYTES // max(row_bytes * ps[0], 1)))  # pooled rows per slab
    pool_fn = F.max_pool3d if nd == 3 else F.max_pool2d
    out = None

    def rows(t, lo, hi, size, value):  # rows [lo, hi) of axis 2, padded with `value` outside [0, size)
        a, b = max(lo, 0), min(hi, size)
        if not (a - lo or hi - b):
            return t[:, :, a:b].contiguous(memory_format=fmt)
        # one copy into the padded slab, in the encoder's layout (F.pad, then a layout change,
        # copied it twice)
        buf = torch.empty((*t.shape[:2], hi - lo, *t.shape[3:]), dtype=t.dtype, device=t.device,
                          memory_format=fmt)
        buf[:, :, :a - lo] = value
        buf[:, :, b - lo:] = value
        buf[:, :, a - lo:b - lo] = t[:, :, a:b]
        return buf

    for a in range(0, pool_len, step):
        b = min(a + step, pool_len)
        lo, hi = a * ps[0] - pp[0], (b - 1) * ps[0] - pp[0] + pk[0]  # the pooling windows' rows
        c0, c1 = max(lo, 0), min(hi, conv_len)  # the convolution rows that exist
        i0, i1 = c0 * s[0] - p[0], (c1 - 1) * s[0] - p[0] + d[0] * (k[0] - 1) + 1
        y = conv_relu(rows(x, i0, i1, length, 0.0), [0, *p[1:]])
        y = pool_fn(rows(y, lo - c0, hi - c0, c1 - c0, float("-inf")), pk, ps, [0, *pp[1:]])
        if out is None:
            out = torch.empty((x.shape[0], y.shape[1], pool_len, *y.shape[3:]), dtype=y.dtype,
                              device=y.device).contiguous(memory_format=fmt)
        out[:, :, a:b] = y
        del y
    return out


def _replace_batch_norm(module: nn.Module, config: EncoderConfig, spatial_dims: int) -> None:
    """Use ``config.norm`` in every block: MONAI's ``ResNet`` passes ``norm`` to its stem only
    and builds the residual blocks with BatchNorm (Project-MONAI/MONAI PR #9028)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, get_norm_layer(config.norm_layer, spatial_dims, child.num_features))
        else:
            _replace_batch_norm(child, config, spatial_dims)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(2)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


class LesionLocator(nn.Module):
    """Lesion localisation encoder.

    Parameters
    ----------
    spatial_dims : 2 or 3. in_channels : input channels (1; 7 for the stacked MRI).
    config : backbone settings (``head_level``: the finest stage in the head; ``head_channels``,
    ``head_convs``: its width and depth; ``head_decoder``: ``"sum"`` adds the projected stages
    at the finest level at once, ``"unet"`` merges them one level at a time from the coarsest,
    with a 3x3 convolution + norm + ReLU after each merge; ``head_refine``: a correction of
    the logits at the input resolution from the up-sampled decoder output and the input).

    Forward ``x (N, C, *spatial)`` returns ``(logits, features, context)``: lesion logits
    ``(N, 1, *spatial)`` at the input resolution, the last feature map
    ``(N, F, *spatial / stride)`` and the pooled context vector ``(N, F)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, config: EncoderConfig):
        super().__init__()
        self.backbone = make_backbone(spatial_dims, in_channels, config)
        conv = Conv[Conv.CONV, spatial_dims]
        c = self.backbone.channels
        self.head_level = config.head_level
        hc = config.head_channels
        self.lateral = nn.ModuleList([conv(ch, hc, kernel_size=1) for ch in c[self.head_level:]])

        def conv_norm_relu():
            return [conv(hc, hc, kernel_size=3, padding=1, bias=False),
                    get_norm_layer(config.norm_layer, spatial_dims, hc), nn.ReLU(inplace=True)]

        # U-Net-like decoder: one merge layer per level below the coarsest, finest first
        self.merge = (nn.ModuleList([nn.Sequential(*conv_norm_relu()) for _ in c[self.head_level:-1]])
                      if config.head_decoder == "unet" else None)
        layers = []
        for _ in range(config.head_convs):
            layers += conv_norm_relu()
        self.head = nn.Sequential(*layers, conv(hc, 1, kernel_size=1))
        self.refine = None  # head_refine: a correction of the logits at the input resolution
        if config.head_refine:
            r = config.head_refine
            last = conv(r, 1, kernel_size=1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.refine = nn.Sequential(conv(hc + in_channels, r, kernel_size=3, padding=1, bias=False),
                                        get_norm_layer(config.norm_layer, spatial_dims, r),
                                        nn.ReLU(inplace=True), last)
        self.out_channels = c[-1]

    def forward(self, x: torch.Tensor):
        feats = self.backbone(x)
        levels = feats[self.head_level:]
        if self.merge is None:
            size = levels[0].shape[2:]
            p = sum(_resize(lat(f), size) if f.shape[2:] != size else lat(f)
                    for lat, f in zip(self.lateral, levels))
        else:
            p = self.lateral[-1](levels[-1])
            for i in range(len(levels) - 2, -1, -1):
                p = self.merge[i](self.lateral[i](levels[i]) + _resize(p, levels[i].shape[2:]))
        logits = _resize(self.head(p), x.shape[2:])
        if self.refine is not None:
            up = _resize(p, x.shape[2:])
            logits = logits + self.refine(torch.cat([up, x.to(up.dtype)], 1))
            del up
        last = feats[-1]
        return logits, last, _pool(last)


class CropClassifier(nn.Module):
    """Encoder of lesion crops: ``(N, C, *crop)`` -> pooled features ``(N, F)``."""

    def __init__(self, spatial_dims: int, in_channels: int, config: EncoderConfig):
        super().__init__()
        self.backbone = make_backbone(spatial_dims, in_channels, config)
        self.out_channels = self.backbone.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool(self.backbone(x)[-1])
