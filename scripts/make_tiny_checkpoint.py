"""Write a tiny random student (real Qwen2.5 vocabulary, ARK special tokens) that load_student reads.

    python scripts/make_tiny_checkpoint.py --out DIR [--layout hf|ark] [--config configs/models/tiny.yaml] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from train.cli import HelpFormatter, config_errors_exit
from train.models import build_student, save_student

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "models" / "tiny.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--layout", choices=["hf", "ark"], default="hf",
                        help="hf: transformers' GlmAsr layout; ark: ARK-ASR's own")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="model config YAML")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    model, processor = build_student(args.config)
    out = save_student(model, processor, args.out, layout=args.layout)
    print(f"wrote a {args.layout}-layout tiny student to {out}")
    return out


if __name__ == "__main__":
    with config_errors_exit():  # a wrong config key or value: one line, status 2
        main()
