"""The scoring core both teachers share: from prompts, audio and a rollout to TokenScores.

    model = TeacherModel(embed=..., forward=..., audio_token_id=..., pad_id=..., device=...)
    scores, dropped = score_rollout(model, token_map, prompts_B, audio_B, rollout.tokens_B_T, rollout.mask_B_T,
                                    rows_per_forward=4, k=32)

A teacher brings what is its own: each row's prompt ids (its prompt text, its placeholder count, any
language header) and audio embeddings (its encoder, run once per utterance), and how its model is
called. Everything between those and the scores is done here, once:

- one row = left padding, the prompt, then the rollout tokens mapped into the teacher's vocabulary;
- the audio embeddings replace the placeholders of the prompt columns (a rollout token is never audio);
- attention mask and left-padded position ids (position 0 on each row's first prompt token);
- one forward keeping the last new + 1 positions: column S-1+t of a row whose prompt ends at column
  S-1 predicts rollout token t, so the last kept column (it predicts nothing scored) is dropped;
- log-probs over the teacher's full vocabulary gathered in the student's ids (TokenMap.gather_scores),
  `rows_per_forward` rows at a time (base.score_in_chunks).

A student token the teacher has no token for (TokenMap.to_teacher gives -1) stands as the teacher's
pad id WITH attention on. Later positions then still see a token in that place, as the student did,
and the position ids stay those of the student's sequence (a hole in the attention mask would shift
every later position id by one: left_padded_positions counts attended columns). The unmapped
position's own score is meaningless and is dropped: False in the returned mask, counted in `dropped`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from train.models.generation import left_padded_positions
from train.teachers.base import TokenScores, score_in_chunks
from train.teachers.token_map import TokenMap


@dataclass
class TeacherModel:
    """What the core needs of a teacher's language model.

    embed(ids_B_L) -> embeds_B_L_D: its token embeddings.
    forward(embeds_B_L_D, attention_mask_B_L, position_ids_B_L, logits_to_keep) -> logits of the last
        `logits_to_keep` positions (B x keep x V).
    pad_id: what stands in padding columns and for unmapped rollout tokens; audio_token_id: the placeholder.
    """

    embed: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
    audio_token_id: int
    pad_id: int
    device: torch.device


def embed_with_audio(embed: Callable[[torch.Tensor], torch.Tensor], ids_B_L: torch.Tensor,
                     placeholder_B_L: torch.Tensor, audio_N_D: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the `placeholder_B_L` positions replaced by the audio rows, in row-major order."""
    count = int(placeholder_B_L.sum())
    if count != audio_N_D.shape[0]:
        raise RuntimeError(f"{count} audio placeholders for {audio_N_D.shape[0]} audio embeddings: the teacher's "
                           "prompt and its audio encoder disagree on the audio token count")
    embeds_B_L_D = embed(ids_B_L)
    return embeds_B_L_D.masked_scatter(placeholder_B_L[..., None], audio_N_D.to(embeds_B_L_D.dtype))


def build_rows(prompts_B: Sequence[torch.Tensor], teacher_tokens_B_T: torch.Tensor, mask_B_T: torch.Tensor,
               pad_id: int, audio_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids_B_L, attention_mask_B_L, placeholder_B_L): left-padded prompts, then the rollout tokens.

    Unmapped tokens (-1) stand as `pad_id` with attention on (the rule in the module docstring);
    columns past a row's end (mask False) are not attended. Placeholders are looked up in the prompt
    columns only."""
    rows, new = teacher_tokens_B_T.shape
    width = max(len(p) for p in prompts_B)
    ids_B_L = torch.full((rows, width + new), pad_id, dtype=torch.long, device=teacher_tokens_B_T.device)
    attn_B_L = torch.zeros_like(ids_B_L)
    for b, prompt in enumerate(prompts_B):
        ids_B_L[b, width - len(prompt): width] = prompt
        attn_B_L[b, width - len(prompt): width] = 1
    placeholder_B_L = torch.zeros_like(ids_B_L, dtype=torch.bool)
    placeholder_B_L[:, :width] = ids_B_L[:, :width] == audio_token_id
    ids_B_L[:, width:] = teacher_tokens_B_T.masked_fill(teacher_tokens_B_T < 0, pad_id)
    attn_B_L[:, width:] = mask_B_T.long()
    return ids_B_L, attn_B_L, placeholder_B_L


def teacher_logits(model: TeacherModel, prompts_B: Sequence[torch.Tensor], audio_B: Sequence[torch.Tensor],
                   teacher_tokens_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """logits_B_T_V: the teacher's logits at the positions that predict each rollout token (one forward)."""
    ids_B_L, attn_B_L, placeholder_B_L = build_rows(prompts_B, teacher_tokens_B_T, mask_B_T, model.pad_id,
                                                    model.audio_token_id)
    embeds_B_L_D = embed_with_audio(model.embed, ids_B_L, placeholder_B_L, torch.cat(list(audio_B)))
    new = teacher_tokens_B_T.shape[1]
    # Kept: the prompt's last column (predicts token 0) ... the last token's (predicts nothing scored).
    return model.forward(embeds_B_L_D, attn_B_L, left_padded_positions(attn_B_L), new + 1)[:, :new]


def score_rollout(model: TeacherModel, token_map: TokenMap, prompts_B: Sequence[torch.Tensor],
                  audio_B: Sequence[torch.Tensor], tokens_B_T: torch.Tensor, mask_B_T: torch.Tensor,
                  rows_per_forward: int | None = None, extra_ids_B_T_E: torch.Tensor | None = None, k: int = 32,
                  temperature: float = 1.0, full: bool = False) -> tuple[TokenScores, int]:
    """TokenScores of student rollout rows (tokens_B_T in the student's ids) and the number of positions
    dropped (unmapped sampled tokens), on the rollout's device. prompts_B[b], audio_B[b]: row b's prompt
    ids and audio embeddings (rows of one utterance may share the same tensors)."""
    if len(prompts_B) != tokens_B_T.shape[0] or len(audio_B) != tokens_B_T.shape[0]:
        raise ValueError(f"{tokens_B_T.shape[0]} rollout rows, {len(prompts_B)} prompts, {len(audio_B)} audio")
    device = model.device
    student_B_T, mask_B_T = tokens_B_T.to(device), mask_B_T.to(device).bool()
    teacher_B_T = token_map.to_teacher(student_B_T)
    extra = extra_ids_B_T_E.to(device) if extra_ids_B_T_E is not None else None

    def score_rows(rows: slice) -> tuple[TokenScores, int]:
        logits = teacher_logits(model, [p.to(device) for p in prompts_B[rows]], audio_B[rows], teacher_B_T[rows],
                                mask_B_T[rows])
        return token_map.gather_scores(logits, student_B_T[rows], mask_B_T[rows], k, temperature,
                                       extra[rows] if extra is not None else None, full)

    scores, dropped = score_in_chunks(tokens_B_T.shape[0], rows_per_forward, score_rows)
    return scores.to(tokens_B_T.device), dropped
