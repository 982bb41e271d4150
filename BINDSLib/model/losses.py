"""Training losses of the diagnosis network.

* malignancy: binary cross-entropy on the fused logit (studies with a known diagnosis; normal
  counts as not malignant) and on each modality's auxiliary logit;
* subtype: cross-entropy on studies with a known molecular subtype;
* lesion localisation: MONAI ``DiceCELoss`` (sigmoid) on images with a known mask;
* finding (abnormal vs normal; weight 0 by default): binary cross-entropy of each modality's
  study-level finding logit - the largest :func:`~.network.finding_logits` of its images -
  against "the study has a finding" (benign or malignant; normal = 0), so that the lesion map
  also learns from images whose finding has no outline;
* pointing (weight 0 by default): on images with a known, non-empty lesion mask, the
  cross-entropy of the spatial softmax of the lesion logit map against the mask,
  ``logsumexp(all) - logsumexp(inside)`` (:func:`pointing_loss`): 0 when the map's mass is all
  inside the lesion, so that its maximum - where the saliency points - falls there;
* radiology-pathology alignment (:func:`alignment_loss`), studies with pathology only:
  ``"cosine3"`` - BINDS's ``(1 - cos)^3`` - or ``"contrastive"`` (InfoNCE with soft targets
  from pathology-pathology similarity, so identical records are not false negatives).
  The pathology side is detached: image features are pulled toward pathology, not the
  reverse. Images whose known mask is empty (the other breast) are left out. A background term keeps features outside the lesion away from the malignant
  prototype (so the alignment saliency peaks on the lesion);
* pathology heads: the pathology encoder predicts malignancy and subtype from its embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

ALIGNMENTS = ("cosine3", "contrastive", "none")
#: Lesion segmentation losses of the locators (MONAI): Dice + cross-entropy, Dice + focal.
SEGMENTATION_LOSSES = ("dicece", "dicefocal")


def cosine_power_loss(image: torch.Tensor, pathology: torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """Mean of ``(1 - cos(image_i, pathology_i)) ** power`` over rows ``(N, A)``."""
    cos = F.cosine_similarity(image.float(), pathology.float(), dim=1, eps=1e-8)
    return ((1 - cos) ** power).mean()


def contrastive_alignment_loss(image: torch.Tensor, pathology: torch.Tensor,
                               temperature: float = 0.1, target_temperature: float = 0.05
                               ) -> torch.Tensor:
    """InfoNCE from image rows to pathology rows ``(N, A)``, with soft targets.

    ``logits = cos(image_i, pathology_j) / temperature``; the target of row ``i`` is
    ``softmax_j(cos(pathology_i, pathology_j) / target_temperature)``, so several studies with
    the same pathology share the target mass. Returns the mean cross-entropy.
    """
    a = F.normalize(image.float(), dim=1)
    p = F.normalize(pathology.float(), dim=1)
    logits = a @ p.T / temperature
    target = torch.softmax(p @ p.T / target_temperature, dim=1)
    return -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()


def alignment_loss(image: torch.Tensor, pathology: torch.Tensor, kind: str = "cosine3",
                   temperature: float = 0.1) -> torch.Tensor:
    """Radiology-pathology alignment of ``image (N, A)`` toward ``pathology (N, A)``.

    The pathology side is detached. ``kind`` is one of :data:`ALIGNMENTS`; zero when N == 0.
    """
    if kind not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, not {kind!r}")
    if image.shape[0] == 0 or kind == "none":
        return image.sum() * 0.0
    pathology = pathology.detach()
    if kind == "cosine3":
        return cosine_power_loss(image, pathology, 3.0)
    return contrastive_alignment_loss(image, pathology, temperature)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (``alignment`` 0.1 as in BINDS)."""

    malignancy: float = 1.0
    auxiliary: float = 0.5
    subtype: float = 0.5
    segmentation: float = 1.0
    alignment: float = 0.1
    background: float = 0.05
    pathology: float = 0.5
    finding: float = 0.0
    pointing: float = 0.0

    @classmethod
    def from_json(cls, d: dict) -> "LossWeights":
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown loss weights {sorted(set(d) - known)}")
        bad = {k: v for k, v in d.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0}
        if bad:
            raise ValueError(f"loss weights must be numbers >= 0, not {bad}")
        return cls(**{k: float(v) for k, v in d.items()})


def pointing_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor | None:
    """Mean over the images whose ``masks`` (``(N, 1, *spatial)``, > 0 is lesion) are not empty
    of ``-log`` of the share of the spatial softmax of ``logits`` (same shape) inside the lesion;
    None when every mask is empty."""
    inside = masks.flatten(1) > 0
    has = inside.any(1)
    if not bool(has.any()):
        return None
    x = logits.flatten(1)[has].float()
    return (x.logsumexp(1) - x.masked_fill(~inside[has], float("-inf")).logsumexp(1)).mean()


def _bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    ok = torch.isfinite(target)
    if not bool(ok.any()):
        return logits.sum() * 0.0
    pw = torch.tensor(pos_weight, device=logits.device, dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(logits[ok].float(), target[ok].float(), pos_weight=pw)


class DiagnosisLoss(nn.Module):
    """All training losses; ``forward(outputs, batch, fusion=True)`` -> ``(total, parts)``.

    ``batch`` needs ``malignant (B,)`` float (NaN unknown), ``subtype (B,)`` long (-1 unknown),
    ``pathology_present (B,)`` bool, and for the finding term ``abnormal (B,)`` float (NaN
    unknown). With ``fusion=False`` (per-modality phase) the fused
    malignancy/subtype/alignment terms are left out.
    """

    def __init__(self, weights: LossWeights = LossWeights(), alignment: str = "cosine3",
                 temperature: float = 0.1, pos_weight: float = 1.0, segmentation: str = "dicece",
                 finding_cell: int = 16, finding_topk: int = 4):
        super().__init__()
        self.finding_cell, self.finding_topk = finding_cell, finding_topk
        from monai.losses import DiceCELoss, DiceFocalLoss

        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, not {alignment!r}")
        self.weights = weights
        self.alignment = alignment
        self.temperature = temperature
        self.pos_weight = pos_weight
        if segmentation not in SEGMENTATION_LOSSES:
            raise ValueError(f"segmentation loss must be one of {SEGMENTATION_LOSSES}, not {segmentation!r}")
        # Dice + focal (gamma 2) keeps small lesions in large images from drowning in the
        # background voxels of the cross-entropy
        self.segmentation = (DiceFocalLoss(sigmoid=True, batch=True, gamma=2.0) if segmentation == "dicefocal"
                             else DiceCELoss(sigmoid=True, batch=True))

    def forward(self, outputs: dict, batch: dict, fusion: bool = True,
                prototype: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        malignant = batch["malignant"]
        subtype = batch["subtype"]
        has_path = batch.get("pathology_present")
        parts: dict[str, torch.Tensor] = {}
        encs = outputs["encodings"]
        zero = outputs["malignancy_logit"].sum() * 0.0
        if fusion:
            parts["malignancy"] = _bce(outputs["malignancy_logit"], malignant, self.pos_weight)
            st = subtype >= 0
            parts["subtype"] = (F.cross_entropy(outputs["subtype_logits"][st].float(), subtype[st])
                                if bool(st.any()) else zero)
        aux = [_bce(e.aux_logit[e.aux_present], malignant[e.aux_present], self.pos_weight)
               for e in encs.values()]
        parts["auxiliary"] = torch.stack(aux).mean() if aux else zero
        seg, point = [], []
        for m, e in encs.items():
            b, s = e.index[:, 0], e.index[:, 1]
            given = batch[f"{m}_mask_given"][b, s]
            if bool(given.any()):
                target = batch[f"{m}_masks"][b, s][given].float()
                seg.append(self.segmentation(e.lesion_logits[given].float(), target))
                if w.pointing:
                    term = pointing_loss(e.lesion_logits[given], target)
                    if term is not None:
                        point.append(term)
        parts["segmentation"] = torch.stack(seg).mean() if seg else zero
        if w.pointing:
            parts["pointing"] = torch.stack(point).mean() if point else zero
        if w.finding and "abnormal" in batch:
            from .network import study_finding_logits

            found = study_finding_logits(encs, malignant.shape[0], self.finding_cell, self.finding_topk)
            terms = [_bce(found[m][e.aux_present], batch["abnormal"][e.aux_present], 1.0)
                     for m, e in encs.items()]
            parts["finding"] = torch.stack(terms).mean() if terms else zero
        align, back = [], []
        if has_path is not None and "pathology_embedding" in outputs:
            z = outputs["pathology_embedding"]
            for e in encs.values():
                b = e.index[:, 0]
                sel = has_path[b] & e.has_lesion
                if bool(sel.any()):
                    align.append(alignment_loss(e.align_lesion[sel], z[b[sel]], self.alignment,
                                                self.temperature))
                if prototype is not None and e.align_background.shape[0]:
                    cos = F.cosine_similarity(e.align_background.float(), prototype[None].float(), dim=1)
                    back.append(F.relu(cos).pow(2).mean())
            if fusion and bool(has_path.any()):
                align.append(alignment_loss(outputs["fused_align"][has_path], z[has_path],
                                            self.alignment, self.temperature))
            if bool(has_path.any()):
                pm = _bce(outputs["pathology_malignancy_logit"][has_path], malignant[has_path], 1.0)
                pst = has_path & (subtype >= 0)
                ps = (F.cross_entropy(outputs["pathology_subtype_logits"][pst].float(), subtype[pst])
                      if bool(pst.any()) else zero)
                parts["pathology"] = pm + ps
        parts["alignment"] = torch.stack(align).mean() if align else zero
        parts["background"] = torch.stack(back).mean() if back else zero
        parts.setdefault("pathology", zero)
        total = sum(getattr(w, k) * v for k, v in parts.items())
        # every output takes part in the graph (with weight 0): DistributedDataParallel then
        # gets a gradient for every parameter it can reach, whatever labels a batch has
        total = total + 0.0 * sum(t.float().sum() for t in _output_tensors(outputs) if t.requires_grad)
        return total, {k: float(v.detach()) for k, v in parts.items()}


def _output_tensors(outputs: dict):
    for v in outputs.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            yield v
        elif isinstance(v, dict):
            yield from _output_tensors(v)
        elif hasattr(v, "__dataclass_fields__"):
            yield from _output_tensors({f: getattr(v, f) for f in v.__dataclass_fields__})
        elif isinstance(v, tuple):
            yield from _output_tensors(dict(enumerate(v)))
