"""Alignment-based feature saliency, and Grad-CAM of the same score (``monai.visualize``).

Alignment saliency: at each location of an image's last feature map, the cosine similarity
between the projected feature (the radiology-pathology alignment space) and the malignancy
-related pathology embedding (the malignant prototype kept by the pathology encoder), upsampled
to the model grid. Values are in [-1, 1]: high where the image looks like malignant pathology.

Grad-CAM (optional): :class:`monai.visualize.GradCAM` of the image's alignment score (the
spatial mean of the same cosine map) with respect to the locator's last stage; values in
[0, 1] (MONAI's min-max normalisation per image).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .network import ModalityBranch

METHODS = ("alignment", "gradcam")


def alignment_map(features: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each location of ``features (N, A, *f)`` with ``prototype (A,)``.

    Returns ``(N, 1, *f)``.
    """
    p = prototype.to(features.dtype).view(1, -1, *[1] * (features.ndim - 2))
    return F.cosine_similarity(features, p, dim=1, eps=1e-8)[:, None]


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """``(N, 1, *f)`` to ``(N, 1, *size)`` (bi/trilinear, ``align_corners=False``)."""
    mode = "bilinear" if maps.ndim == 4 else "trilinear"
    return F.interpolate(maps.float(), size=tuple(size), mode=mode, align_corners=False)


def alignment_saliency(align_map: torch.Tensor, prototype: torch.Tensor, size) -> torch.Tensor:
    """Alignment saliency ``(N, 1, *size)`` from projected features ``(N, A, *f)``."""
    return upsample(alignment_map(align_map, prototype), size)


def on_support(saliency: torch.Tensor, support, slots: torch.Tensor) -> torch.Tensor:
    """``saliency (N, 1, *grid)`` set to 0 outside ``support`` (bool ``(S, 1, *grid)``, per
    input slot, e.g. :func:`~.preprocess.breast_support`; the lesion head's maps, hence the
    saliency, are on the model grid); row ``n`` is of slot ``slots[n]``."""
    return saliency * torch.as_tensor(support[slots.cpu().numpy()], device=saliency.device)


class _AlignmentScore(nn.Module):
    """``x (N, C, *spatial)`` -> alignment score ``(N, 1)`` of one modality branch."""

    def __init__(self, branch: ModalityBranch, prototype: torch.Tensor):
        super().__init__()
        # copies: MONAI's GradCAM registers hooks it never removes
        self.locator = copy.deepcopy(branch.locator)
        self.align = copy.deepcopy(branch.align)
        self.register_buffer("prototype", prototype.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, feats, _ = self.locator(x)
        return alignment_map(self.align(feats), self.prototype).flatten(1).mean(1, keepdim=True)


def gradcam_saliency(branch: ModalityBranch, images: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``(N, 1, *spatial)`` in [0, 1] of the alignment score of ``images``."""
    from monai.visualize import GradCAM

    wrapper = _AlignmentScore(branch, prototype).to(images.device)
    cam = GradCAM(nn_module=wrapper, target_layers=f"locator.backbone.{branch.locator.backbone.cam_layer}")
    with torch.enable_grad():
        out = cam(x=images.detach().float().requires_grad_(True), class_idx=0)
    return out.detach()
