"""The one place a per-token loss becomes a scalar: divided by the GLOBAL number of unmasked tokens.

Every micro-batch of an optimizer step, on every process, divides its summed loss by the same
number: the unmasked tokens of the whole step across gradient-accumulation micro-batches and
processes. DDP, DeepSpeed and FSDP average gradients over processes, so the sum is multiplied back
by the number of processes; train/engine.py sums the micro-batches' gradients without dividing
(`train.engine.averaged_over`). Then batch 8 x accumulation 1 and batch 2 x accumulation 4 give
the same update, and a process with short transcripts does not weigh more than one with long ones.
"""

from __future__ import annotations

import torch


def global_token_count(masks_B_T: list[torch.Tensor], accelerator=None) -> torch.Tensor:
    """Unmasked tokens over this step's micro-batches, summed over all processes (at least 1). A
    process with no masks (every clip skipped) still takes part in the sum, with 0."""
    if masks_B_T:
        device = masks_B_T[0].device
    else:
        device = accelerator.device if accelerator is not None else torch.device("cpu")
    local = torch.tensor(float(sum(int(m.sum()) for m in masks_B_T)), device=device)
    if accelerator is not None and accelerator.num_processes > 1:
        local = accelerator.reduce(local, reduction="sum")
    return local.clamp(min=1.0)


def token_mean(loss_B_T: torch.Tensor, mask_B_T: torch.Tensor, global_tokens: torch.Tensor | float,
               averaged_over: int = 1) -> torch.Tensor:
    """This micro-batch's share of the step loss: sum over unmasked tokens / global token count,
    times `averaged_over` = the processes the engines average gradients over (undoing that average)."""
    masked = torch.where(mask_B_T, loss_B_T, torch.zeros_like(loss_B_T))
    return masked.sum() * averaged_over / global_tokens
