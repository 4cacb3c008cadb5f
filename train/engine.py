"""The training engine: precision, backward, clipping, the non-finite skip, the optimizer and the LR
schedule, in one place and the same on every backend (one process, DDP, DeepSpeed ZeRO-2/3, FSDP2).

Precision. The trained parts are float32 masters. With a bfloat16 model config they compute in
bfloat16: under accelerate's autocast (one process, DDP, FSDP2's mixed-precision policy), or
DeepSpeed's bf16 mode, which keeps its own float32 masters in the optimizer. Frozen parts (a
frozen encoder, the teacher) stay in the model config's dtype. An AdamW step at lr 1e-5 on a
bfloat16 weight of 0.02 is below bfloat16's spacing there and rounds away: masters are not optional.
`mixed_precision: no` trains a bfloat16 model config in float32 throughout. Either way `final/` is
written in the model config's dtype, for deployment.

Step. Each micro-batch loss arrives in its final units (`train.opd.reduction.token_mean`: the
step's global token count, times the processes the engines average over), is backpropagated, and
gradients are synchronised with the last one only. Then the global gradient norm is clipped to
`optim.grad_clip`, AdamW steps and the schedule steps exactly once. accelerate's wrapped scheduler
would step once per process per update (it assumes a prepared dataloader), and its DeepSpeed
`backward` also steps the engine with DeepSpeed's own clipping: neither is used here.

Skip. A non-finite loss on any rank is backpropagated as NaN (the loss times NaN), so after
synchronisation every rank's gradient norm is NaN and every rank skips the same update: no weight,
no optimizer state and no schedule position changes. DeepSpeed's overflow check catches the same
NaN and skips inside its own step; `was_step_applied` tells the schedule.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Sequence

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

from accelerate.utils import DistributedType

from train.config import ConfigError, ModelConfig, RunConfig
from train.decode import make_decoder
from train.models.ctc import unwrap_student

def resolve_mixed_precision(cfg: RunConfig, model_cfg: ModelConfig) -> str:
    """`no` or `bf16`, the compute precision of the trained student: `auto` follows the model dtype."""
    if model_cfg.dtype == "float16":
        raise ConfigError(f"{cfg.student.model}: dtype float16 cannot be trained here (fp16 needs dynamic loss "
                          "scaling, which this engine does not do): use bfloat16")
    if cfg.mixed_precision == "auto":
        return "bf16" if model_cfg.dtype == "bfloat16" else "no"
    return cfg.mixed_precision


def storage_dtype(mixed_precision: str, model_cfg: ModelConfig) -> str:
    """The dtype the student is built or loaded in: the model config's under bf16 compute (its trained
    parts then become float32 masters, its frozen parts stay), float32 throughout without it."""
    return model_cfg.dtype if mixed_precision == "bf16" else "float32"


def keep_float32_masters(model: torch.nn.Module) -> int:
    """Trained parameters become float32 (frozen ones keep their dtype); returns how many were cast."""
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            cast += 1
    return cast


def is_zero3(accelerator) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def params_sharded(accelerator) -> bool:
    """Whether each rank holds only a shard of the student's weights (DeepSpeed ZeRO-3 or FSDP)."""
    return is_zero3(accelerator) or accelerator.distributed_type == DistributedType.FSDP


def autocast_forward(model: torch.nn.Module, device_type: str) -> None:
    """Every forward of `model` computes in bfloat16, wherever it is called from: the prepared wrapper's
    training forward, and rollouts, dev decoding and the listening probe on the unwrapped student
    (feature extraction and scoring outside the forward stay in float32)."""
    forward = model.forward

    @functools.wraps(forward)
    def bf16_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    model.forward = bf16_forward
    model.autocast_bf16 = True  # for code that calls the model's parts itself (train/decode/static.py)


def build_optimizer(cfg: RunConfig, model: torch.nn.Module):
    """AdamW over the trained parameters, and its schedule: linear warm-up, then constant or cosine
    down to `optim.min_lr_ratio` x lr at `max_steps`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the model config freezes every part")
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if o.schedule == "cosine":
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, o.warmup_steps, cfg.max_steps,
                                                                min_lr_rate=o.min_lr_ratio)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, o.warmup_steps)
    return optimizer, scheduler


def averaged_over(accelerator) -> int:
    """How many ways the engines average a micro-batch's gradient: the processes (DDP, ZeRO and FSDP
    all average over data-parallel ranks); accumulation is summed here, not averaged."""
    return accelerator.num_processes


def zero_loss(model) -> torch.Tensor:
    """A zero that touches every trainable parameter: keeps the processes' collectives in step when a
    micro-batch has nothing to learn from (all its clips skipped)."""
    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0


def _deepspeed_plugin(accelerator):
    return getattr(accelerator.state, "deepspeed_plugin", None)


def _configure_deepspeed(accelerator, cfg: RunConfig) -> None:
    """What the run config says, in DeepSpeed's config: its clipping, no accumulation of its own, and
    its overflow check on in bf16 (the non-finite skip relies on it)."""
    ds = _deepspeed_plugin(accelerator).deepspeed_config
    clip = ds.get("gradient_clipping", "auto")
    if clip not in ("auto", None) and float(clip) != cfg.optim.grad_clip:
        raise ConfigError(f"optim.grad_clip={cfg.optim.grad_clip}, but the DeepSpeed config sets gradient_clipping="
                          f"{clip}: remove it there (optim.grad_clip is applied on every backend)")
    accumulation = ds.get("gradient_accumulation_steps", "auto")
    if accumulation not in ("auto", None, 1):
        raise ConfigError(f"the DeepSpeed config sets gradient_accumulation_steps={accumulation}: remove it and set "
                          "optim.grad_accum (micro-batches are accumulated by train/engine.py on every backend)")
    ds["gradient_clipping"] = cfg.optim.grad_clip
    ds["gradient_accumulation_steps"] = 1
    # Batches are sized by audio seconds and tokens, not by count; DeepSpeed uses this only in its logs.
    ds["train_micro_batch_size_per_gpu"] = 1
    if isinstance(ds.get("bf16"), dict):
        ds["bf16"]["check_grad_overflow"] = True


class Engine:
    """The prepared student, AdamW and its schedule; `step` runs one update over micro-batch losses."""

    def __init__(self, accelerator, cfg: RunConfig, student: torch.nn.Module):
        self.accelerator, self.grad_clip = accelerator, cfg.optim.grad_clip
        self.inject_nonfinite = False  # fault injection for the tests: this rank's next step gets a NaN loss
        keep_float32_masters(student)
        optimizer, self.scheduler = build_optimizer(cfg, student)
        if cfg.optim.warmup_steps >= cfg.max_steps:
            accelerator.print(f"warning: optim.warmup_steps={cfg.optim.warmup_steps} >= max_steps={cfg.max_steps}: "
                              "the schedule never leaves its warm-up (the first update is at lr 0, the last at "
                              f"{(cfg.max_steps - 1) / cfg.optim.warmup_steps:.0%} of optim.lr)")
        self.deepspeed = _deepspeed_plugin(accelerator) is not None
        if self.deepspeed:
            _configure_deepspeed(accelerator, cfg)
        elif accelerator.mixed_precision == "bf16":
            autocast_forward(unwrap_student(student), accelerator.device.type)
        # The scheduler is deliberately not prepared: accelerate would step it once per process.
        self.model, self.optimizer = accelerator.prepare(student, optimizer)
        # Rollouts and dev decoding (train/decode/): static-cache on CUDA with whole weights, else eager.
        sharded = params_sharded(accelerator)
        self.decoder = make_decoder(cfg.decode, accelerator.device, sharded=sharded)
        why = {"eager": " (parameters are sharded: every rank decodes in step)" if sharded else
               " (no CUDA device)" if accelerator.device.type != "cuda" else ""}.get(self.decoder.name, "")
        accelerator.print(f"decode engine: {self.decoder.name}" + (why if cfg.decode.engine == "auto" else ""))

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        """The schedule's position (JSON-safe); the rest is in `accelerator.save_state`."""
        state = self.scheduler.state_dict()
        return {k: v for k, v in state.items() if k != "lr_lambdas"}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **state})

    def step(self, micro_losses: Sequence[Callable[[], torch.Tensor]]) -> dict:
        """Backward every micro-batch loss, then one clipped AdamW update and one schedule step, or
        none of them if any rank's loss or the global gradient norm is not finite. Returns this
        process's share of the step loss, whether the update was skipped, and the gradient norm
        before clipping."""
        local = 0.0
        for i, compute in enumerate(micro_losses):
            loss = compute()
            if self.inject_nonfinite and i == 0:
                loss = loss * float("nan")
            value = float(loss.detach())
            local += value / averaged_over(self.accelerator)
            if not math.isfinite(value):
                loss = (loss if loss.requires_grad else zero_loss(self.model)) * float("nan")
            self._backward(loss, last=i == len(micro_losses) - 1)
        applied, grad_norm = self._deepspeed_update() if self.deepspeed else self._update()
        if applied:
            self.scheduler.step()
        return {"local_loss": local, "nonfinite": not applied, "grad_norm": grad_norm}

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        """Gradients accumulate locally; the last micro-batch's backward synchronises them."""
        if self.deepspeed:
            self.model.set_gradient_accumulation_boundary(last)
            self.model.backward(loss, scale_wrt_gas=False)
            return
        with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
            self.accelerator.backward(loss)

    def _update(self) -> tuple[bool, float]:
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        norm = float(norm)
        applied = math.isfinite(norm)  # the same on every rank: gradients are synchronised by now
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad()
        return applied, norm

    def _deepspeed_update(self) -> tuple[bool, float]:
        self.model.step()  # clips at gradient_clipping = optim.grad_clip; skips on a non-finite norm
        norm = self.model.get_global_grad_norm()
        return bool(self.model.was_step_applied()), float(norm) if norm is not None else float("nan")
