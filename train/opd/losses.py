"""Distillation losses: pure functions of tensors, each returning a per-token loss_B_T.

No masking or normalisation here: that is one reduction, `train.opd.reduction.token_mean`.
Log-probabilities are always taken over the FULL vocabulary first and gathered afterwards
(the paper's public code mixes raw teacher logits with log-softmax values inside one softmax).

Reference forms take full student and teacher logits; the forms the recipe uses take student
logits and the teacher's gathered `TokenScores`, and agree with the references (tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

NEG_INF = float("-inf")


def _up(x: torch.Tensor) -> torch.Tensor:
    """float32 for bf16/fp16/fp32 inputs (softmax over 150k logits needs it); float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def _first_occurrence(ids_B_T_U: torch.Tensor) -> torch.Tensor:
    """True where an id appears for the first time along the last dim (ids < 0 never count)."""
    same = ids_B_T_U[..., :, None] == ids_B_T_U[..., None, :]
    earlier = torch.ones(same.shape[-2:], dtype=torch.bool, device=ids_B_T_U.device).tril(-1)
    return (ids_B_T_U >= 0) & ~(same & earlier).any(-1)


def _renormalised_forward_kl(student_logp_B_T_U, teacher_logp_B_T_U, keep_B_T_U, temperature):
    """T^2 * KL(teacher_U || student_U), both renormalised over the kept ids U."""
    s = student_logp_B_T_U.masked_fill(~keep_B_T_U, NEG_INF)
    t = teacher_logp_B_T_U.masked_fill(~keep_B_T_U, NEG_INF)
    s = s - torch.logsumexp(s, dim=-1, keepdim=True)
    t = t - torch.logsumexp(t, dim=-1, keepdim=True)
    p_t = t.exp()
    # 0 * log 0 = 0 for ids outside U or with zero teacher mass; ids the student gives no mass but the
    # teacher does make the loss +inf, as KL says (the token filter never lets that happen in U).
    terms = torch.where(p_t > 0, p_t * (t - s), torch.zeros_like(p_t))
    return temperature**2 * terms.sum(-1)


def union_topk_forward_kl(student_logits_B_T_V: torch.Tensor, teacher_logits_B_T_V: torch.Tensor, k: int,
                          temperature: float = 1.0, teacher_temperature: float | None = None) -> torch.Tensor:
    """The paper's loss: per position, U = top-k(student) ∪ top-k(teacher) of logits / T; both
    distributions renormalised on U; T^2 * KL(teacher_U || student_U). With `teacher_temperature`, the
    teacher's logits are divided by that instead (U is the same: top-k does not depend on T)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, student_logits_B_T_V.shape[-1])
    t_temperature = temperature if teacher_temperature is None else teacher_temperature
    s_logp = torch.log_softmax(_up(student_logits_B_T_V) / temperature, dim=-1)
    t_logp = torch.log_softmax(_up(teacher_logits_B_T_V) / t_temperature, dim=-1)
    ids = torch.cat([s_logp.detach().topk(k, dim=-1).indices, t_logp.topk(k, dim=-1).indices], dim=-1)
    keep = _first_occurrence(ids)
    return _renormalised_forward_kl(s_logp.gather(-1, ids), t_logp.gather(-1, ids), keep, temperature)


def union_topk_forward_kl_from_scores(student_logits_B_T_V: torch.Tensor, scores,
                                      temperature: float | None = None) -> torch.Tensor:
    """`union_topk_forward_kl` from the teacher's gathered scores: U = the teacher's top-k (mapped
    into the student's vocabulary) ∪ the ids in `scores.extra_ids_B_T_E` (the student's top-k).
    Teacher ids with no student equivalent (-1) and student ids the teacher lacks (-inf) drop out of U.
    The teacher's log-probs are at `scores.temperature`; the student's at `temperature` (default: the same)."""
    if scores.extra_ids_B_T_E is None:
        raise ValueError("the union loss needs the student's top-k ids scored by the teacher (extra_ids_B_T_E)")
    temperature = scores.temperature if temperature is None else temperature
    s_logp = torch.log_softmax(_up(student_logits_B_T_V) / temperature, dim=-1)
    ids = torch.cat([scores.extra_ids_B_T_E, scores.topk_ids_B_T_K], dim=-1)
    t = _up(torch.cat([scores.extra_logp_B_T_E, scores.topk_logp_B_T_K], dim=-1))
    keep = _first_occurrence(ids) & torch.isfinite(t)
    return _renormalised_forward_kl(s_logp.gather(-1, ids.clamp(min=0)), t, keep, temperature)


def _jsd_chunk(student_logits, teacher_logits, beta: float, temperature: float) -> torch.Tensor:
    s = torch.log_softmax(_up(student_logits) / temperature, dim=-1)
    t = torch.log_softmax(_up(teacher_logits) / temperature, dim=-1)
    if beta == 0:
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)  # KL(teacher || student)
    if beta == 1:
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)  # KL(student || teacher)
    mixture = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), dim=0)
    kl_teacher = F.kl_div(mixture, t, reduction="none", log_target=True).sum(-1)
    kl_student = F.kl_div(mixture, s, reduction="none", log_target=True).sum(-1)
    return beta * kl_teacher + (1 - beta) * kl_student


def generalized_jsd(student_logits_B_T_V: torch.Tensor, teacher_logits_B_T_V: torch.Tensor, beta: float,
                    temperature: float = 1.0, chunk_tokens: int = 256) -> torch.Tensor:
    """TRL's generalized JSD over the full vocabulary, per position: β=0 KL(teacher‖student), β=1
    KL(student‖teacher), else β·KL(teacher‖M) + (1−β)·KL(student‖M) with M = β·p_t + (1−β)·p_s;
    logits / T, no T² factor. Computed `chunk_tokens` positions at a time, and recomputed in the
    backward pass, so [tokens x vocab] float32 tensors are never all held at once."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    shape = student_logits_B_T_V.shape[:-1]
    s = student_logits_B_T_V.reshape(-1, student_logits_B_T_V.shape[-1])
    t = teacher_logits_B_T_V.reshape(-1, teacher_logits_B_T_V.shape[-1])
    parts = []
    for start in range(0, s.shape[0], chunk_tokens):
        sc, tc = s[start:start + chunk_tokens], t[start:start + chunk_tokens]
        if torch.is_grad_enabled() and (sc.requires_grad or tc.requires_grad):
            parts.append(checkpoint(_jsd_chunk, sc, tc, beta, temperature, use_reentrant=False))
        else:
            parts.append(_jsd_chunk(sc, tc, beta, temperature))
    return torch.cat(parts).reshape(shape) if parts else s.new_zeros(shape)


def sampled_token_reverse_kl(student_logp_B_T: torch.Tensor, teacher_logp_B_T: torch.Tensor,
                             sampling_logp_B_T: torch.Tensor) -> torch.Tensor:
    """Per-token reverse KL as an advantage, the on-policy-distillation form for LLMs.

    advantage A = −(log p_student − log p_teacher) on the sampled token (no gradient through it);
    importance ratio ρ = p_student / p_sampler to the log-probs at sampling time (1 on-policy, but
    carries the gradient); loss = −ρ·A, whose value is the sampled reverse-KL estimate and whose
    gradient is the policy gradient −A·∇log p_student.
    """
    student, teacher, sampling = _up(student_logp_B_T), _up(teacher_logp_B_T), _up(sampling_logp_B_T)
    # Padding and tokens one side cannot represent have -inf log-probs: they give 0 loss and, unlike
    # 0 * inf, 0 gradient (the mask drops them from the mean anyway).
    finite = torch.isfinite(student.detach()) & torch.isfinite(teacher) & torch.isfinite(sampling)
    student = torch.where(finite, student, torch.zeros_like(student))
    teacher = torch.where(finite, teacher, torch.zeros_like(teacher))
    sampling = torch.where(finite, sampling, torch.zeros_like(sampling))
    advantage = -(student.detach() - teacher)
    ratio = torch.exp(student - sampling)
    return torch.where(finite, -ratio * advantage, torch.zeros_like(advantage))


def token_nll(logits_B_T_V: torch.Tensor, targets_B_T: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per token on reference transcripts (ignored positions: any target < 0 gives 0)."""
    logp = torch.log_softmax(_up(logits_B_T_V), dim=-1)
    nll = -logp.gather(-1, targets_B_T.clamp(min=0)[..., None]).squeeze(-1)
    return nll.masked_fill(targets_B_T < 0, 0.0)


def token_logp(logits_B_T_V: torch.Tensor, tokens_B_T: torch.Tensor, allowed_V: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """log p(token) per position over the full vocabulary (optionally the ASR-filtered one)."""
    logits = _up(logits_B_T_V) / temperature
    if allowed_V is not None:
        logits = logits.masked_fill(~allowed_V.to(logits.device), NEG_INF)
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens_B_T.clamp(min=0)[..., None]).squeeze(-1)
