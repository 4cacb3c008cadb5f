"""The language-model head applied only where something is scored, a chunk of positions at a time.

A 3B student's vocabulary has 151,936 entries. Full logits of 64 rollouts x 256 tokens are 10 GB
in float32, and a loss makes its log-softmax and gradient as large again; the prompt's audio
placeholders (hundreds per clip) predict nothing at all. So the student's forward stops at the
final hidden states, and the head and the per-token loss run on the scored positions only,
`chunk` of them at a time; in the backward pass each chunk's logits are recomputed, never stored.
The per-token values equal those of the full-logits path (losses are per position).

This runs inside the student's forward (`StudentForConditionalGeneration.forward(scored=...)`), so
that every engine sees the head's weights as it expects: gathered under ZeRO-3, unsharded under
FSDP2, and part of the forward that DDP prepares its gradient reduction for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

PerToken = Callable[[torch.Tensor, slice], torch.Tensor]
DEFAULT_CHUNK = 4096  # optim.logits_chunk's default: 4096 x 151,936 float32 logits are 2.5 GB


@dataclass
class ScoredPositions:
    """Which final hidden states predict a scored token, and what to compute there.

    rows_N, cols_N: batch row and sequence column of each scored position (N positions in all).
    per_token(logits_n_V, positions): the values at positions[i] of the N (a slice of them), given
        their logits; a tensor with one leading entry per position (e.g. a loss_n).
    chunk: positions whose logits exist at once."""

    rows_N: torch.Tensor
    cols_N: torch.Tensor
    per_token: PerToken
    chunk: int = DEFAULT_CHUNK

    @property
    def count(self) -> int:
        return int(self.rows_N.numel())

    @classmethod
    def where(cls, mask_B_S: torch.Tensor, per_token: PerToken, chunk: int = DEFAULT_CHUNK,
              offset: int = 0) -> "ScoredPositions":
        """The positions where `mask_B_S` is true, shifted right by `offset` columns."""
        rows, cols = mask_B_S.nonzero(as_tuple=True)
        return cls(rows, cols + offset, per_token, chunk)


def score_hidden(hidden_B_S_D: torch.Tensor, lm_head: torch.nn.Module, scored: ScoredPositions) -> torch.Tensor:
    """`scored.per_token` over the scored positions' logits, chunk by chunk (recomputed in backward)."""
    hidden_N_D = hidden_B_S_D[scored.rows_N.to(hidden_B_S_D.device), scored.cols_N.to(hidden_B_S_D.device)]
    parts = []
    for start in range(0, max(scored.count, 1), scored.chunk):
        positions = slice(start, min(start + scored.chunk, scored.count))

        def chunk_values(h_n_D: torch.Tensor, positions: slice = positions) -> torch.Tensor:
            return scored.per_token(lm_head(h_n_D), positions)

        h_n_D = hidden_N_D[positions]
        if torch.is_grad_enabled():
            parts.append(checkpoint(chunk_values, h_n_D, use_reentrant=False))
        else:
            parts.append(chunk_values(h_n_D))
    return torch.cat(parts)
