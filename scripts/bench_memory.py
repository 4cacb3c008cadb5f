"""Peak memory of one OPD update (student re-score with gradient, the union top-k loss, backward) at
the ARK-ASR-3B shape: the full-logits path this project had before against the scored-head path.

    python scripts/bench_memory.py --device cuda                       # ARK-ASR-3B, 64 clips of 2 s, 256 tokens
    python scripts/bench_memory.py --device cpu --clips 4 --decoder-layers 2 --encoder-layers 2   # fits in 24 GB

before: logits for every rollout position (B x T x V), the loss over them, and the loss computed a
        second time on the detached logits for the log (what train/opd/step.py did).
after:  the student's forward stops at its hidden states; the head and the loss run on the scored
        positions only, `--chunk` at a time, each chunk's logits recomputed in backward
        (train/models/scored_head.py), and the logged KL is the loss itself.
Rollouts are looping (every clip uses all `--new-tokens`), the worst case a batch meets; the
teacher's scores are random TokenScores of the right shapes (the teacher is not what is measured).
The trained parts are float32 masters; with `--dtype bfloat16` the forward runs under bf16 autocast
and the frozen encoder is stored in bfloat16, as the engine does. Each variant runs in its own
process: peak = CUDA allocator peak, or growth of the process's max RSS on CPU, over the update.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import HelpFormatter, config_errors_exit  # noqa: E402
from train.config import ModelConfig, load_config  # noqa: E402
from train.engine import keep_float32_masters  # noqa: E402
from train.models import build_student  # noqa: E402
from train.models.build import DTYPES  # noqa: E402
from train.opd.losses import union_topk_forward_kl_from_scores  # noqa: E402
from train.opd.rollout import Rollout, rescore, rescore_at  # noqa: E402
from train.teachers.base import TokenScores  # noqa: E402

VARIANTS = ("before", "after")


def _inputs(args, processor, vocab: int, device):
    """A batch of `clips` clips of `seconds`, looping rollouts of `new_tokens`, and random teacher scores."""
    g = torch.Generator().manual_seed(0)
    samples = int(args.seconds * 16000)
    audio = [torch.randn(samples, generator=g).numpy() * 0.1 for _ in range(args.clips)]
    feats, mask = processor.features(audio)
    prompts = processor.prompt_ids([samples] * args.clips, [None] * args.clips)
    batch = {"input_features": feats, "input_features_mask": mask}
    shape = (args.clips, args.new_tokens)
    tokens = torch.randint(0, 151000, shape, generator=g)
    ro = Rollout(tokens_B_T=tokens.to(device), mask_B_T=torch.ones(shape, dtype=torch.bool, device=device),
                 logprobs_B_T=None, source_B=torch.arange(args.clips, device=device),
                 prompt_ids_B_S=prompts["input_ids"].to(device), prompt_mask_B_S=prompts["attention_mask"].to(device))
    k = args.k
    scores = TokenScores(sampled_logp_B_T=torch.full(shape, -1.0), mask_B_T=ro.mask_B_T.cpu(),
                         topk_ids_B_T_K=torch.randint(0, vocab, (*shape, k), generator=g),
                         topk_logp_B_T_K=torch.log_softmax(torch.randn(*shape, k, generator=g), -1) - 0.1,
                         extra_ids_B_T_E=torch.randint(0, vocab, (*shape, k), generator=g),
                         extra_logp_B_T_E=torch.log_softmax(torch.randn(*shape, k, generator=g), -1) - 0.1)
    return batch, ro, _to(scores, device)


def _to(scores: TokenScores, device) -> TokenScores:
    return TokenScores(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(scores).items()})


def _update(variant: str, model, batch, ro: Rollout, scores: TokenScores, chunk: int) -> float:
    """One update's forward + backward; returns the logged KL."""
    if variant == "before":
        logits = rescore(model, batch, ro)
        loss_B_T = union_topk_forward_kl_from_scores(logits, scores)
        loss_B_T.sum().div(ro.num_tokens).backward()
        return float(union_topk_forward_kl_from_scores(logits.detach(), scores).mean())  # the old log's recompute
    flat = scores.select(scores.mask_B_T)
    loss_N = rescore_at(model, batch, ro, scores.mask_B_T,
                        lambda logits, at: union_topk_forward_kl_from_scores(logits, flat.select(at)), chunk)
    loss_N.sum().div(ro.num_tokens).backward()
    return float(loss_N.detach().mean())


def run_variant(args) -> dict:
    device = torch.device(args.device)
    cfg = load_config(ModelConfig, args.config)
    cfg = replace(cfg, dtype=args.dtype,
                  encoder=replace(cfg.encoder, num_layers=args.encoder_layers or cfg.encoder.num_layers),
                  decoder=replace(cfg.decoder, num_layers=args.decoder_layers or cfg.decoder.num_layers))
    torch.manual_seed(0)
    model, processor = build_student(cfg, device=device)
    keep_float32_masters(model)
    model.train()
    batch, ro, scores = _inputs(args, processor, cfg.decoder.vocab_size, device)
    batch = {"input_features": batch["input_features"].to(device, DTYPES[args.dtype]),
             "input_features_mask": batch["input_features_mask"].to(device)}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    with autocast:
        kl = _update(args.variant, model, batch, ro, scores, args.chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    return {"variant": args.variant, "seconds": round(time.perf_counter() - start, 2),
            "update_peak_gib": round(peak / 2**30, 3), "kl": round(kl, 5),
            "prompt_tokens": int(ro.prompt_ids_B_S.shape[1]), "device_name": _device_name(device)}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--config", default="configs/models/ark_asr_3b.yaml",
                        help="model config YAML (random weights)")
    parser.add_argument("--clips", type=int, default=64, help="clips in the update")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of every clip")
    parser.add_argument("--new-tokens", type=int, default=256, help="rollout tokens per clip (all used)")
    parser.add_argument("--k", type=int, default=32, help="opd.k: teacher top-k per position")
    parser.add_argument("--chunk", type=int, default=4096, help="optim.logits_chunk: positions per head chunk")
    parser.add_argument("--encoder-layers", type=int, default=None, help="fewer layers to fit a small machine")
    parser.add_argument("--decoder-layers", type=int, default=None, help="(the vocabulary-sized tensors stay)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where it runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32",
                        help="model dtype (default: bfloat16 on cuda, else float32)")
    parser.add_argument("--out", help="also write the report (JSON) here")
    parser.add_argument("--variant", choices=VARIANTS, help="(internal) run one variant in this process")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return {}
    rows = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name] + [a for a in (argv or sys.argv[1:]) if a != "--out"]
        if args.out:
            cmd = [c for c in cmd if c != args.out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
        rows[name] = json.loads(proc.stdout.splitlines()[-1])
    before, after = rows["before"], rows["after"]
    report = {"shape": f"{args.config} encoder_layers={args.encoder_layers} decoder_layers={args.decoder_layers} "
                       f"clips={args.clips} x {args.seconds}s new_tokens={args.new_tokens} chunk={args.chunk} "
                       f"dtype={args.dtype}",
              "device": before["device_name"], "prompt_tokens": before["prompt_tokens"],
              "before_peak_gib": before["update_peak_gib"], "after_peak_gib": after["update_peak_gib"],
              "peak_ratio_before_over_after": round(before["update_peak_gib"] / max(after["update_peak_gib"], 1e-3), 2),
              "before_s": before["seconds"], "after_s": after["seconds"],
              "same_loss": abs(before["kl"] - after["kl"]) <= 1e-3 * max(abs(before["kl"]), 1e-6)}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    with config_errors_exit():  # a wrong config key or value: one line, status 2
        main()
