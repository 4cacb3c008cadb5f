"""Batched decoding with the KV cache: greedy or sampled, left-padded prompts, the ASR token filter.

Written as a plain loop rather than `model.generate` because we need, per step, the filtered
log-probability of the chosen token, and explicit position ids for left-padded rows (transformers'
`generate` leaves position ids to the model, which counts padding as positions), and per-row keyed
sampling (below). Temperature and top-p come from transformers' own logits warpers.

Keyed sampling: given one int64 key per row, the row's token at decode step t is drawn by the
Gumbel-max trick from the SplitMix64 stream seeded with its key (output t*V + v for vocabulary entry
v). A row's samples then depend on its key alone, not on which other rows share its batch, so an
on-policy step samples the same transcripts whether it runs as one batch of 8, four micro-batches
of 2 or on two processes. torch's Generator cannot do this: one generator feeds the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from train.models.token_filter import apply_token_filter


@dataclass
class Generated:
    """tokens_B_T: new ids (pad after EOS); logprobs_B_T: log p(token) under the model's filtered
    distribution at temperature 1 (0 where masked); mask_B_T: True up to and including EOS;
    topk_ids_B_T_K: the model's k most likely (filtered) ids at each step, when asked for (meaningful where
    mask_B_T is true)."""

    tokens_B_T: torch.Tensor
    logprobs_B_T: torch.Tensor
    mask_B_T: torch.Tensor
    topk_ids_B_T_K: torch.Tensor | None = None

    @property
    def lengths_B(self) -> torch.Tensor:
        return self.mask_B_T.sum(-1)


def left_padded_positions(attention_mask_B_T: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, whatever its left padding."""
    return (attention_mask_B_T.long().cumsum(-1) - 1).clamp(min=0)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(keys_B: torch.Tensor, counters_N: torch.Tensor) -> torch.Tensor:
    """Output number `counter` of the SplitMix64 stream seeded with each key: a B x N int64 table.
    (Steele, Lea & Flood 2014; int64 multiplication wraps around in torch, as the algorithm needs.)"""
    z = keys_B[:, None] + (counters_N[None, :] + 1) * _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def keyed_sample(scores_B_V: torch.Tensor, keys_B: torch.Tensor, step: int) -> torch.Tensor:
    """One draw per row from softmax(scores_B_V) (-inf = excluded), with the randomness of row b at
    `step` taken from keys_B[b] only: argmax of scores + Gumbel noise."""
    vocab = scores_B_V.shape[-1]
    counters = step * vocab + torch.arange(vocab, device=scores_B_V.device)
    bits = splitmix64(keys_B.to(scores_B_V.device), counters)
    uniform = (_shift_right(bits, 11).double() + 0.5) / float(1 << 53)  # 53 random bits -> (0, 1)
    gumbel = -torch.log(-torch.log(uniform))
    return (scores_B_V.double() + gumbel).argmax(-1)


def sampling_warp(temperature: float, top_p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """scores_B_V -> the scores sampling draws from: temperature, then top-p (transformers' warpers)."""
    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    def warp(scores_B_V: torch.Tensor) -> torch.Tensor:
        for warper in warpers:
            scores_B_V = warper(None, scores_B_V)
        return scores_B_V
    return warp


@torch.no_grad()
def generate(model, batch: dict[str, torch.Tensor], allowed_V: torch.Tensor, eos_token_ids: list[int],
             pad_token_id: int, max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 1.0,
             top_p: float = 1.0, generator: torch.Generator | None = None, return_topk: int | None = None,
             all_done: Callable[[bool], bool] | None = None, sample_keys_B: torch.Tensor | None = None) -> Generated:
    """Decode up to `max_new_tokens` for each prompt in `batch` (the processor's left-padded output).

    Sampling draws from `generator` for the whole batch, or, with `sample_keys_B` (one int64 per row),
    from each row's own key (see the module docstring).
    `all_done(local_done) -> bool` keeps stepping until every process is done: under ZeRO-3 each
    forward gathers parameters collectively, so all ranks must run the same number of steps."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if sample_keys_B is not None and sample_keys_B.shape != (batch["input_ids"].shape[0],):
        raise ValueError(f"sample_keys_B needs one key per row: shape {tuple(sample_keys_B.shape)} for "
                         f"{batch['input_ids'].shape[0]} rows")
    device = batch["input_ids"].device
    attn_B_S = batch["attention_mask"]
    positions_B_S = left_padded_positions(attn_B_S)
    eos_ids = torch.tensor(sorted(set(eos_token_ids)), device=device)
    warp = sampling_warp(temperature, top_p)

    out = model(input_ids=batch["input_ids"], input_features=batch["input_features"],
                input_features_mask=batch["input_features_mask"], attention_mask=attn_B_S,
                position_ids=positions_B_S, use_cache=True, logits_to_keep=1)
    cache, next_pos_B = out.cache, positions_B_S[:, -1] + 1
    logits_B_V = out.logits[:, -1].float()
    batch_size = logits_B_V.shape[0]
    finished_B = torch.zeros(batch_size, dtype=torch.bool, device=device)
    tokens, logprobs, masks, topks = [], [], [], []
    for step in range(max_new_tokens):
        filtered_B_V = apply_token_filter(logits_B_V, allowed_V)
        logp_B_V = torch.log_softmax(filtered_B_V, dim=-1)
        if return_topk:
            topks.append(filtered_B_V.topk(min(return_topk, filtered_B_V.shape[-1]), dim=-1).indices)
        if do_sample:
            scores_B_V = warp(filtered_B_V)
            if sample_keys_B is not None:
                next_B = keyed_sample(scores_B_V, sample_keys_B, step)
            else:
                next_B = torch.multinomial(torch.softmax(scores_B_V, dim=-1), 1, generator=generator).squeeze(-1)
        else:
            next_B = filtered_B_V.argmax(-1)
        live_B = ~finished_B
        next_B = torch.where(live_B, next_B, torch.full_like(next_B, pad_token_id))
        tokens.append(next_B)
        logprobs.append(torch.where(live_B, logp_B_V.gather(-1, next_B[:, None]).squeeze(-1), 0.0))
        masks.append(live_B)
        finished_B = finished_B | torch.isin(next_B, eos_ids)
        done = bool(finished_B.all())
        if all_done is not None:
            done = all_done(done)
        if done or step == max_new_tokens - 1:
            break
        attn_B_S = torch.cat([attn_B_S, torch.ones_like(attn_B_S[:, :1])], dim=-1)
        out = model(input_ids=next_B[:, None], attention_mask=attn_B_S, position_ids=next_pos_B[:, None],
                    cache=cache, use_cache=True)
        cache, next_pos_B = out.cache, next_pos_B + 1
        logits_B_V = out.logits[:, -1].float()
    return Generated(torch.stack(tokens, 1), torch.stack(logprobs, 1), torch.stack(masks, 1),
                     torch.stack(topks, 1) if return_topk else None)


def transcribe(model, processor, audios, languages=None, max_new_tokens: int = 256, decoder=None,
               **options) -> list[str]:
    """Text for each 16 kHz mono clip: one batched decode (greedy unless `do_sample=True`), by `decoder`
    (a train.decode engine; default: this module's eager loop)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = processor(audios, languages)
    batch = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}
    decode = decoder.generate if decoder is not None else generate
    out = decode(model, batch, processor.allowed_token_mask(model.config.text_config.vocab_size),
                 processor.eos_token_ids, processor.pad_token_id, max_new_tokens, **options)
    return [processor.decode(row[mask].tolist()) for row, mask in zip(out.tokens_B_T, out.mask_B_T)]
