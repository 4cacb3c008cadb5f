"""The Teacher contract: score a student's rollout, token by token, in the student's vocabulary.

    scores = teacher.score(batch, rollout, extra_ids_B_T_E=student_topk, k=32, temperature=1.0)

A teacher sees the audio through its own front end and prompt, runs frozen (eval mode, no_grad,
its own dtype), encodes each utterance once however many samples the rollout holds, and maps
token ids between the two vocabularies (train.teachers.token_map).
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
    All log-probs come from a log-softmax over the teacher's FULL vocabulary, then gathered.
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

    def score(self, batch: dict, rollout: Rollout, extra_ids_B_T_E: torch.Tensor | None = None, k: int = 32,
              temperature: float = 1.0, full: bool = False) -> TokenScores: ...


def gather_scores(logits_B_T_V: torch.Tensor, rollout_tokens_B_T: torch.Tensor, mask_B_T: torch.Tensor, k: int,
                  temperature: float, extra_ids_B_T_E: torch.Tensor | None, full: bool) -> TokenScores:
    """TokenScores from teacher logits already aligned with the rollout and in the student's vocabulary."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    logits = logits_B_T_V.float()
    logp1_B_T_V = torch.log_softmax(logits, dim=-1)
    logpT_B_T_V = logp1_B_T_V if temperature == 1.0 else torch.log_softmax(logits / temperature, dim=-1)
    sampled = logp1_B_T_V.gather(-1, rollout_tokens_B_T.clamp(min=0)[..., None]).squeeze(-1)
    topk_logp, topk_ids = logpT_B_T_V.topk(min(k, logits.shape[-1]), dim=-1)
    extra_logp = None
    if extra_ids_B_T_E is not None:
        extra_logp = logpT_B_T_V.gather(-1, extra_ids_B_T_E.clamp(min=0))
        extra_logp = extra_logp.masked_fill(extra_ids_B_T_E < 0, float("-inf"))
    return TokenScores(sampled_logp_B_T=sampled, topk_ids_B_T_K=topk_ids, topk_logp_B_T_K=topk_logp,
                       mask_B_T=mask_B_T.clone(), extra_ids_B_T_E=extra_ids_B_T_E, extra_logp_B_T_E=extra_logp,
                       full_logp_B_T_V=logpT_B_T_V if full else None, temperature=temperature)
