"""The pathology encoder (training only): a pathology record to an embedding.

The record (:class:`~BINDSLib.study.Pathology`: malignancy, histology, grade, ER, PR, HER2,
Ki-67) becomes a fixed-length feature vector (:func:`pathology_features`); optional
whole-slide feature vectors (``.npy`` from any pathology foundation model) are projected and
added. The encoder is trained by its own heads (malignancy and subtype from the embedding) so
that the embedding stays informative; image features are pulled toward it with the gradient
stopped on the pathology side (see :mod:`.losses`).

It also keeps running prototypes (EMA of the normalised embeddings of malignant and of
benign records seen in training, buffers saved with the weights): the malignant prototype is
the "malignancy-related pathology embedding" of the alignment saliency at inference, when no
pathology is available.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..study import Pathology
from .config import SUBTYPES

#: Histology groups (matched by keywords, case-insensitive, first match wins: benign mimics
#: and in-situ disease before invasive types) of the one-hot histology feature.
HISTOLOGY_GROUPS = {
    "fibroadenoma": ("fibroadenoma",),
    "papilloma": ("papilloma",),
    "cyst_fibrocystic": ("cyst", "fibrocystic"),
    "other_benign": ("benign", "adenosis", "hyperplasia", "lipoma", "hamartoma", "mastitis",
                     "phyllodes", "necrosis", "radial scar"),
    "in_situ": ("in situ", "dcis", "lcis"),
    "invasive_lobular": ("lobular", "ilc"),
    "invasive_ductal": ("ductal", "idc", "nst", "no special type"),
    "other_malignant": ("carcinoma", "malignan", "sarcoma"),
}
_HIST = tuple(HISTOLOGY_GROUPS) + ("unknown",)
#: Names of the entries of :func:`pathology_features`, in order.
FEATURE_NAMES = (
    ("malignant",)
    + tuple(f"histology_{h}" for h in _HIST)
    + tuple(f"grade_{g}" for g in ("1", "2", "3", "unknown"))
    + ("er_fraction", "er_unknown", "pr_fraction", "pr_unknown")
    + tuple(f"her2_score_{s}" for s in ("0", "1", "2", "3", "unknown"))
    + ("her2_positive", "her2_unknown", "ki67_fraction", "ki67_unknown")
)


def histology_group(text: str | None) -> str:
    """The :data:`HISTOLOGY_GROUPS` key of a free-text histology (``"unknown"`` if none)."""
    if not text:
        return "unknown"
    t = text.lower().replace("_", " ")
    for group, words in HISTOLOGY_GROUPS.items():
        if any(w in t for w in words):
            return group
    return "unknown"


def pathology_features(p: Pathology) -> np.ndarray:
    """The feature vector ``(len(FEATURE_NAMES),)`` float32 of a pathology record.

    Fractions are percent / 100; unknown values are 0 with their ``*_unknown`` flag set.
    """
    f = dict.fromkeys(FEATURE_NAMES, 0.0)
    f["malignant"] = float(bool(p.malignant))
    f[f"histology_{histology_group(p.histology)}"] = 1.0
    f[f"grade_{p.grade if p.grade in (1, 2, 3) else 'unknown'}"] = 1.0
    for name, v in (("er", p.er_percent), ("pr", p.pr_percent), ("ki67", p.ki67_percent)):
        if v is None:
            f[f"{name}_unknown"] = 1.0
        else:
            f[f"{name}_fraction"] = float(np.clip(v, 0, 100)) / 100.0
    f[f"her2_score_{p.her2_score if p.her2_score in (0, 1, 2, 3) else 'unknown'}"] = 1.0
    pos = p.her2_positive
    if pos is None:
        f["her2_unknown"] = 1.0
    else:
        f["her2_positive"] = float(pos)
    return np.array([f[k] for k in FEATURE_NAMES], np.float32)


class PathologyEncoder(nn.Module):
    """Pathology record (+ optional whole-slide features) to an alignment embedding.

    Forward ``features (B, P)``, optional ``wsi (B, W)`` with ``wsi_present (B,)`` returns
    ``(embedding (B, A), malignancy_logit (B,), subtype_logits (B, 4))``.
    """

    def __init__(self, align_dim: int, hidden: int, wsi_dim: int = 0, momentum: float = 0.99):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(len(FEATURE_NAMES), hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU())
        self.wsi = nn.Linear(wsi_dim, hidden) if wsi_dim > 0 else None
        self.out = nn.Linear(hidden, align_dim)
        self.malignancy_head = nn.Linear(align_dim, 1)
        self.subtype_head = nn.Linear(align_dim, len(SUBTYPES))
        self.momentum = momentum
        self.register_buffer("prototype_malignant", torch.zeros(align_dim))
        self.register_buffer("prototype_benign", torch.zeros(align_dim))
        self.register_buffer("prototype_counts", torch.zeros(2))

    def forward(self, features: torch.Tensor, wsi: torch.Tensor | None = None,
                wsi_present: torch.Tensor | None = None):
        h = self.mlp(features)
        if self.wsi is not None and wsi is not None:
            w = self.wsi(wsi)
            if wsi_present is not None:
                w = w * wsi_present[:, None].to(w.dtype)
            h = h + w
        z = self.out(h)
        return z, self.malignancy_head(z)[:, 0], self.subtype_head(z)

    @torch.no_grad()
    def update_prototypes(self, embedding: torch.Tensor, malignant: torch.Tensor) -> None:
        """EMA update of the prototypes with normalised embeddings ``(B, A)`` of records with
        ``malignant (B,)`` in {0, 1} (the first batch initialises them)."""
        z = F.normalize(embedding.detach().float(), dim=1)
        for k, (buf, sel) in enumerate(((self.prototype_malignant, malignant > 0.5),
                                        (self.prototype_benign, malignant <= 0.5))):
            if not bool(sel.any()):
                continue
            mean = z[sel].mean(0)
            m = self.momentum if float(self.prototype_counts[k]) > 0 else 0.0
            buf.mul_(m).add_((1 - m) * mean)
            self.prototype_counts[k] += int(sel.sum())

    @property
    def has_prototype(self) -> bool:
        return float(self.prototype_counts[0]) > 0
