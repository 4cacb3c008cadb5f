"""One optimizer step of on-policy distillation, in two phases.

collect(): for each micro-batch of the step, roll out the student (or take the reference
transcripts, GKD's lambda) and have the teacher score it; no gradient. Knowing every
micro-batch's token mask first gives the global token count the loss is normalised by.
update(): for each micro-batch, re-score the student's tokens with gradient (logits only at the
scored positions, a chunk at a time), compute the loss, backward; train/engine.py steps at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.config import OPDConfig
from train.opd.losses import (
    generalized_jsd,
    sampled_token_reverse_kl,
    token_logp,
    union_topk_forward_kl_from_scores,
)
from train.engine import averaged_over, zero_loss
from train.models.scored_head import DEFAULT_CHUNK
from train.opd.reduction import global_token_count, token_mean
from train.opd.rollout import Rollout, rescore_at, rollout
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
            device, all_done=None, chunk: int = DEFAULT_CHUNK, decoder=None) -> list[MicroBatch]:
    """`sample_seed` (this step's): each clip's sampled rollouts are keyed by it and the clip's id, so
    they do not depend on how the step is split into micro-batches or processes. `on_policy` is the
    step's GKD coin, the same on every rank. `all_done` (sharded parameters: every forward is a
    collective) also makes every rank roll out a micro-batch if any rank's lacks transcripts. `decoder`:
    the train.decode engine that rolls out (default: the eager reference)."""
    out = []
    for batch in batches:
        if not batch["size"]:
            out.append(MicroBatch(batch, None, None, on_policy))
            continue
        labelled = "labels" in batch if all_done is None else all_done("labels" in batch)
        use_policy = on_policy or not labelled
        if use_policy:
            ro = rollout(student, processor, batch, n_samples=opd.n_samples, max_new_tokens=opd.max_new_tokens,
                         do_sample=opd.do_sample, temperature=opd.sample_temperature, top_p=opd.top_p,
                         topk=opd.k if opd.loss == "union_topk_kl" else None, all_done=all_done,
                         sample_seed=sample_seed, decoder=decoder)
        else:
            ro = reference_rollout(batch, processor.pad_token_id, device)
        extra = ro.student_topk_ids_B_T_K
        if opd.loss == "union_topk_kl" and extra is None:  # reference transcripts: the student's top-k now
            extra = _student_topk(student, batch, ro, opd.k, chunk)
        scores = teacher.score(batch, ro, extra_ids_B_T_E=extra, k=opd.k, temperature=opd.teacher_T,
                               full=opd.loss == "jsd")
        out.append(MicroBatch(batch, ro, scores, use_policy))
    return out


def _student_topk(student, batch: dict, ro: Rollout, k: int, chunk: int) -> torch.Tensor:
    """The student's k most likely ids at every rollout position (-1 where masked)."""
    ids_N_K = rescore_at(student, batch, ro, ro.mask_B_T, lambda logits, _: logits.topk(k, dim=-1).indices, chunk)
    out = torch.full((*ro.mask_B_T.shape, k), -1, dtype=torch.long, device=ids_N_K.device)
    out[ro.mask_B_T.to(out.device)] = ids_N_K
    return out


@dataclass
class ScoredTokens:
    """What the loss needs at each scored rollout position, flattened (N positions, row by row): the
    sampled token, the student's log-prob of it at sampling time (None for reference transcripts),
    and the teacher's scores."""

    tokens_N: torch.Tensor
    sampling_logp_N: torch.Tensor | None
    scores: TokenScores

    @classmethod
    def of(cls, mb: MicroBatch) -> "ScoredTokens":
        m = mb.scores.mask_B_T
        logp = mb.rollout.logprobs_B_T
        return cls(mb.rollout.tokens_B_T[m], logp[m] if logp is not None else None, mb.scores.select(m))

    def __getitem__(self, at: slice) -> "ScoredTokens":
        return ScoredTokens(self.tokens_N[at], self.sampling_logp_N[at] if self.sampling_logp_N is not None else None,
                            self.scores.select(at))


def distillation_loss(logits_N_V: torch.Tensor, scored: ScoredTokens, opd: OPDConfig, allowed_V) -> torch.Tensor:
    """Per-token loss_N of the configured form (no normalisation here)."""
    scores = scored.scores
    if opd.loss == "union_topk_kl":
        return union_topk_forward_kl_from_scores(logits_N_V, scores, temperature=opd.temperature)
    if opd.loss == "jsd":
        if scores.full_logp_B_T_V is None:
            raise ValueError("opd.loss=jsd needs the teacher's full-vocabulary log-probs (same vocabulary)")
        # The teacher's log-probs are at its temperature already (log_softmax leaves them as they are);
        # the student's logits are divided by opd.temperature here, as generalized_jsd would divide both.
        student = (logits_N_V if opd.temperature == 1.0  # at least float32 before dividing
                   else logits_N_V.to(torch.promote_types(logits_N_V.dtype, torch.float32)) / opd.temperature)
        return generalized_jsd(student, scores.full_logp_B_T_V, opd.beta, temperature=1.0)
    student_logp = token_logp(logits_N_V, scored.tokens_N, allowed_V)
    sampling = scored.sampling_logp_N if scored.sampling_logp_N is not None else student_logp.detach()
    return sampled_token_reverse_kl(student_logp, scores.sampled_logp_B_T, sampling)


def update(engine, micro: list[MicroBatch], opd: OPDConfig, allowed_V, chunk: int = DEFAULT_CHUNK) -> dict:
    """Backward every micro-batch with the global token normalisation, then step (unless non-finite).
    The student's logits exist only at scored positions, `chunk` of them at a time."""
    accelerator, student = engine.accelerator, engine.model
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
            scored = ScoredTokens.of(mb)
            agree_N = torch.zeros(len(scored.tokens_N), dtype=torch.bool, device=scored.tokens_N.device)

            def per_token(logits_n_V: torch.Tensor, at: slice) -> torch.Tensor:
                part = scored[at]
                with torch.no_grad():  # written again, identically, when the chunk is recomputed
                    agree_N[at] = logits_n_V.argmax(-1) == part.scores.topk_ids_B_T_K[..., 0]
                return distillation_loss(logits_n_V, part, opd, allowed_V)

            loss_N = rescore_at(student, mb.batch, mb.rollout, mb.scores.mask_B_T, per_token, chunk)
            loss = token_mean(loss_N, torch.ones_like(agree_N), n_tokens, scale)
            if opd.ce_weight and _has_reference(mb):
                loss = loss + opd.ce_weight * _reference_ce(student, mb.batch, ce_tokens, scale, chunk)
            if opd.loss == "union_topk_kl":  # the loss is the per-token KL: logged as it is
                seen["kl"] += float(loss_N.detach().sum())
            seen["agree"] += int(agree_N.sum())
            seen["scored"] += len(agree_N)
            return loss
        return compute

    step = engine.step([micro_loss(mb) for mb in micro])
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


def _reference_ce(student, batch: dict, ce_tokens: torch.Tensor, averaged_over: int, chunk: int) -> torch.Tensor:
    """Cross-entropy on the reference transcript: this micro-batch's summed token NLL over the step's
    global count of reference tokens, so that it too is invariant to how the step is split."""
    nll_N, _ = teacher_forced(student, batch, chunk=chunk)
    return nll_N.sum() * averaged_over / ce_tokens
