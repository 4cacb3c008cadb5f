"""One optimizer step of on-policy distillation, in two phases.

collect(): for each micro-batch of the step, roll out the student (or take the reference
transcripts, GKD's lambda) and have the teacher score it; no gradient. Knowing every
micro-batch's token mask first gives the global token count the loss is normalised by.
update(): for each micro-batch, re-score the student's tokens with gradient, compute the loss,
backward (accelerate handles DDP no_sync / DeepSpeed accumulation), and step at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.config import OPDConfig
from train.opd.losses import (
    generalized_jsd,
    sampled_token_reverse_kl,
    token_logp,
    token_nll,
    union_topk_forward_kl_from_scores,
)
from train.opd.reduction import global_token_count, token_mean
from train.opd.rollout import Rollout, rescore, rollout
from train.optimize import accumulate_and_step, averaged_over, zero_loss
from train.supervised import shifted_targets, teacher_forced
from train.teachers.base import TokenScores


@dataclass
class MicroBatch:
    batch: dict
    rollout: Rollout | None  # None: the batch held no usable clip
    scores: TokenScores | None
    on_policy: bool


def reference_rollout(batch: dict, pad_token_id: int, device) -> Rollout:
    """The batch's reference transcripts laid out as a rollout (the off-policy part of GKD's lambda)."""
    labels = batch["labels"]
    targets = [row[row != -100] for row in labels]
    width = max(len(t) for t in targets)
    tokens = torch.full((len(targets), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(targets), width, dtype=torch.bool)
    for i, t in enumerate(targets):
        tokens[i, : len(t)], mask[i, : len(t)] = t, True
    return Rollout(tokens_B_T=tokens.to(device), mask_B_T=mask.to(device), logprobs_B_T=None,
                   source_B=torch.arange(len(targets), device=device),
                   prompt_ids_B_S=batch["prompt_ids"].to(device), prompt_mask_B_S=batch["prompt_mask"].to(device))


@torch.no_grad()
def collect(student, processor, teacher, batches: list[dict], opd: OPDConfig, on_policy: bool, sample_seed: int,
            device, all_done=None) -> list[MicroBatch]:
    """`sample_seed` (this step's): each clip's sampled rollouts are keyed by it and the clip's id, so
    they do not depend on how the step is split into micro-batches or processes."""
    out = []
    for batch in batches:
        if not batch["size"]:
            out.append(MicroBatch(batch, None, None, on_policy))
            continue
        use_policy = on_policy or "labels" not in batch
        if use_policy:
            ro = rollout(student, processor, batch, n_samples=opd.n_samples, max_new_tokens=opd.max_new_tokens,
                         do_sample=opd.do_sample, temperature=opd.sample_temperature, top_p=opd.top_p,
                         topk=opd.k if opd.loss == "union_topk_kl" else None, all_done=all_done,
                         sample_seed=sample_seed)
        else:
            ro = reference_rollout(batch, processor.pad_token_id, device)
        extra = ro.student_topk_ids_B_T_K
        if opd.loss == "union_topk_kl" and extra is None:  # reference transcripts: student top-k now
            logits = rescore(student, batch, ro)
            extra = logits.topk(opd.k, dim=-1).indices
        scores = teacher.score(batch, ro, extra_ids_B_T_E=extra, k=opd.k, temperature=opd.temperature,
                               full=opd.loss == "jsd")
        out.append(MicroBatch(batch, ro, scores, use_policy))
    return out


def distillation_loss(logits_B_T_V: torch.Tensor, mb: MicroBatch, opd: OPDConfig, allowed_V) -> torch.Tensor:
    """Per-token loss_B_T of the configured form (no masking or normalisation here)."""
    ro, scores = mb.rollout, mb.scores
    if opd.loss == "union_topk_kl":
        return union_topk_forward_kl_from_scores(logits_B_T_V, scores)
    if opd.loss == "jsd":
        if scores.full_logp_B_T_V is None:
            raise ValueError("opd.loss=jsd needs the teacher's full-vocabulary log-probs (same vocabulary)")
        return generalized_jsd(logits_B_T_V, scores.full_logp_B_T_V, opd.beta, temperature=1.0)
    student_logp = token_logp(logits_B_T_V, ro.tokens_B_T, allowed_V)
    sampling = ro.logprobs_B_T if ro.logprobs_B_T is not None else student_logp.detach()
    return sampled_token_reverse_kl(student_logp, scores.sampled_logp_B_T, sampling)


def update(accelerator, student, optimizer, scheduler, micro: list[MicroBatch], opd: OPDConfig, allowed_V,
           grad_clip: float) -> dict:
    """Backward every micro-batch with the global token normalisation, then step (unless non-finite)."""
    masks = [mb.scores.mask_B_T for mb in micro if mb.scores is not None]
    n_tokens = global_token_count(masks, accelerator)
    scale = averaged_over(accelerator)
    # The reference cross-entropy (opd.ce_weight) has its own global count: the step's transcript tokens.
    ce_masks = [shifted_targets(mb.batch, accelerator.device) >= 0 for mb in micro
                if opd.ce_weight and mb.rollout is not None and _has_reference(mb)]
    ce_tokens = global_token_count(ce_masks, accelerator)
    seen = {"kl": 0.0, "agree": 0, "scored": 0}

    def micro_loss(mb: MicroBatch):
        def compute() -> torch.Tensor:
            if mb.rollout is None:
                return zero_loss(student)
            logits = rescore(student, mb.batch, mb.rollout)
            loss = token_mean(distillation_loss(logits, mb, opd, allowed_V), mb.scores.mask_B_T, n_tokens, scale)
            if opd.ce_weight and _has_reference(mb):
                loss = loss + opd.ce_weight * _reference_ce(student, mb.batch, ce_tokens, scale)
            with torch.no_grad():
                m = mb.scores.mask_B_T
                if mb.scores.extra_ids_B_T_E is not None:
                    seen["kl"] += float(union_topk_forward_kl_from_scores(logits.detach(), mb.scores)[m].sum())
                seen["agree"] += int((logits.detach().argmax(-1) == mb.scores.topk_ids_B_T_K[..., 0])[m].sum())
                seen["scored"] += int(m.sum())
            return loss
        return compute

    step = accumulate_and_step(accelerator, student, optimizer, scheduler, [micro_loss(mb) for mb in micro],
                               grad_clip)
    sums = torch.tensor([step["local_loss"], seen["kl"], seen["agree"], seen["scored"]], dtype=torch.float64,
                        device=accelerator.device)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    loss_sum, kl_sum, agree, scored = sums.tolist()
    kl_known = scored and opd.loss == "union_topk_kl"  # the other losses do not score the union top-k
    return {"loss": loss_sum, "tokens": float(n_tokens), "kl": kl_sum / scored if kl_known else None,
            "agreement": agree / scored if scored else None, "nonfinite": step["nonfinite"],
            "grad_norm": step["grad_norm"]}


def _has_reference(mb: MicroBatch) -> bool:
    """An on-policy micro-batch whose clips carry reference transcripts (off-policy ones are the reference)."""
    return mb.on_policy and "labels" in mb.batch


def _reference_ce(student, batch: dict, ce_tokens: torch.Tensor, averaged_over: int) -> torch.Tensor:
    """Cross-entropy on the reference transcript: this micro-batch's summed token NLL over the step's
    global count of reference tokens, so that it too is invariant to how the step is split."""
    out, targets = teacher_forced(student, batch)
    return token_mean(token_nll(out.logits[:, :-1], targets), targets >= 0, ce_tokens, averaged_over)
