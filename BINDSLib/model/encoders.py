"""Per-modality image encoders built from MONAI networks (one class for 2D and 3D).

* :class:`Backbone` - the stages of a MONAI ``ResNet`` (``spatial_dims`` 2 or 3) returning
  the multi-scale feature maps.
* :class:`LesionLocator` - backbone + a light feature-pyramid head: a lesion logit map at the
  input resolution, the last feature map (for alignment and saliency) and a pooled context
  vector of the whole image.
* :class:`CropClassifier` - backbone + global pooling: the feature vector of a lesion crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import ResNet
from torch import nn

from .config import EncoderConfig


class Backbone(nn.Module):
    """MONAI ``ResNet`` stages (basic blocks) as a multi-scale feature extractor.

    With ``layers (2, 2, 2, 2)`` and ``channels (64, 128, 256, 512)`` this is
    ``monai.networks.nets.resnet18``. Input ``(N, C, *spatial)``; output the feature maps of
    the four stages, strides 2, 4, 8, 16 (x2 with ``max_pool``).
    """

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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        feats = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            feats.append(x)
        return feats


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
    ``head_convs``: its width and depth).

    Forward ``x (N, C, *spatial)`` returns ``(logits, features, context)``: lesion logits
    ``(N, 1, *spatial)`` at the input resolution, the last feature map
    ``(N, F, *spatial / stride)`` and the pooled context vector ``(N, F)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, config: EncoderConfig):
        super().__init__()
        self.backbone = Backbone(spatial_dims, in_channels, config)
        conv = Conv[Conv.CONV, spatial_dims]
        c = self.backbone.channels
        self.head_level = config.head_level
        hc = config.head_channels
        self.lateral = nn.ModuleList([conv(ch, hc, kernel_size=1) for ch in c[self.head_level:]])
        layers = []
        for _ in range(config.head_convs):
            layers += [conv(hc, hc, kernel_size=3, padding=1, bias=False),
                       get_norm_layer(config.norm_layer, spatial_dims, hc), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*layers, conv(hc, 1, kernel_size=1))
        self.out_channels = c[-1]

    def forward(self, x: torch.Tensor):
        feats = self.backbone(x)
        size = feats[self.head_level].shape[2:]
        p = sum(_resize(lat(f), size) if f.shape[2:] != size else lat(f)
                for lat, f in zip(self.lateral, feats[self.head_level:]))
        logits = _resize(self.head(p), x.shape[2:])
        last = feats[-1]
        return logits, last, _pool(last)


class CropClassifier(nn.Module):
    """Encoder of lesion crops: ``(N, C, *crop)`` -> pooled features ``(N, F)``."""

    def __init__(self, spatial_dims: int, in_channels: int, config: EncoderConfig):
        super().__init__()
        self.backbone = Backbone(spatial_dims, in_channels, config)
        self.out_channels = config.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pool(self.backbone(x)[-1])
