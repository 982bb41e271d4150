"""The BINDS diagnosis network.

Per modality (MG: one 2D encoder shared by the views, with view and side embeddings; US: 2D;
MR: 3D over the stacked sequences and phases):

1. a :class:`~.encoders.LesionLocator` gives a lesion logit map at the input resolution, the
   last feature map and a context vector;
2. a lesion-focused crop (box around the given mask, else the predicted lesion) is encoded by
   a :class:`~.encoders.CropClassifier`;
3. context + crop features become one token per image (plus view/side embeddings for MG and
   US, a channel-presence embedding for MR), and an auxiliary per-modality malignancy head
   reads the mean token of the modality;
4. a 1x1 projection maps the last feature map into the alignment space: pooled over the lesion
   it is aligned with the pathology embedding in training; per location it gives the
   alignment saliency.

:class:`~.fusion.ModalityFusion` fuses the tokens of the present modalities; heads read the
malignancy logit and the subtype logits from its task tokens. With ``evidence_fusion`` the
malignancy logit also adds the learned-weighted auxiliary logits of the present, kept
modalities (late fusion of each modality's evidence, on which the transformer learns
corrections and interactions).

Batch layout (see :func:`BINDSLib.model.data.collate`): for each modality ``m`` in
``("MG", "US", "MR")`` present in the batch, ``{m}_images (B, S, C, *spatial)``,
``{m}_present (B, S)`` bool, ``{m}_masks (B, S, 1, *spatial)``, ``{m}_mask_given (B, S)``,
``{m}_view``/``{m}_side (B, S)`` long, ``{m}_channels (B, S, 7)`` bool; for training also
``pathology (B, P)``, ``pathology_present (B,)``, ``wsi (B, W)``, ``wsi_present (B,)``.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MG_VIEW_CODES, MODALITIES, MR_CHANNELS, SIDES, SUBTYPES, DiagnosisConfig
from .crops import crop, lesion_boxes
from .encoders import Backbone, CropClassifier, LesionLocator
from .fusion import ModalityFusion
from .pathology import PathologyEncoder


@dataclass
class ModalityEncoding:
    """Encoder outputs for the present images of one modality (``N`` images in the batch).

    index : ``(N, 2)`` (study, slot) of each image. tokens : ``(N, E)``.
    lesion_logits : ``(N, 1, *spatial)``. align_map : ``(N, A, *feature_spatial)`` projected
    features. align_lesion / align_background : ``(N, A)`` projected features pooled inside /
    outside the lesion. boxes : ``(centres, half_sizes)`` of the crops, ``(N, nd)`` each.
    aux_logit : ``(B,)`` per-modality malignancy logit (meaningful where aux_present).
    has_lesion : ``(N,)`` False where a given mask says the image shows no lesion (e.g. the
        other breast): such images are left out of the radiology-pathology alignment.
    """

    index: torch.Tensor
    tokens: torch.Tensor
    lesion_logits: torch.Tensor
    align_map: torch.Tensor
    align_lesion: torch.Tensor
    align_background: torch.Tensor
    boxes: tuple[torch.Tensor, torch.Tensor]
    aux_logit: torch.Tensor
    aux_present: torch.Tensor
    has_lesion: torch.Tensor


def finding_logits(lesion_logits: torch.Tensor, cell: int, topk: int) -> torch.Tensor:
    """Image-level *finding* logit ``(N,)`` from lesion logit maps ``(N, 1, *spatial)``.

    Multiple-instance pooling: the map is averaged over cells of ``cell`` pixels a side
    (fewer along an axis shorter than that) and the ``topk`` largest cells are averaged. An
    image with a finding needs a few confident cells, a normal one none: trained on image
    labels (``loss_weights.finding``) this teaches the locator from images without an outline
    too; untrained, it is a smoothed maximum of the lesion map.
    """
    spatial = lesion_logits.shape[2:]
    kernel = tuple(max(1, min(int(cell), int(n))) for n in spatial)
    pool = F.avg_pool3d if len(spatial) == 3 else F.avg_pool2d
    cells = pool(lesion_logits.float(), kernel, stride=kernel).flatten(1)
    return cells.topk(min(int(topk), cells.shape[1]), 1).values.mean(1)


def study_max(values: torch.Tensor, study: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per study ``(batch_size,)``, the maximum of ``values (N,)`` over its rows (``study (N,)``
    holds each row's study); ``-inf`` for a study without rows."""
    out = torch.full((batch_size,), -math.inf, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, study, values, "amax", include_self=False)


def study_finding_logits(encodings: dict[str, "ModalityEncoding"], batch_size: int, cell: int,
                         topk: int, offsets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per modality, each study's finding logit ``(batch_size,)``: the largest
    :func:`finding_logits` of its images of that modality (``-inf`` for a study without one),
    each image's first shifted by ``offsets[modality] (N,)`` when given (inference's bilateral
    comparison, :func:`bilateral_offsets`). The one definition the loss, the training's
    validation and inference use."""
    out = {}
    for m, e in encodings.items():
        f = finding_logits(e.lesion_logits, cell, topk)
        if offsets and m in offsets:
            f = f + offsets[m].to(f)
        out[m] = study_max(f, e.index[:, 0], batch_size)
    return out


def other_breast_films(laterality: str | None, view: str | None,
                       films: list[tuple[str | None, str | None]]) -> list[int]:
    """Indices of the ``films`` (``(laterality, view)`` each) a mammogram of ``laterality`` and
    ``view`` is compared with: those of the other breast, of the same view when there are any;
    none when a laterality is unknown. The one pairing rule of inference and calibration."""
    others = [i for i, (lat, _) in enumerate(films) if laterality and lat and lat != laterality]
    return [i for i in others if films[i][1] == view] or others


def bilateral_offsets(contralateral: torch.Tensor, weight: float, reference: float) -> torch.Tensor:
    """The shift ``-weight * (c - reference)`` of each image's finding logit given the other
    breast's finding logit ``c`` (``contralateral (N,)``, NaN where the other breast is not
    there: no shift). See ``DiagnosisConfig.bilateral_weight``; the one definition inference,
    the film ranking and calibration use."""
    c = contralateral if contralateral.is_floating_point() else contralateral.float()
    shift = -float(weight) * (c - float(reference))
    return torch.where(torch.isnan(shift), torch.zeros_like(shift), shift)


class ModalityBranch(nn.Module):
    """Locator + crop classifier + token projection + auxiliary head of one modality."""

    def __init__(self, modality: str, config: DiagnosisConfig):
        super().__init__()
        self.modality = modality
        dims = 3 if modality == "MR" else 2
        cin = len(MR_CHANNELS) if modality == "MR" else 1
        self.spatial_dims = dims
        self.crop_size = {"MG": config.mg_crop, "US": config.us_crop, "MR": config.mr_crop}[modality]
        self.config = config
        self.locator = LesionLocator(dims, cin, config.locator_for(modality))
        if config.lesion_prior is not None:
            p = float(config.lesion_prior)
            nn.init.constant_(self.locator.head[-1].bias, math.log(p / (1.0 - p)))
        self.classifier = CropClassifier(dims, cin, config.classifier_3d if dims == 3 else config.classifier_2d)
        e = config.embed_dim
        self.token = nn.Sequential(
            nn.Linear(self.locator.out_channels + self.classifier.out_channels, e), nn.GELU(),
            nn.Linear(e, e))
        if modality == "MR":
            self.channel_embedding = nn.Linear(len(MR_CHANNELS), e, bias=False)
        else:
            self.side_embedding = nn.Embedding(len(SIDES), e)
            self.view_embedding = nn.Embedding(len(MG_VIEW_CODES), e) if modality == "MG" else None
        self.align = (nn.Conv3d if dims == 3 else nn.Conv2d)(self.locator.out_channels, config.align_dim, 1)
        self.aux_head = nn.Sequential(nn.LayerNorm(e), nn.Dropout(config.dropout), nn.Linear(e, 1))
        self.memory_format = torch.contiguous_format

    def forward(self, batch: dict, batch_size: int, crop_from_prediction: torch.Tensor | None = None,
                release_images: bool = False) -> ModalityEncoding:
        """Encode the modality's present images of ``batch``.

        ``release_images``: pop the images from ``batch`` and let them go once the lesion crops
        are cut (inference: the stacked MRI input is ~100 MB that the crop classifier, the
        largest step after it, need not share memory with).
        """
        m = self.modality
        present = batch[f"{m}_present"]
        index = present.nonzero()
        b, s = index[:, 0], index[:, 1]
        every = index.shape[0] == present.numel()  # every slot present (inference)
        images = batch.pop(f"{m}_images") if release_images else batch[f"{m}_images"]
        # all slots: the same rows as images[b, s], without that copy
        x = images.flatten(0, 1) if every else images[b, s]
        del images
        x = x.contiguous(memory_format=self.memory_format)
        logits, feats, context = self.locator(x)
        prob = torch.sigmoid(logits.detach().float())
        masks = batch[f"{m}_masks"]
        mask = masks.flatten(0, 1) if every else masks[b, s]
        given = batch[f"{m}_mask_given"][b, s]
        nonempty = mask.flatten(1).amax(1) > 0
        shape = (-1, *[1] * (mask.ndim - 1))
        use_mask = given & nonempty
        # without a given mask (the usual inference) the lesion region is the prediction itself
        lesion_region = torch.where(use_mask.view(shape), mask.float(), prob) if bool(use_mask.any()) else prob
        del mask, masks
        crop_region = lesion_region
        if crop_from_prediction is not None:
            crop_region = torch.where(crop_from_prediction[b].view(shape), prob, lesion_region)
        cfg = self.config
        centres, halves = lesion_boxes(crop_region, cfg.lesion_threshold, cfg.crop_margin,
                                       cfg.crop_min_fraction)
        del crop_region
        crops = crop(x, centres, halves, self.crop_size)
        del x  # the input's last reference here (with release_images, its memory goes now)
        crops = crops.contiguous(memory_format=self.memory_format)
        tok = self.token(torch.cat([context, self.classifier(crops)], 1))
        if m == "MR":
            tok = tok + self.channel_embedding(batch[f"{m}_channels"][b, s].to(tok.dtype))
        else:
            tok = tok + self.side_embedding(batch[f"{m}_side"][b, s])
            if self.view_embedding is not None:
                tok = tok + self.view_embedding(batch[f"{m}_view"][b, s])
        amap = self.align(feats)
        w = F.adaptive_avg_pool3d(lesion_region, amap.shape[2:]) if self.spatial_dims == 3 else \
            F.adaptive_avg_pool2d(lesion_region, amap.shape[2:])
        w = w.to(amap.dtype)
        lesion = (amap * w).flatten(2).sum(2) / w.flatten(2).sum(2).clamp_min(1e-6)
        back = (amap * (1 - w)).flatten(2).sum(2) / (1 - w).flatten(2).sum(2).clamp_min(1e-6)
        # auxiliary head on the mean token of the modality per study
        summed = torch.zeros((batch_size, tok.shape[1]), dtype=tok.dtype, device=tok.device)
        summed = summed.index_add(0, b, tok)
        counts = torch.zeros(batch_size, dtype=tok.dtype, device=tok.device).index_add(
            0, b, torch.ones_like(b, dtype=tok.dtype))
        aux = self.aux_head(summed / counts.clamp_min(1)[:, None])[:, 0]
        return ModalityEncoding(index, tok, logits, amap, lesion, back, (centres, halves), aux,
                                counts > 0, ~given | nonempty)


class DiagnosisNetwork(nn.Module):
    """Multimodal diagnosis network (see module docstring).

    ``forward(batch, keep=None, crop_from_prediction=None)`` returns a dict with
    ``malignancy_logit (B,)``, ``subtype_logits (B, 4)``, ``fused_align (B, A)``, the
    :class:`ModalityEncoding` of each present modality under ``encodings`` and, when the batch
    carries pathology, ``pathology_embedding (B, A)``, ``pathology_malignancy_logit (B,)``,
    ``pathology_subtype_logits (B, 4)``. ``keep`` maps a modality to a ``(B,)`` bool: False
    masks it out of the fusion for that study (modality dropout, leave-one-out).
    """

    def __init__(self, config: DiagnosisConfig):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleDict({m: ModalityBranch(m, config) for m in MODALITIES})
        e = config.embed_dim
        self.fusion = ModalityFusion(e, config.fusion_layers, config.fusion_heads, config.dropout)
        self.malignancy_head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(e, 1))
        self.subtype_head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(e, len(SUBTYPES)))
        self.fused_align = nn.Linear(e, config.align_dim)
        if config.evidence_fusion:
            self.evidence_weight = nn.Parameter(torch.full((len(MODALITIES),), 0.5))
        self.pathology = PathologyEncoder(config.align_dim, config.pathology_hidden, config.wsi_dim)
        self.refiner = None  # lesion_refiner: trained in a stage of its own, used when mapping back
        if config.lesion_refiner is not None:
            from .refiner import LesionRefiner

            self.refiner = LesionRefiner(config.lesion_refiner)

    def parameters_of_network(self):
        """The parameters trained by the network's epochs (all but the refiner's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("refiner.")]

    def fold_batch_norm(self) -> "DiagnosisNetwork":
        """Fold every BatchNorm that directly follows a convolution into it (inference only).

        In eval mode ``bn(conv(x))`` is an affine map of ``conv(x)``, so the convolution's
        weights and bias absorb it and the BatchNorm becomes ``Identity``: the same outputs up
        to float rounding, one pass less over each feature map. The backbones then run each
        convolution with its ReLU and residual sum as one call
        (:meth:`~.encoders.Backbone.fuse_for_inference`). The network is put in eval mode and
        must not be trained afterwards (its BatchNorm statistics are gone).
        """
        self.eval()

        @torch.no_grad()
        def fold(module: nn.Module) -> None:
            children = list(module.named_children())
            for (cname, conv), (bname, bn) in zip(children, children[1:]):
                if (isinstance(conv, nn.modules.conv._ConvNd)
                        and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                        and bn.track_running_stats and conv.out_channels == bn.num_features
                        and not conv.transposed):
                    # as torch.nn.utils.fusion.fuse_conv_bn_weights, with the weight scaled in
                    # place (no second copy of the weights)
                    rsqrt = torch.rsqrt(bn.running_var + bn.eps)
                    scale = bn.weight * rsqrt if bn.affine else rsqrt
                    shift = bn.bias if bn.affine else torch.zeros_like(rsqrt)
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    conv.weight.mul_(scale.to(conv.weight.dtype).reshape(-1, *[1] * (conv.weight.dim() - 1)))
                    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + shift).to(conv.weight.dtype))
                    setattr(module, bname, nn.Identity())
            for _, child in module.named_children():
                fold(child)

        for branch in self.branches.values():
            fold(branch)
        for module in self.branches.modules():  # conv + ReLU (+ residual) as one call
            if isinstance(module, Backbone):
                module.fuse_for_inference()
        return self

    def use_channels_last(self, two_d: bool = True, three_d: bool = True) -> "DiagnosisNetwork":
        """Channels-last memory format for the 2D and/or 3D convolutions.

        On CUDA both help (tensor cores); on CPU the 3D branch trains ~10x faster with it
        (oneDNN's 3D convolution backward), the 2D ones gain nothing.
        """
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        wanted = {4: two_d, 5: three_d}
        for p in self.parameters():
            if p.dim() in formats and wanted[p.dim()]:
                p.data = p.data.contiguous(memory_format=formats[p.dim()])
        for m, branch in self.branches.items():
            dim = 5 if m == "MR" else 4
            if wanted[dim]:
                branch.memory_format = formats[dim]
        return self

    @staticmethod
    def batch_size(batch: dict) -> int:
        for m in MODALITIES:
            if f"{m}_present" in batch:
                return int(batch[f"{m}_present"].shape[0])
        raise ValueError("the batch holds no modality")

    def encode(self, batch: dict, crop_from_prediction: torch.Tensor | None = None,
               release_images: bool = False) -> dict[str, ModalityEncoding]:
        """Encoder outputs of every modality with at least one present image in the batch.

        ``release_images``: each branch pops its images from ``batch`` and lets them go once
        its lesion crops are cut (see :meth:`ModalityBranch.forward`); for inference that does
        not read the images again.
        """
        bsz = self.batch_size(batch)
        return {m: self.branches[m](batch, bsz, crop_from_prediction, release_images) for m in MODALITIES
                if f"{m}_present" in batch and bool(batch[f"{m}_present"].any())}

    def fuse(self, encodings: dict[str, ModalityEncoding], batch: dict,
             keep: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Fuse the tokens of :meth:`encode`; ``keep`` masks modalities per study."""
        bsz = self.batch_size(batch)
        toks, ids, pres = [], [], []
        evidence = None
        for m, enc in encodings.items():
            present = batch[f"{m}_present"]
            s = present.shape[1]
            t = torch.zeros((bsz, s, enc.tokens.shape[1]), dtype=enc.tokens.dtype, device=enc.tokens.device)
            t = t.index_put((enc.index[:, 0], enc.index[:, 1]), enc.tokens)
            p = present.clone()
            if keep is not None and m in keep:
                p = p & keep[m][:, None]
            toks.append(t)
            pres.append(p)
            ids.append(torch.full((bsz, s), MODALITIES.index(m), dtype=torch.long, device=t.device))
            if self.config.evidence_fusion:
                used = enc.aux_present & p.any(1)
                term = torch.where(used, self.evidence_weight[MODALITIES.index(m)] * enc.aux_logit,
                                   torch.zeros((), dtype=enc.aux_logit.dtype, device=used.device))
                evidence = term if evidence is None else evidence + term
        if not toks:
            raise ValueError("no modality present in the batch")
        out = self.fusion(torch.cat(toks, 1), torch.cat(ids, 1), torch.cat(pres, 1))
        logit = self.malignancy_head(out[:, 0])[:, 0]
        if evidence is not None:
            logit = logit + evidence
        return {"malignancy_logit": logit,
                "subtype_logits": self.subtype_head(out[:, 1]),
                "fused_align": self.fused_align(out[:, 0]),
                "fused_present": torch.cat(pres, 1).any(1)}

    def forward(self, batch: dict, keep: dict[str, torch.Tensor] | None = None,
                crop_from_prediction: torch.Tensor | None = None) -> dict:
        enc = self.encode(batch, crop_from_prediction)
        out = self.fuse(enc, batch, keep)
        out["encodings"] = enc
        if "pathology" in batch:
            z, mal, sub = self.pathology(batch["pathology"], batch.get("wsi"), batch.get("wsi_present"))
            out.update(pathology_embedding=z, pathology_malignancy_logit=mal,
                       pathology_subtype_logits=sub)
        return out
