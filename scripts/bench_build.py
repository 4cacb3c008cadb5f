"""Time to build (and load) a student on a device: the old path against the fast one, same run.

    python scripts/bench_build.py                                               # GPU: the ARK-ASR-3B shape
    python scripts/bench_build.py --config configs/models/tiny.yaml --device cpu   # anywhere
    python scripts/bench_build.py --device cpu encoder.num_layers=4 decoder.num_layers=4   # mid-size, CPU

Old: `build_student(cfg, fast_init=False)` on the CPU (torch's init, then transformers' post_init
over every weight), then moved to the device, as the recipes did. New: `build_student(cfg,
device=..., fast_init=True)` (the default off the CPU): built on the meta device, initialised once on
the device. Both include making the tokenizer, also timed alone. Also timed: `load_student(path,
device=...)` of the saved weights against loading on the CPU and moving (`--no-load` skips it).
Prints seconds both ways, their ratio, and how far the new weights' per-tensor std strays from the
old ones'; appends the row to scripts/results/bench_build.jsonl with the device name. Key=value
arguments override the model config (configs/models/toy_student.yaml needs its tokenizer built
first: see the command at its top).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from train.cli import HelpFormatter, config_errors_exit
from train.config import ModelConfig, load_config
from train.models import build_student, load_student, save_student
from train.models.tokenizer import build_qwen25_ark_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "bench_build.jsonl"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, make):
    _sync(device)
    t0 = time.perf_counter()
    model = make()
    _sync(device)
    return model, time.perf_counter() - t0


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _std_spread(old, new) -> float:
    """The largest |std_new / std_old - 1| over the randomly drawn tensors of 64k elements or more
    (sampling error under 0.5 %; the same rules give ~0)."""
    worst, new_sd = 0.0, new.state_dict()
    for key, a in old.state_dict().items():
        b = new_sd[key]
        if a.is_floating_point() and a.numel() >= 65536 and a.float().std() > 0:
            worst = max(worst, abs(b.float().std().item() / a.float().std().item() - 1))
    return worst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--config", default="configs/models/ark_asr_3b.yaml",
                        help="model config YAML (built with random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where it runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--no-load", action="store_true", help="skip the load_student timing")
    parser.add_argument("--results", default=str(RESULTS), help="JSONL file the row is appended to")
    parser.add_argument("overrides", nargs="*", help="model config key=value overrides")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    cfg = load_config(ModelConfig, args.config, args.overrides)
    device = torch.device(args.device)
    build_student(cfg, fast_init=True)  # warm-up: imports, tokenizer files in the page cache
    _free(device)
    t0 = time.perf_counter()  # part of both builds
    AutoTokenizer.from_pretrained(cfg.tokenizer) if cfg.tokenizer else build_qwen25_ark_tokenizer()
    tokenizer_s = time.perf_counter() - t0

    torch.manual_seed(0)
    old, old_s = _timed(device, lambda: build_student(cfg, fast_init=False)[0].to(device))
    torch.manual_seed(0)
    (new, processor), new_s = _timed(device, lambda: build_student(cfg, device=device, fast_init=True))
    on_meta = sum(t.is_meta for t in list(new.parameters()) + list(new.buffers()))
    row = {
        "config": args.config, "overrides": args.overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads", "dtype": cfg.dtype,
        "parameters": sum(p.numel() for p in new.parameters()),
        "old_seconds": round(old_s, 2), "new_seconds": round(new_s, 2), "speedup": round(old_s / new_s, 2),
        "tokenizer_seconds": round(tokenizer_s, 2),
        "std_max_rel_diff": round(_std_spread(old, new), 4), "tensors_left_on_meta": on_meta,
    }
    del old
    _free(device)
    if device.type != "cpu":  # the old path's init run on the device itself (torch.device context)
        torch.manual_seed(0)
        _, row["old_on_device_seconds"] = _timed(device, lambda: build_student(cfg, device=device, fast_init=False))
        row["old_on_device_seconds"] = round(row["old_on_device_seconds"], 2)
        _free(device)
    if not args.no_load:
        with tempfile.TemporaryDirectory() as tmp:
            save_student(new, processor, tmp)
            del new
            _free(device)
            _, load_old_s = _timed(device, lambda: load_student(tmp, dtype=cfg.dtype)[0].to(device))
            _free(device)
            _, load_new_s = _timed(device, lambda: load_student(tmp, dtype=cfg.dtype, device=device)[0])
        row.update({"load_old_seconds": round(load_old_s, 2), "load_new_seconds": round(load_new_s, 2),
                    "load_speedup": round(load_old_s / load_new_s, 2)})
    print(json.dumps(row, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    with config_errors_exit():  # a wrong config key or value: one line, status 2
        main()
