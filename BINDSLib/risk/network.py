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

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..fusedconv import conv_act
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
        all_present = bool(present.all())
        feats = self.projection(self.encoder(flat if all_present else flat[present]))
        if all_present:
            return feats.reshape(b, v, -1)
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


# -- inference-only encoder ----------------------------------------------------------------------

def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (eval statistics)."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                     device=w.device)
    if bn is None:
        return w.clone(), b.clone()
    scale = bn.weight.detach() * torch.rsqrt(bn.running_var + bn.eps)
    return w * scale.reshape(-1, 1, 1, 1), (b - bn.running_mean) * scale + bn.bias.detach()


class FusedConv2d(nn.Module):
    """``act(conv(x) [+ residual])`` with BatchNorm folded in; eval only.

    On the CPU (float32) the ReLU and the residual sum run inside the oneDNN convolution
    (:func:`~BINDSLib.fusedconv.conv_act`); elsewhere ``F.conv2d`` followed by the same
    element-wise steps.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, relu: bool):
        super().__init__()
        w, b = _fold_bn(conv, bn)
        self.register_buffer("weight", w.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", b.contiguous())
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return conv_act(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups, self.relu, residual)


class InferenceEncoder(nn.Module):
    """Eval-only equivalent of a 2D MONAI ResNet encoder (:func:`build_encoder`), for scoring.

    BatchNorm is folded into the convolution weights, ReLU and the residual sum are fused into
    the convolutions, activations are channels_last, and a batch runs through in chunks of at
    most ``views_per_pass`` images (default: as many as keep the stem's output under
    ``stem_budget_mib``) so that peak memory does not grow with the number of views. Outputs
    match the encoder's to float32 rounding (about 1e-6 relative).

    Input ``(N, 1, H, W)``, output ``(N, F)``. Built by :func:`fuse_for_inference`; the
    original encoder is left untouched (its ``state_dict`` is what bundles store).
    """

    def __init__(self, encoder: nn.Module, stem_budget_mib: float = 256.0):
        super().__init__()
        if getattr(encoder, "no_max_pool", False) or encoder.fc is not None:
            raise ValueError("InferenceEncoder expects the encoder of build_encoder()")
        self.stem = FusedConv2d(encoder.conv1, encoder.bn1, relu=True)
        self.maxpool = encoder.maxpool
        self.stem_channels = encoder.conv1.out_channels
        self.stem_stride = encoder.conv1.stride
        self.blocks = nn.ModuleList()
        for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
            for block in layer:
                down = None
                if block.downsample is not None:
                    conv, bn = block.downsample[0], block.downsample[1]
                    down = FusedConv2d(conv, bn, relu=False)
                self.blocks.append(nn.ModuleDict({
                    "conv1": FusedConv2d(block.conv1, block.bn1, relu=True),
                    "conv2": FusedConv2d(block.conv2, block.bn2, relu=True),
                    **({"downsample": down} if down is not None else {})}))
        self.stem_budget_mib = stem_budget_mib

    def views_per_pass(self, x: torch.Tensor) -> int:
        """How many images go through at once: the stem output of a chunk stays in budget."""
        h = -(-x.shape[-2] // self.stem_stride[0])
        w = -(-x.shape[-1] // self.stem_stride[1])
        per_image = self.stem_channels * h * w * x.element_size() / 2**20
        return max(1, int(self.stem_budget_mib // max(per_image, 1e-9)))

    def _forward_chunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x.contiguous(memory_format=torch.channels_last)))
        for block in self.blocks:
            identity = block["downsample"](x) if "downsample" in block else x
            x = block["conv2"](block["conv1"](x), residual=identity)
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # chunking bounds CPU memory; a GPU is faster with the whole batch at once
        k = self.views_per_pass(x) if x.device.type == "cpu" else x.shape[0]
        if x.shape[0] <= k:
            return self._forward_chunk(x)
        return torch.cat([self._forward_chunk(c) for c in x.split(k)])


def fuse_for_inference(network: "RiskNetwork") -> "RiskNetwork":
    """An eval-only view of ``network`` for scoring: the same modules, except that the
    encoder is an :class:`InferenceEncoder` (folded BatchNorm, fused ReLU/residual, chunked).

    ``network`` itself is not modified. The result must not be trained or saved.
    """
    network = network.eval()
    fused = copy.copy(network)
    fused._modules = dict(network._modules)
    fused._buffers = dict(network._buffers)
    fused._parameters = dict(network._parameters)
    fused.encoder = InferenceEncoder(network.encoder).to(next(network.parameters()).device).eval()
    return fused
