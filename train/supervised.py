"""The supervised step: cross-entropy on transcript tokens, normalised by the step's global token count."""

from __future__ import annotations

import torch

from train.opd.losses import token_nll
from train.opd.reduction import global_token_count, token_mean
from train.optimize import accumulate_and_step, averaged_over, zero_loss


def _targets(batch: dict, device) -> torch.Tensor:
    """labels shifted so that position t holds the token predicted from position t (-100 elsewhere)."""
    return batch["labels"][:, 1:].to(device)


def sft_update(accelerator, model, optimizer, scheduler, batches: list[dict], grad_clip: float) -> dict:
    """Teacher-forced NLL over every micro-batch of the step, one AdamW step."""
    device = accelerator.device
    usable = [b for b in batches if b["size"] and "labels" in b]
    masks = [_targets(b, device) >= 0 for b in usable]
    n_tokens = global_token_count(masks or [torch.zeros(1, dtype=torch.bool, device=device)], accelerator)
    scale = averaged_over(accelerator)

    def micro_loss(batch: dict | None):
        def compute() -> torch.Tensor:
            if batch is None:
                return zero_loss(model)
            param = next(model.parameters())
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           input_features=batch["input_features"].to(device, param.dtype),
                           input_features_mask=batch["input_features_mask"].to(device)).logits[:, :-1]
            targets = _targets(batch, device)
            return token_mean(token_nll(logits, targets), targets >= 0, n_tokens, scale)
        return compute

    computes = [micro_loss(b if (b["size"] and "labels" in b) else None) for b in batches]
    step = accumulate_and_step(accelerator, model, optimizer, scheduler, computes, grad_clip)
    total = torch.tensor(step["local_loss"], dtype=torch.float64, device=device)
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, reduction="sum")
    return {"loss": float(total), "tokens": float(n_tokens), "nonfinite": step["nonfinite"],
            "grad_norm": step["grad_norm"]}
