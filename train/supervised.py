"""The supervised step: cross-entropy on transcript tokens, normalised by the step's global token
count, plus (optionally) an auxiliary CTC loss on the audio branch in the same units."""

from __future__ import annotations

from typing import Callable

import torch

from train.engine import averaged_over, zero_loss
from train.models.ctc import CTCOutput, StudentWithCTC, ctc_loss_per_clip, ctc_targets, infeasible
from train.models.scored_head import DEFAULT_CHUNK, ScoredPositions
from train.opd.losses import token_nll
from train.opd.reduction import global_token_count, token_mean


def shifted_targets(batch: dict, device) -> torch.Tensor:
    """labels shifted so that position t holds the token predicted from position t (-100 elsewhere)."""
    return batch["labels"][:, 1:].to(device)


def teacher_forced(model, batch: dict, per_token: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = token_nll,
                   chunk: int = DEFAULT_CHUNK):
    """The model's forward on a collated batch with transcripts, scored only where a transcript token
    is predicted: `per_token(logits_n_V, targets_n)` there (token NLL by default), chunk by chunk.
    Returns (values_N, targets_N), N = the batch's transcript tokens, row by row; or, for a
    `StudentWithCTC`, (its CTCOutput with values_N as `student_out`, targets_N)."""
    param = next(model.parameters())
    targets_B_S = shifted_targets(batch, param.device)
    scored_B_S = targets_B_S >= 0
    targets_N = targets_B_S[scored_B_S]
    positions = ScoredPositions.where(scored_B_S, lambda logits, at: per_token(logits, targets_N[at]), chunk)
    out = model(input_ids=batch["input_ids"].to(param.device), attention_mask=batch["attention_mask"].to(param.device),
                input_features=batch["input_features"].to(param.device, param.dtype),
                input_features_mask=batch["input_features_mask"].to(param.device), scored=positions)
    return out, targets_N


def sft_update(engine, batches: list[dict], ctc_weight: float = 0.0, eos_token_ids: list[int] | None = None,
               chunk: int = DEFAULT_CHUNK) -> dict:
    """Teacher-forced NLL (+ ctc_weight x CTC NLL) over every micro-batch of the step, one AdamW step.

    Both terms are sums over the step's clips divided by the global count of transcript tokens, so
    batch 8 x accumulation 1 and batch 2 x accumulation 4 give the same update. With ctc_weight > 0
    the model is a `StudentWithCTC`; its CTC targets are the transcript tokens without EOS."""
    accelerator, model = engine.accelerator, engine.model
    device = accelerator.device
    unlabelled = [b["ids"] for b in batches if b["size"] and "labels" not in b]
    if unlabelled:  # it would train on nothing and say loss 0: read manifests with read_labelled_sources
        raise ValueError(f"a supervised batch without labels (clips {unlabelled[0][:4]}...): some clip has no "
                         "transcript, and the collator keeps labels only where every clip has one")
    usable = [b for b in batches if b["size"] and "labels" in b]
    masks = [shifted_targets(b, device) >= 0 for b in usable]
    n_tokens = global_token_count(masks, accelerator)
    scale = averaged_over(accelerator)
    parts = {"nll": 0.0, "ctc": 0.0, "ctc_infeasible": 0}
    if ctc_weight > 0 and not isinstance(accelerator.unwrap_model(model), StudentWithCTC):
        raise TypeError("ctc_weight > 0 needs the student wrapped in train.models.ctc.StudentWithCTC")

    def micro_loss(batch: dict | None):
        def compute() -> torch.Tensor:
            if batch is None:
                return zero_loss(model)
            out, targets_N = teacher_forced(model, batch, chunk=chunk)
            nll_N = out.student_out if isinstance(out, CTCOutput) else out
            loss = token_mean(nll_N, torch.ones_like(targets_N, dtype=torch.bool), n_tokens, scale)
            parts["nll"] += float(loss.detach()) / scale
            if ctc_weight > 0:
                ctc_tgt, ctc_len = ctc_targets(batch["labels"].to(device), eos_token_ids or [])
                per_clip = ctc_loss_per_clip(out.ctc_log_probs_B_L_C, out.ctc_lengths_B, ctc_tgt, ctc_len,
                                             blank=out.ctc_log_probs_B_L_C.shape[-1] - 1)
                ctc = per_clip.sum() * scale / n_tokens  # the units token_mean gives the NLL
                parts["ctc"] += float(ctc.detach()) / scale
                parts["ctc_infeasible"] += infeasible(out.ctc_lengths_B, ctc_len)
                loss = loss + ctc_weight * ctc
            return loss
        return compute

    computes = [micro_loss(b if (b["size"] and "labels" in b) else None) for b in batches]
    step = engine.step(computes)
    totals = torch.tensor([step["local_loss"], parts["nll"], parts["ctc"], parts["ctc_infeasible"]],
                          dtype=torch.float64, device=device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    stats = {"loss": float(totals[0]), "tokens": float(n_tokens), "nonfinite": step["nonfinite"],
             "grad_norm": step["grad_norm"]}
    if ctc_weight > 0:
        stats.update(nll=float(totals[1]), ctc=float(totals[2]), ctc_infeasible=int(totals[3]))
    return stats
