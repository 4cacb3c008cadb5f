"""Greedy decoding throughput and memory of a student shape with random weights.

    python scripts/bench_generate.py --config configs/models/ark_asr_3b.yaml            # GPU: bf16 + SDPA
    python scripts/bench_generate.py --config configs/models/tiny.yaml --device cpu    # anywhere
    python scripts/bench_generate.py --config configs/models/tiny.yaml --device cpu --engine static

A batch of clips of 2-30 s decodes exactly `--new-tokens` tokens (no EOS stop). Prints peak
memory, audio-seconds per second batched and one clip at a time (the baseline, same run), their
ratio, and how many clips got the same tokens both ways (and, for an engine other than the eager loop,
how many got the eager loop's tokens: "same_tokens_engine_vs_eager"); appends the row to
scripts/results/bench_generate.jsonl with the device name.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from train.cli import HelpFormatter, config_errors_exit
from train.config import ModelConfig, load_config
from train.decode import EAGER, ENGINES, decoder_named
from train.models import build_student

RESULTS = Path(__file__).resolve().parent / "results" / "bench_generate.jsonl"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clips(batch: int, min_s: float, max_s: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    seconds = np.linspace(min_s, max_s, batch)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


def _to(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}


def _decode(model, processor, clips, device, dtype, new_tokens, decoder=EAGER):
    allowed = processor.allowed_token_mask(model.config.text_config.vocab_size)
    batch = _to(processor(clips), device, dtype)
    # No EOS ids: every row decodes exactly `new_tokens` tokens.
    return decoder.generate(model, batch, allowed, [], processor.pad_token_id, max_new_tokens=new_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--config", default="configs/models/ark_asr_3b.yaml",
                        help="model config YAML (random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where it runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--dtype", default=None, help="override the config's dtype")
    parser.add_argument("--batch", type=int, default=16, help="clips in the batch")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="shortest clip")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest clip")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens every clip decodes (no EOS stop)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-clip-at-a-time baseline")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="decode engine (train/decode/); its tokens are compared with the eager loop's")
    parser.add_argument("--results", default=str(RESULTS), help="JSONL file the row is appended to")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    overrides = [f"dtype={args.dtype}"] if args.dtype else []
    cfg = load_config(ModelConfig, args.config, overrides)
    device = torch.device(args.device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, processor = build_student(cfg, device=device)
    model.eval()
    build_s = time.perf_counter() - t0
    dtype = next(model.parameters()).dtype
    clips = _clips(args.batch, args.min_seconds, args.max_seconds, seed=0)
    audio_s = sum(len(c) for c in clips) / 16000

    decoder = decoder_named(args.engine, device)
    # warm-up: kernels, allocator, and the static engine's buffers and graphs for this shape
    _decode(model, processor, clips, device, dtype, args.new_tokens, decoder)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    batched = _decode(model, processor, clips, device, dtype, args.new_tokens, decoder)
    _sync(device)
    batched_s = time.perf_counter() - t0
    row = {
        "config": args.config, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads", "dtype": str(dtype).removeprefix("torch."),
        "attn": cfg.attn_implementation, "engine": decoder.name, "batch": args.batch,
        "audio_seconds": round(audio_s, 1),
        "new_tokens": args.new_tokens, "build_seconds": round(build_s, 1),
        "batched_seconds": round(batched_s, 3), "batched_audio_s_per_s": round(audio_s / batched_s, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda"
        else None,
    }
    if decoder is not EAGER:
        eager = _decode(model, processor, clips, device, dtype, args.new_tokens)
        same = sum(int(torch.equal(a, b)) for a, b in zip(batched.tokens_B_T, eager.tokens_B_T))
        row["same_tokens_engine_vs_eager"] = f"{same}/{len(clips)}"
    if not args.no_baseline:
        _sync(device)
        t0 = time.perf_counter()
        same = 0
        for i, clip in enumerate(clips):
            alone = _decode(model, processor, [clip], device, dtype, args.new_tokens, decoder)
            same += int(torch.equal(alone.tokens_B_T[0], batched.tokens_B_T[i]))
        _sync(device)
        single_s = time.perf_counter() - t0
        row.update({"one_at_a_time_seconds": round(single_s, 3),
                    "one_at_a_time_audio_s_per_s": round(audio_s / single_s, 1),
                    "batched_speedup": round(single_s / batched_s, 2),
                    "same_tokens_batched_vs_alone": f"{same}/{len(clips)}"})
    print(json.dumps(row, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    with config_errors_exit():  # a wrong config key or value: one line, status 2
        main()
