"""Parameter counts of a model config, built on the meta device (no memory, seconds even for 3B).

    python -m train.models.summary configs/models/ark_asr_3b.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import json

import torch

from train.cli import HelpFormatter, config_errors_exit
from train.config import ModelConfig, load_config
from train.models.build import configure_training
from train.models.student import StudentForConditionalGeneration, glmasr_config


def _count(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())  # tied weights once


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """total / encoder / adapter / decoder / trainable parameter counts of the configured student."""
    config = glmasr_config(cfg, eos_token_ids=None, pad_token_id=None)
    with torch.device("meta"):
        model = StudentForConditionalGeneration(config)
        model = configure_training(model, cfg)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "total": _count(model.parameters()),
        "encoder": _count(inner.model.audio_tower.parameters()),
        "adapter": _count(inner.model.multi_modal_projector.parameters()),
        "decoder": _count(list(inner.model.language_model.parameters()) + list(inner.lm_head.parameters())),
        "trainable": _count(p for p in model.parameters() if p.requires_grad),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("config", help="model config YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser


def main(argv: list[str] | None = None) -> dict[str, int]:
    args = build_parser().parse_args(argv)
    counts = parameter_counts(load_config(ModelConfig, args.config, args.overrides))
    print(json.dumps(counts, indent=2))
    return counts


if __name__ == "__main__":
    with config_errors_exit():  # a wrong config key or value: one line, status 2
        main()
