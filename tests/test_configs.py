"""Every YAML under configs/ parses and validates against its schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.config import DistillConfig, ModelConfig, SFTConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"models": ModelConfig, "distill": DistillConfig, "sft": SFTConfig,
           # folders of whole recipes: the schema follows the stage in the file name
           "ark_asr_3b": {"sft": SFTConfig, "td": SFTConfig, "opd": DistillConfig},
           "domain_adaptation": {"pseudo_label_sft": SFTConfig, "opd": DistillConfig},
           "toy": {"teacher": SFTConfig, "base": SFTConfig, "td": SFTConfig, "opd": DistillConfig}}


def _schema(path):
    schema = SCHEMAS[path.parent.name]
    return schema[path.stem] if isinstance(schema, dict) else schema
ALL_YAML = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


def test_every_config_folder_has_a_schema():
    assert ALL_YAML, "no configs found"
    for path in ALL_YAML:
        assert path.parent.name in SCHEMAS, f"{path}: no schema registered for configs/{path.parent.name}/"
        _schema(path)


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_validates(path):
    load_config(_schema(path), path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path}: should open with a comment saying what it is and how to run it"
    opening = path.read_text().split("\n\n")[0]
    assert "python " in opening or "accelerate launch" in opening, f"{path}: the opening comment gives the command"


ACCELERATE_YAML = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_YAML, ids=lambda p: p.name)
def test_accelerate_config_loads_and_is_exercised(path):
    from accelerate.commands.config.config_args import load_config_from_file

    from tests.backend_runs import BACKENDS

    config = load_config_from_file(str(path))
    assert config.num_processes == 2  # runs as it is on two CPU processes (tests/test_backends.py)
    assert path.read_text().startswith("#") and "accelerate launch" in path.read_text().split("\n\n")[0]
    assert path.stem in BACKENDS, f"{path}: tests/test_backends.py does not run this backend"
