"""Everything the GPU should confirm, in one run: decode step time (static engine vs eager), RTFx,
build time, one OPD step split into rollout / teacher / update with tokens/s and MFU, batch invariance.

    bash scripts/bench_gpu.sh                                                         # one H200, < 8 min
    DEVICE=cpu MODEL=configs/models/tiny.yaml bash scripts/bench_gpu.sh               # the dry run

Random weights (the model config's shape and dtype); no EOS, so every row decodes its full length.
Appends one JSON line to scripts/results/bench_gpu.jsonl (the keys below; README and checks read them).
- decode_ms_per_step[_eager]: per decode step at batch 1/16/64, from two lengths (the prefill cancels).
- rtfx_b64: bench_eval's forced 3 tokens per audio-second, 128 clips of 2-30 s, batch 64, static engine.
- opd_step: `opd_clips` clips of 4-20 s, greedy rollouts of 64 tokens, a same-shape random teacher,
  the paper's loss; medians over the timed steps. update_mfu counts 2 x params x tokens for each
  forward and 4 x for the backward of the trained decoder (attention FLOPs left out: a lower bound).
- same_tokens_*: rows whose greedy tokens agree exactly (engine vs eager; batched vs one clip alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train.cli import HelpFormatter, config_errors_exit  # noqa: E402
from train.config import DecodeConfig, DistillConfig, ModelConfig, load_config  # noqa: E402
from train.decode import EAGER, make_decoder  # noqa: E402
from train.eval.timed import synchronize  # noqa: E402
from train.models import build_student  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_gpu.jsonl"
# Dense bf16 peak, for MFU (vendor datasheets; tensor cores without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def clips(count: int, low: float, high: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in np.linspace(low, high, count)]


def to_device(batch: dict, device, dtype) -> dict:
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def timed(device, fn):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def decode_ms_per_step(decoder, model, processor, batch_size: int, short: int, long: int, device, dtype) -> float:
    """(time of `long` tokens - time of `short` tokens) / (long - short): the prefill cancels out."""
    batch = to_device(processor(clips(batch_size, 4.0, 20.0, seed=batch_size)), device, dtype)
    allowed, pad = processor.allowed_token_mask(model.config.text_config.vocab_size), processor.pad_token_id
    for n in (short, long):  # warm-up: kernels, allocator, and the static engine's graphs for both lengths
        decoder.generate(model, batch, allowed, [], pad, max_new_tokens=n)
    _, t_short = timed(device, lambda: decoder.generate(model, batch, allowed, [], pad, max_new_tokens=short))
    _, t_long = timed(device, lambda: decoder.generate(model, batch, allowed, [], pad, max_new_tokens=long))
    return round(1000 * (t_long - t_short) / (long - short), 3)


def same_tokens(a, b) -> int:
    return sum(int(torch.equal(x, y)) for x, y in zip(a.tokens_B_T, b.tokens_B_T))


def batch_invariance(decoder, model, processor, count: int, new_tokens: int, device, dtype) -> str:
    """Rows whose greedy tokens in one padded batch equal their tokens decoded alone."""
    audio = clips(count, 4.0, 20.0, seed=7)
    allowed, pad = processor.allowed_token_mask(model.config.text_config.vocab_size), processor.pad_token_id
    together = decoder.generate(model, to_device(processor(audio), device, dtype), allowed, [], pad, new_tokens)
    same = 0
    for i, clip in enumerate(audio):
        alone = decoder.generate(model, to_device(processor([clip]), device, dtype), allowed, [], pad, new_tokens)
        same += int(torch.equal(alone.tokens_B_T[0], together.tokens_B_T[i]))
    return f"{same}/{count}"


def engine_vs_eager(decoder, model, processor, count: int, new_tokens: int, device, dtype) -> str:
    batch = to_device(processor(clips(count, 4.0, 20.0, seed=3)), device, dtype)
    allowed, pad = processor.allowed_token_mask(model.config.text_config.vocab_size), processor.pad_token_id
    ours = decoder.generate(model, batch, allowed, [], pad, new_tokens)
    return f"{same_tokens(ours, EAGER.generate(model, batch, allowed, [], pad, new_tokens))}/{count}"


def rtfx(decoder, model, processor, batch_size: int, count: int, device) -> float:
    from bench_eval import ForcedLengthTranscriber, synthetic_utterances

    from train.eval.timed import timed_transcription

    transcriber = ForcedLengthTranscriber(model, processor, 3.0, "bench_gpu", decoder=decoder)
    result = timed_transcription(transcriber, synthetic_utterances(count), batch_size=batch_size, warmup_batches=1)
    return round(result.rtfx, 1)


def update_flops(model, micro) -> tuple[float, int]:
    """(FLOPs, tokens) of the update phase over every rollout row's real tokens (prompt, audio, sampled):
    the same-shape teacher's forward and the student's, 2 x decoder params each, and the backward of the
    trained decoder weights, 4 x (activation and weight gradients)."""
    decoder_params = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n)
    trained = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "language_model" in n)
    tokens = sum(int(mb.rollout.prompt_mask_B_S.sum() + mb.rollout.mask_B_T.sum()) for mb in micro if mb.rollout)
    return tokens * (2 * decoder_params + 2 * decoder_params + 4 * trained), tokens


def opd_step(model_config: str, clip_count: int, steps: int, device) -> dict:
    """A few OPD steps as train/distill.py runs them; medians of all but the first."""
    from train.data.loader import Collator
    from train.distill import build_teacher
    from train.engine import Engine
    from train.opd.step import collect, update
    from train.recipe import build_student_model, make_accelerator, student_model_config

    cfg = load_config(DistillConfig, "configs/distill/tiny_random_teacher.yaml", [
        f"student.model={model_config}", f"teacher.model={model_config}", "teacher.init_std=null",
        "opd.max_new_tokens=64", "opd.do_sample=false", "log.wandb_mode=disabled", "output_dir=/tmp/bench_gpu_opd"])
    model_cfg = student_model_config(cfg)
    accelerator = make_accelerator(cfg, model_cfg)
    (student, processor), build_s = timed(device, lambda: build_student_model(cfg, model_cfg, accelerator))
    teacher = build_teacher(cfg, processor, student.config.text_config.vocab_size, accelerator.device)
    engine = Engine(accelerator, cfg, student)
    allowed = processor.allowed_token_mask(student.config.text_config.vocab_size)
    collate = Collator(processor)
    audio = clips(clip_count, 4.0, 20.0, seed=11)
    batch = collate([{"id": str(i), "text": None, "language": "en", "audio": a, "skip": None, "epoch": 0,
                      "position": i} for i, a in enumerate(audio)])
    score, teacher_s = teacher.score, []

    def timed_score(*args, **kwargs):
        out, seconds = timed(device, lambda: score(*args, **kwargs))
        teacher_s.append(seconds)
        return out

    teacher.score = timed_score
    rows = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(steps):
        teacher_s.clear()
        student_now = accelerator.unwrap_model(engine.model)
        micro, collect_s = timed(device, lambda: collect(student_now, processor, teacher, [batch], cfg.opd, True,
                                                         step, accelerator.device, decoder=engine.decoder))
        stats, update_s = timed(device, lambda: update(engine, micro, cfg.opd, allowed))
        flops, tokens = update_flops(student_now, micro)
        rows.append({"rollout_s": collect_s - sum(teacher_s), "teacher_s": sum(teacher_s), "update_s": update_s,
                     "flops": flops, "tokens": tokens, "new_tokens": sum(mb.rollout.num_tokens for mb in micro)})
    timed_rows = rows[1:] or rows
    med = {key: statistics.median(r[key] for r in timed_rows) for key in rows[0]}
    step_s = med["rollout_s"] + med["teacher_s"] + med["update_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    update_phase_s = med["teacher_s"] + med["update_s"]
    return {"build_s": round(build_s, 2), "opd_step": {
        "clips": clip_count, "decoder": engine.decoder.name, "step_s": round(step_s, 3),
        "rollout_s": round(med["rollout_s"], 3), "teacher_s": round(med["teacher_s"], 3),
        "update_s": round(med["update_s"], 3), "rollout_share": round(med["rollout_s"] / step_s, 3),
        "tokens_per_s": round(med["tokens"] / update_phase_s, 1),
        "rollout_tokens_per_s": round(med["new_tokens"] / med["rollout_s"], 1),
        "update_mfu": round(med["flops"] / update_phase_s / (peak * 1e12), 4) if peak else None,
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--model", default="configs/models/ark_asr_3b.yaml", help="model config (random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where it runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--batches", default="1,16,64", help="decode batch sizes")
    parser.add_argument("--tokens", default="16,48", help="the two decode lengths whose difference is timed")
    parser.add_argument("--rtfx-clips", type=int, default=128, help="clips of the RTFx measurement")
    parser.add_argument("--opd-clips", type=int, default=12, help="clips per timed OPD step")
    parser.add_argument("--opd-steps", type=int, default=3, help="timed OPD steps")
    parser.add_argument("--invariance-clips", type=int, default=8,
                        help="clips of the batched-vs-alone check")
    parser.add_argument("--results", default=str(RESULTS), help="JSONL file the row is appended to")
    parser.add_argument("--dry-run", action="store_true", help="small sizes: checks that every part runs (CPU)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        args.batches, args.tokens, args.rtfx_clips, args.opd_clips, args.opd_steps = "1,4", "4,12", 8, 3, 2
        args.invariance_clips = 3
    device = torch.device(args.device)
    short, long = (int(x) for x in args.tokens.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    row = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"cpu, {torch.get_num_threads()} threads", "torch": torch.__version__, "model": args.model,
           "dry_run": args.dry_run}

    def say(key, value):
        row[key] = value
        print(f"{key}: {json.dumps(value)}", flush=True)

    cfg = load_config(ModelConfig, args.model)
    torch.manual_seed(0)
    (model, processor), build_s = timed(device, lambda: build_student(cfg, device=device))
    model.eval()
    dtype = next(model.parameters()).dtype
    say("dtype", str(dtype).removeprefix("torch."))
    say("build_s", round(build_s, 2))
    static = make_decoder(DecodeConfig(engine="static"), device)
    say("decode_ms_per_step", {str(b): decode_ms_per_step(static, model, processor, b, short, long, device, dtype)
                               for b in batches})
    say("decode_ms_per_step_eager", {str(b): decode_ms_per_step(EAGER, model, processor, b, short, long, device,
                                                                dtype) for b in batches})
    say("same_tokens_engine_vs_eager", engine_vs_eager(static, model, processor, 16, long, device, dtype))
    say(f"same_tokens_batched_vs_alone_{row['dtype'].replace('bfloat16', 'bf16')}",
        batch_invariance(static, model, processor, args.invariance_clips, long, device, dtype))
    say("same_tokens_batched_vs_alone_eager", batch_invariance(EAGER, model, processor, args.invariance_clips,
                                                               long, device, dtype))
    say("rtfx_b64", rtfx(static, model, processor, 64, args.rtfx_clips, device))
    say("static_engine", dict(static.stats))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    opd = opd_step(args.model, args.opd_clips, args.opd_steps, device)
    say("opd_build_s", opd["build_s"])
    say("opd_step", opd["opd_step"])
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))
    return row


if __name__ == "__main__":
    with config_errors_exit():  # a wrong config key or value: one line, status 2
        main()
