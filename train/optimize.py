"""One optimizer step over gradient-accumulation micro-batches, shared by every recipe.

Each micro-batch's loss is computed by a callable inside accelerate's `accumulate` context (DDP
no_sync / DeepSpeed accumulation), already normalised by `train.opd.reduction.token_mean`. A
non-finite loss or gradient on any rank skips the whole step on all ranks.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch


def zero_loss(model) -> torch.Tensor:
    """A zero that touches every trainable parameter: keeps DDP/DeepSpeed collectives in step when a
    micro-batch has nothing to learn from (all clips skipped, or a non-finite loss)."""
    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0


def averaged_over(accelerator) -> int:
    """How many ways the engines average a micro-batch loss: processes x accumulation steps."""
    return accelerator.num_processes * accelerator.gradient_accumulation_steps


def accumulate_and_step(accelerator, model, optimizer, scheduler, micro_losses: Iterable[Callable[[], torch.Tensor]],
                        grad_clip: float) -> dict:
    """Backward every micro-batch, then clip and step. Returns this process's share of the step loss,
    whether the step was skipped as non-finite, and the gradient norm before clipping."""
    local, nonfinite, grad_norm = 0.0, False, None
    for compute in micro_losses:
        with accelerator.accumulate(model):
            loss = compute()
            finite = torch.isfinite(loss.detach()).float()
            if accelerator.num_processes > 1:
                finite = accelerator.reduce(finite, reduction="min")
            if not bool(finite):
                nonfinite = True
                loss = zero_loss(model)
            accelerator.backward(loss)
            local += float(loss.detach()) / averaged_over(accelerator)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
                if grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)).all():
                    nonfinite = True  # a finite loss can still give non-finite gradients
                if not nonfinite:
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad()
    return {"local_loss": local, "nonfinite": nonfinite, "grad_norm": float(grad_norm) if grad_norm is not None
            else None}
