"""Time and peak memory of each distillation loss (forward + backward) against a naive implementation.

    python scripts/bench_losses.py [--batch 8 --tokens 256 --vocab 151936 --k 32] [--device cpu|cuda]

Naive = what a straightforward implementation does: full log-softmax of BOTH models' logits held at
once (B x T x V twice, float32), then the loss on them. Ours = the forms the recipe runs:
  union_topk_kl  the student's log-softmax + the teacher's gathered TokenScores (top-k and student top-k)
  jsd            full vocabulary, but chunked over positions and recomputed in backward
  reverse_kl     the student's log-prob of the sampled token + the teacher's gathered one
Each variant runs in its own process, so peak memory (CUDA allocator peak, or the process's max RSS
on CPU) is its own. The student's logits themselves (with grad) are counted in both.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import HelpFormatter  # noqa: E402
from train.opd.losses import (  # noqa: E402
    generalized_jsd,
    sampled_token_reverse_kl,
    token_logp,
    union_topk_forward_kl,
    union_topk_forward_kl_from_scores,
)
from train.teachers.base import gather_scores  # noqa: E402

VARIANTS = ["union_topk_kl/naive", "union_topk_kl/ours", "jsd/naive", "jsd/ours", "reverse_kl/naive",
            "reverse_kl/ours"]


def _naive_full(student, teacher):
    s = torch.log_softmax(student.float(), -1)
    t = torch.log_softmax(teacher.float(), -1)
    return s, t


def run_variant(name: str, args) -> dict:
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.tokens, args.vocab)
    student = torch.randn(shape, generator=g, device=device).mul_(3).requires_grad_(True)
    tokens = torch.randint(0, args.vocab, shape[:2], generator=g, device=device)
    mask = torch.ones(shape[:2], dtype=torch.bool, device=device)
    with torch.no_grad():
        teacher = torch.randn(shape, generator=g, device=device).mul_(3)
        scores = None
        if name.endswith("/ours") and not name.startswith("jsd"):
            extra = student.detach().topk(args.k, -1).indices
            scores = gather_scores(teacher, tokens, mask, args.k, 1.0, extra, full=False)
            del teacher  # the recipe never holds the teacher's full logits past its score() call
            teacher = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if name == "union_topk_kl/naive":
        s, t = _naive_full(student, teacher)
        loss = union_topk_forward_kl(s, t, args.k)
    elif name == "union_topk_kl/ours":
        loss = union_topk_forward_kl_from_scores(student, scores)
    elif name == "jsd/naive":
        s, t = _naive_full(student, teacher)
        loss = generalized_jsd(s, t, 0.5, chunk_tokens=10**9)
    elif name == "jsd/ours":
        loss = generalized_jsd(student, teacher, 0.5, chunk_tokens=args.chunk)
    elif name == "reverse_kl/naive":
        s, t = _naive_full(student, teacher)
        s_logp = s.gather(-1, tokens[..., None]).squeeze(-1)
        loss = sampled_token_reverse_kl(s_logp, t.gather(-1, tokens[..., None]).squeeze(-1), s_logp.detach())
    else:
        s_logp = token_logp(student, tokens)
        loss = sampled_token_reverse_kl(s_logp, scores.sampled_logp_B_T, s_logp.detach())
    loss.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    return {"variant": name, "seconds": round(seconds, 3), "peak_gib": round(peak / 2**30, 3)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="rows (B)")
    parser.add_argument("--tokens", type=int, default=256, help="positions per row (T)")
    parser.add_argument("--vocab", type=int, default=151936, help="vocabulary size (V)")
    parser.add_argument("--k", type=int, default=32, help="top-k of union_topk_kl")
    parser.add_argument("--chunk", type=int, default=256, help="positions per JSD chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where it runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--variant", choices=VARIANTS, help="(internal) run one variant in this process")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return []
    rows = []
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name] + [f"--{k}={v}" for k, v in
                                                                (("batch", args.batch), ("tokens", args.tokens),
                                                                 ("vocab", args.vocab), ("k", args.k),
                                                                 ("chunk", args.chunk), ("device", args.device))]
        rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]))
    by = {r["variant"]: r for r in rows}
    report = {"shape": f"B={args.batch} T={args.tokens} V={args.vocab} k={args.k}", "device": args.device}
    for loss in ("union_topk_kl", "jsd", "reverse_kl"):
        naive, ours = by[f"{loss}/naive"], by[f"{loss}/ours"]
        report[loss] = {"naive_s": naive["seconds"], "ours_s": ours["seconds"],
                        "time_ratio_naive_over_ours": round(naive["seconds"] / ours["seconds"], 2),
                        "naive_peak_gib": naive["peak_gib"], "ours_peak_gib": ours["peak_gib"],
                        "memory_ratio_naive_over_ours": round(naive["peak_gib"] / max(ours["peak_gib"], 1e-3), 2)}
    print(json.dumps(report, indent=2))
    return rows


if __name__ == "__main__":
    main()
