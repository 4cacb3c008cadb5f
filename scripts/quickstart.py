"""The smallest real run: build a tiny student, save it in both layouts, reload, transcribe, count the 3B shape.

    python scripts/quickstart.py --out runs/quickstart
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from train.cli import HelpFormatter
from train.config import ModelConfig, load_config
from train.models import build_student, load_student, save_student, transcribe
from train.models.summary import parameter_counts

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="folder for the two saved tiny students")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(0)

    model, processor = build_student(ROOT / "configs/models/tiny.yaml")
    hf_dir = save_student(model, processor, out / "tiny-hf", layout="hf")
    ark_dir = save_student(model, processor, out / "tiny-ark", layout="ark")

    t = np.arange(16000 * 2) / 16000
    clips = [(0.3 * np.sin(2 * np.pi * f * t[: int(16000 * s)])).astype(np.float32)
             for f, s in [(220, 1.0), (440, 2.0), (660, 0.5)]]
    report = {"prompt_for_1s_german": processor.prompt(16000, "de")}
    for name, path in [("hf", hf_dir), ("ark", ark_dir)]:
        loaded, loaded_processor = load_student(path)
        report[f"{name}_transcripts"] = transcribe(loaded, loaded_processor, clips, max_new_tokens=8)
    assert report["hf_transcripts"] == report["ark_transcripts"], "the two layouts must decode identically"
    report["ark_asr_3b_parameters"] = parameter_counts(load_config(ModelConfig, ROOT / "configs/models/ark_asr_3b.yaml"))
    print(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"\nwrote {hf_dir} and {ark_dir}. A random tiny model transcribes noise as noise; "
          "`python train/distill.py` runs the toy distillation (building the toy corpus on first use).")
    return report


if __name__ == "__main__":
    main()
