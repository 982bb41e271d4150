"""The risk network (Mirai design): shared view encoder, view/side embeddings, aggregator
across views, additive-hazard heads for the exam and for each breast.

Shapes: ``B`` exams, ``V = 4`` views (STANDARD_VIEWS order), ``T`` years (``max_followup``),
``D`` hidden width, ``F`` encoder features.

Additive hazard (Mirai's ``Cumulative_Probability_Layer``): from a hidden vector ``h`` the head
computes a base logit ``b(h)`` and yearly increments ``softplus(w_t . h + c_t) > 0``; the
cumulative logit for year ``t`` is ``b + sum_{k<=t} increment_k`` and the cumulative risk is its
sigmoid. Increments are positive, so risk(year t) < risk(year t+1) for every input and every
weight -- monotone by construction, no post-hoc sorting needed. (Mirai uses ReLU, which allows
equal consecutive years; softplus keeps the gradient alive.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import STANDARD_VIEWS, RiskConfig

#: Per-view indices into the view and side embeddings.
VIEW_INDEX = torch.tensor([0 if v == "CC" else 1 for _, v in STANDARD_VIEWS])
SIDE_INDEX = torch.tensor([0 if lat == "L" else 1 for lat, _ in STANDARD_VIEWS])


class RiskOutput(NamedTuple):
    """Cumulative logits; ``sigmoid`` gives cumulative risk.

    exam_logits : ``(B, T)`` -- cancer in either breast within t years.
    breast_logits : ``(B, 2, T)`` -- per breast, index 0 left, 1 right.
    breast_present : ``(B, 2)`` bool -- the breast had at least one view.
    """

    exam_logits: torch.Tensor
    breast_logits: torch.Tensor
    breast_present: torch.Tensor


def build_encoder(config: RiskConfig) -> tuple[nn.Module, int]:
    """The shared 2D view encoder (a MONAI ResNet) and its feature size ``F``.

    Maps ``(N, 1, H, W)`` to ``(N, F)`` (global average pooled, no classifier).
    """
    from monai.networks.nets import ResNet, resnet18

    # ImageNet-style stem (7x7 stride 2 + max pool) as in Mirai's ResNet-18; MONAI's default
    # stride is 1, which would be 4x the compute at 2048 x 1664.
    stem = dict(spatial_dims=2, n_input_channels=1, conv1_t_size=7, conv1_t_stride=2,
                feed_forward=False)
    if config.encoder == "resnet18":
        return resnet18(**stem), 512
    widths = list(config.encoder_channels)
    return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=widths, **stem), widths[-1]


class ViewConditioning(nn.Module):
    """Condition each view token on its view (CC/MLO) and side (L/R), as Mirai does:
    ``x * scale(e) + shift(e)`` with ``e`` the concatenated learnt embeddings.

    Input and output ``(B, V, D)``.
    """

    def __init__(self, hidden_dim: int, embed_dim: int = 16):
        super().__init__()
        self.view_embed = nn.Embedding(2, embed_dim)
        self.side_embed = nn.Embedding(2, embed_dim)
        self.scale = nn.Linear(2 * embed_dim, hidden_dim)
        self.shift = nn.Linear(2 * embed_dim, hidden_dim)
        nn.init.zeros_(self.scale.weight)
        nn.init.ones_(self.scale.bias)
        self.register_buffer("view_index", VIEW_INDEX.clone(), persistent=False)
        self.register_buffer("side_index", SIDE_INDEX.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.cat([self.view_embed(self.view_index), self.side_embed(self.side_index)], dim=-1)
        return x * self.scale(e)[None] + self.shift(e)[None]


class ViewAggregator(nn.Module):
    """Mix information across the present views.

    ``transformer``: self-attention over the view tokens with missing views as padding
    (``key_padding_mask``); ``mean``: identity (pooling happens in :class:`RiskNetwork`).
    Input ``(B, V, D)`` and mask ``(B, V)`` (True = present); output ``(B, V, D)``.
    """

    def __init__(self, config: RiskConfig):
        super().__init__()
        self.kind = config.aggregator
        if self.kind == "transformer":
            layer = nn.TransformerEncoderLayer(
                d_model=config.hidden_dim, nhead=config.num_heads,
                dim_feedforward=2 * config.hidden_dim, dropout=config.dropout,
                batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=config.num_layers,
                                                 enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return tokens
        return self.encoder(tokens, src_key_padding_mask=~view_mask)


class AdditiveHazard(nn.Module):
    """Cumulative logits for years ``1..T`` from ``(B, D)``: ``(B, T)``, strictly increasing.

    ``logit_t = base(h) + sum_{k <= t} softplus(hazard(h)_k)``.
    """

    def __init__(self, in_features: int, max_followup: int):
        super().__init__()
        self.hazard_fc = nn.Linear(in_features, max_followup)
        self.base_hazard_fc = nn.Linear(in_features, 1)
        # start near a low, realistic risk: base ~ 1 % and small yearly increments
        nn.init.constant_(self.base_hazard_fc.bias, -5.0)
        nn.init.constant_(self.hazard_fc.bias, -2.0)

    def hazards(self, h: torch.Tensor) -> torch.Tensor:
        """Positive yearly increments of the cumulative logit, ``(B, T)``."""
        return F.softplus(self.hazard_fc(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base_hazard_fc(h) + torch.cumsum(self.hazards(h), dim=-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``x (B, V, D)`` over views where ``mask (B, V)``; ``(B, D)`` and any-present ``(B,)``."""
    w = mask.to(x.dtype).unsqueeze(-1)
    n = w.sum(dim=1)
    return (x * w).sum(dim=1) / n.clamp(min=1.0), n.squeeze(-1) > 0


class RiskNetwork(nn.Module):
    """Exam of four views to cumulative risk logits for the exam and per breast.

    ``forward(images (B, V, 1, H, W), view_mask (B, V) bool) -> RiskOutput``. Only the present
    views go through the encoder. Every exam needs at least one present view.
    """

    def __init__(self, config: RiskConfig):
        super().__init__()
        self.config = config
        self.encoder, n_features = build_encoder(config)
        self.projection = nn.Linear(n_features, config.hidden_dim)
        self.conditioning = ViewConditioning(config.hidden_dim)
        self.aggregator = ViewAggregator(config)
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.exam_head = AdditiveHazard(config.hidden_dim, config.max_followup)
        self.breast_heads = nn.ModuleList(
            [AdditiveHazard(config.hidden_dim, config.max_followup) for _ in range(2)])
        self.register_buffer("side_index", SIDE_INDEX.clone(), persistent=False)

    def encode_views(self, images: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, V, D)`` of the present views (zeros where missing)."""
        b, v = view_mask.shape
        flat = images.reshape(b * v, *images.shape[2:])
        present = view_mask.reshape(-1)
        if images.is_cuda:
            flat = flat.contiguous(memory_format=torch.channels_last)
        feats = self.projection(self.encoder(flat[present]))
        tokens = feats.new_zeros(b * v, feats.shape[-1])
        tokens[present] = feats
        return tokens.reshape(b, v, -1)

    def forward(self, images: torch.Tensor, view_mask: torch.Tensor) -> RiskOutput:
        view_mask = view_mask.bool()
        if not bool(view_mask.any(dim=1).all()):
            raise ValueError("every exam needs at least one present view")
        tokens = self.conditioning(self.encode_views(images, view_mask))
        tokens = self.aggregator(tokens, view_mask)
        # pooling and hazard heads in float32 even under bf16 autocast: small risks need the bits
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            return self._heads(self.norm(tokens.float()), view_mask)

    def _heads(self, tokens: torch.Tensor, view_mask: torch.Tensor) -> RiskOutput:
        exam_h, _ = _masked_mean(tokens, view_mask)
        exam_logits = self.exam_head(self.dropout(exam_h))
        breast_logits, present = [], []
        for side, head in enumerate(self.breast_heads):
            side_mask = view_mask & (self.side_index == side)[None]
            h, ok = _masked_mean(tokens, side_mask)
            h = torch.where(ok[:, None], h, exam_h)  # no view of this breast: placeholder
            breast_logits.append(head(self.dropout(h)))
            present.append(ok)
        return RiskOutput(exam_logits, torch.stack(breast_logits, dim=1), torch.stack(present, dim=1))
