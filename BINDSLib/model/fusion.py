"""Fusion of image tokens across modalities: a transformer with task tokens.

Every present image contributes one token; a learned modality embedding is added. Task
tokens (malignancy, subtype) are prepended and read out after the transformer. Absent images
and absent (or dropped) modalities are excluded with the attention key-padding mask - never
zero-filled - so their inputs cannot influence the result.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MODALITIES

#: Task tokens, in order.
TASKS = ("malignancy", "subtype")


class ModalityFusion(nn.Module):
    """Transformer over modality tokens.

    Parameters
    ----------
    embed_dim, layers, heads, dropout : transformer size (pre-norm encoder layers, GELU).

    Forward
    -------
    tokens : ``(B, T, E)`` image tokens. modality_ids : ``(B, T)`` indices into
    :data:`MODALITIES`. present : ``(B, T)`` bool, False for padding/absent/dropped tokens.
    Returns the task-token outputs ``(B, len(TASKS), E)``.
    """

    def __init__(self, embed_dim: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.task_tokens = nn.Parameter(torch.zeros(1, len(TASKS), embed_dim))
        nn.init.trunc_normal_(self.task_tokens, std=0.02)
        self.modality_embedding = nn.Embedding(len(MODALITIES), embed_dim)
        nn.init.trunc_normal_(self.modality_embedding.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, heads, dim_feedforward=2 * embed_dim,
                                           dropout=dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, tokens: torch.Tensor, modality_ids: torch.Tensor,
                present: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        x = tokens + self.modality_embedding(modality_ids)
        # absent tokens: their values are replaced so that nothing of them can leak through
        # numerics (e.g. NaN inputs); they are masked out of attention in any case.
        x = torch.where(present[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        x = torch.cat([self.task_tokens.expand(b, -1, -1).to(x.dtype), x], 1)
        keep = torch.cat([torch.ones((b, len(TASKS)), dtype=torch.bool, device=x.device), present], 1)
        out = self.encoder(x, src_key_padding_mask=~keep)
        return self.norm(out[:, :len(TASKS)])
