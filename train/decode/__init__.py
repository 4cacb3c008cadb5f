"""Decode engines: one interface for rollouts, dev evaluation and pseudo-labelling.

    decoder = make_decoder(cfg.decode, sharded=params_sharded(accelerator))
    out = decoder.generate(model, batch, allowed_V, eos_ids, pad_id, max_new_tokens=64, do_sample=True,
                           sample_keys_B=keys, return_topk=32)       # -> train.models.generation.Generated

A `Decoder` takes the processor's left-padded batch and decoding options, and gives back tokens,
the mask up to EOS, the log-probs of the chosen tokens under the filtered distribution and,
when asked, top-k ids. Losses and teachers only ever see that result, so a backend can change
without them knowing which one ran:
- `eager`: the reference loop (train/models/generation.py): transformers' forward with its
  dynamic cache, every step. Runs anywhere, sharded parameters included (ZeRO-3/FSDP keep all
  ranks in step through `all_done`).
- `static`: train/decode/static.py: static KV cache, CUDA graphs, device-side choices, compaction
  of finished rows. Needs whole weights on the rank. Gives the reference's tokens (fp32, exactly
  on CPU) and log-probs (to float rounding).
- Later, a serving engine (vLLM, SGLang) is one more class with this `generate`. Both register
  GLM-ASR, but their GLM-ASR model assumes a Llama text backbone: a Qwen2 decoder's q/k/v biases
  would be dropped there, which a parity test against `eager` (tests/decode/) would catch.
"""

from __future__ import annotations

from typing import Protocol

import torch

from train.decode.static import StaticCacheDecoder, has_sharded_parameters
from train.models.generation import Generated, generate

ENGINES = ("auto", "eager", "static")


class Decoder(Protocol):
    name: str

    def generate(self, model, batch: dict[str, torch.Tensor], allowed_V: torch.Tensor, eos_token_ids: list[int],
                 pad_token_id: int, max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, return_topk: int | None = None,
                 all_done=None, sample_keys_B: torch.Tensor | None = None) -> Generated: ...


class EagerDecoder:
    """The reference loop behind the `Decoder` interface."""

    name = "eager"

    def generate(self, model, batch, allowed_V, eos_token_ids, pad_token_id, max_new_tokens=256, **options):
        return generate(model, batch, allowed_V, eos_token_ids, pad_token_id, max_new_tokens, **options)


EAGER = EagerDecoder()


def make_decoder(cfg=None, device: torch.device | str | None = None, sharded: bool = False) -> Decoder:
    """The engine `cfg` (a train.config.DecodeConfig, or None for the defaults) asks for.
    `auto` is `static` on CUDA with whole weights, else `eager`; `static` with sharded parameters is
    refused here, at start, rather than on the first rollout."""
    from train.config import DecodeConfig

    cfg = cfg or DecodeConfig()
    device = torch.device(device) if device is not None else None
    engine = cfg.engine
    if engine == "auto":
        engine = "static" if device is not None and device.type == "cuda" and not sharded else "eager"
    if engine == "eager":
        return EAGER
    if sharded:
        raise ValueError("decode.engine=static needs whole weights on every rank, and this run shards them "
                         "(ZeRO-3 or FSDP): set decode.engine=eager or auto")
    return StaticCacheDecoder(cuda_graphs=cfg.cuda_graphs, compile=cfg.compile, check_every=cfg.check_every,
                              compact=cfg.compact, length_bucket=cfg.length_bucket, bf16_copy=cfg.bf16_copy)


def decoder_named(engine: str, device: torch.device | str | None) -> Decoder:
    """For the command lines (`--decode-engine`): the named engine with the default settings."""
    from train.config import DecodeConfig

    return make_decoder(DecodeConfig(engine=engine), device)


__all__ = ["Decoder", "EAGER", "ENGINES", "EagerDecoder", "StaticCacheDecoder", "decoder_named",
           "has_sharded_parameters", "make_decoder"]
