"""The Teacher contract: score a student's rollout, token by token, in the student's vocabulary.

    scores = teacher.score(batch, rollout, extra_ids_B_T_E=student_topk, k=32, temperature=1.0)

A teacher sees the audio through its own front end and prompt, runs frozen (eval mode, no_grad,
its own dtype), encodes each utterance once however many samples the rollout holds, and maps
token ids between the two vocabularies (train.teachers.token_map). From its prompts and audio on,
every teacher scores through one core (train.teachers.scoring).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from train.opd.rollout import Rollout


@dataclass
class TokenScores:
    """The teacher's view of every rollout position, in the student's vocabulary.

    sampled_logp_B_T: log p_teacher(sampled token) at temperature 1.
    topk_ids_B_T_K, topk_logp_B_T_K: the teacher's k most likely tokens (student ids; -1 where a
        teacher token has no student equivalent) and their log-probs at `temperature`.
    extra_ids_B_T_E, extra_logp_B_T_E: log-probs at `temperature` at ids the caller asked for (the
        student's top-k, which the union loss needs); -inf where the teacher has no such token.
    full_logp_B_T_V: full-vocabulary log-probs at `temperature`, only when asked and the
        vocabularies are the same.
    mask_B_T: positions that were scored (the rollout's mask, less any sampled token the teacher
        cannot represent).
    All log-probs are normalised over the teacher's FULL vocabulary (logit - logsumexp of all its
    logits), then gathered.
    """

    sampled_logp_B_T: torch.Tensor
    topk_ids_B_T_K: torch.Tensor
    topk_logp_B_T_K: torch.Tensor
    mask_B_T: torch.Tensor
    extra_ids_B_T_E: torch.Tensor | None = None
    extra_logp_B_T_E: torch.Tensor | None = None
    full_logp_B_T_V: torch.Tensor | None = None
    temperature: float = 1.0

    def select(self, index) -> "TokenScores":
        """The same positions of every field: `scores.select(mask_B_T)` flattens the scored positions
        (leading dim N instead of B, T); `.select(slice)` takes some of those."""
        return TokenScores(**{f.name: (v[index] if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                              for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> "TokenScores":
        return TokenScores(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                              for f in dataclasses.fields(self)})


def score_in_chunks(rows: int, rows_per_forward: int | None,
                    score_rows: Callable[[slice], tuple[TokenScores, int]]) -> tuple[TokenScores, int]:
    """`score_rows(rows) -> (TokenScores, dropped positions)` over consecutive slices of at most
    `rows_per_forward` rollout rows (None: one slice), concatenated along the rows. Each slice's
    B x T x V logits are gone before the next slice's forward: this bounds a teacher's peak memory."""
    step = rows_per_forward or max(rows, 1)
    parts, dropped = [], 0
    for lo in range(0, max(rows, 1), step):  # an empty rollout still gets (empty) scores
        part, n = score_rows(slice(lo, lo + step))
        parts.append(part)
        dropped += n
    if len(parts) == 1:
        return parts[0], dropped
    values = {}
    for field in dataclasses.fields(TokenScores):
        items = [getattr(part, field.name) for part in parts]
        values[field.name] = torch.cat(items) if isinstance(items[0], torch.Tensor) else items[0]
    return TokenScores(**values), dropped


class Teacher(Protocol):
    name: str
    # Rollout positions whose sampled token the teacher has no token for (dropped from the mask): in the
    # last `score` call, and in all calls. The rule for such tokens is in train.teachers.scoring.
    dropped_positions: int
    dropped_positions_total: int

    def score(self, batch: dict, rollout: Rollout, extra_ids_B_T_E: torch.Tensor | None = None, k: int = 32,
              temperature: float = 1.0, full: bool = False) -> TokenScores: ...


# Elements per logsumexp block: a block's float32 copy and logsumexp's own temporary stay near 2^24
# elements (64 MB) each, whatever the vocabulary or the number of positions (110 positions of 152k ids).
LOGSUMEXP_BLOCK_ELEMENTS = 1 << 24


def logsumexp_B_T(logits_B_T_V: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """float32 logsumexp(logits / temperature) over the vocabulary, a block of positions at a time.

    log p(v) = logits[v] / temperature - logsumexp_B_T: log-probs over the FULL vocabulary at any ids,
    without the B x T x V float32 log-softmax copy (two with a temperature) that gathering from
    torch.log_softmax needs. Blocks are taken row by row, so a non-contiguous slice (the teacher's
    `logits[:, :new]`) is never copied whole either."""
    rows, steps, vocab = logits_B_T_V.shape
    out_B_T = torch.empty(rows, steps, dtype=torch.float32, device=logits_B_T_V.device)
    block = max(1, LOGSUMEXP_BLOCK_ELEMENTS // max(vocab, 1))
    for b in range(rows):
        for lo in range(0, steps, block):
            x = logits_B_T_V[b, lo: lo + block]
            x = x.float() if temperature == 1.0 else x.to(torch.float32, copy=True).div_(temperature)
            out_B_T[b, lo: lo + block] = torch.logsumexp(x, dim=-1)
    return out_B_T


def _scaled(values: torch.Tensor, temperature: float) -> torch.Tensor:
    return values / temperature if temperature != 1.0 else values


def logp_at(logits_B_T_V: torch.Tensor, ids_B_T_N: torch.Tensor, lse_B_T: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """float32 log-probs at `ids_B_T_N` (valid ids), given lse_B_T = logsumexp_B_T(logits, temperature)."""
    return _scaled(logits_B_T_V.gather(-1, ids_B_T_N).float(), temperature) - lse_B_T[..., None]


def topk_logp(logits_B_T_V: torch.Tensor, k: int, lse_B_T: torch.Tensor,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, ids) of the k most likely ids: the top logits are the top log-probs at any temperature > 0."""
    values, ids = logits_B_T_V.topk(min(k, logits_B_T_V.shape[-1]), dim=-1)
    return _scaled(values.float(), temperature) - lse_B_T[..., None], ids


def full_logp(logits_B_T_V: torch.Tensor, lse_B_T: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The full-vocabulary float32 log-probs: the one B x T x V copy, made only when a caller asks for it."""
    return logits_B_T_V.to(torch.float32, copy=True).div_(temperature).sub_(lse_B_T[..., None])


def gather_scores(logits_B_T_V: torch.Tensor, rollout_tokens_B_T: torch.Tensor, mask_B_T: torch.Tensor, k: int,
                  temperature: float, extra_ids_B_T_E: torch.Tensor | None, full: bool) -> TokenScores:
    """TokenScores from teacher logits already aligned with the rollout and in the student's vocabulary."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    lse1_B_T = logsumexp_B_T(logits_B_T_V)
    lseT_B_T = lse1_B_T if temperature == 1.0 else logsumexp_B_T(logits_B_T_V, temperature)
    sampled = logp_at(logits_B_T_V, rollout_tokens_B_T.clamp(min=0)[..., None], lse1_B_T).squeeze(-1)
    top_logp, top_ids = topk_logp(logits_B_T_V, k, lseT_B_T, temperature)
    extra_logp = None
    if extra_ids_B_T_E is not None:
        extra_logp = logp_at(logits_B_T_V, extra_ids_B_T_E.clamp(min=0), lseT_B_T, temperature)
        extra_logp = extra_logp.masked_fill(extra_ids_B_T_E < 0, float("-inf"))
    return TokenScores(sampled_logp_B_T=sampled, topk_ids_B_T_K=top_ids, topk_logp_B_T_K=top_logp,
                       mask_B_T=mask_B_T.clone(), extra_ids_B_T_E=extra_ids_B_T_E, extra_logp_B_T_E=extra_logp,
                       full_logp_B_T_V=full_logp(logits_B_T_V, lseT_B_T, temperature) if full else None,
                       temperature=temperature)
