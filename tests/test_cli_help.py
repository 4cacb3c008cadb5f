"""Every entry point's command line says what each option does and its default; the recipes' --help lists
every config key with its default, --print-config shows the resolved config, and a config error is one
line on stderr with exit status 2, not a traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from train.config import DistillConfig, SFTConfig

ROOT = Path(__file__).resolve().parents[1]


def _entry_points() -> list[str]:
    """Every file that builds an argparse parser and runs as a program: found, so a new one is covered."""
    found = []
    for path in sorted([*ROOT.glob("train/**/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("data_recipes/**/*.py")]):
        text = path.read_text(encoding="utf-8")
        runs = any(line.startswith('if __name__ == "__main__"') for line in text.splitlines())
        if runs and any(maker in text for maker in ("ArgumentParser(", "base_parser(", "recipe_parser(")):
            found.append(path.relative_to(ROOT).as_posix())
    return found


ENTRY_POINTS = _entry_points()


def _parser(entry: str) -> argparse.ArgumentParser:
    module = importlib.import_module(entry.removesuffix(".py").replace("/", "."))
    assert hasattr(module, "build_parser"), f"{entry}: expose build_parser() so its options can be checked"
    return module.build_parser()


def test_the_entry_points_are_found():
    assert {"train/distill.py", "train/sft.py", "scripts/bench_gpu.py", "data_recipes/fleurs/prepare.py",
            "data_recipes/toy_tts/prepare.py", "train/models/summary.py"} <= set(ENTRY_POINTS)
    assert "data_recipes/common.py" not in ENTRY_POINTS and "train/cli.py" not in ENTRY_POINTS


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_option_says_what_it_does_and_its_default(entry):
    parser = _parser(entry)
    formatter = parser._get_formatter()  # the text --help prints for one option (argparse has no public call)
    undocumented, no_default = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            undocumented.append(name)
            continue
        has_default = not (action.default is None or action.default is False or action.default == []
                           or action.default == argparse.SUPPRESS or action.required)
        if has_default and "default" not in formatter._expand_help(action):
            no_default.append(name)
    assert not undocumented, f"{entry}: options without help: {undocumented}"
    assert not no_default, f"{entry}: options whose help does not show their default: {no_default}"


def _keys(schema) -> list[str]:
    """Every dotted key of a config schema, by OmegaConf's reading of the dataclasses (lists are leaves)."""
    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"
    return list(walk(OmegaConf.to_container(OmegaConf.structured(schema)), ""))


@pytest.mark.parametrize("recipe, schema", [("distill", DistillConfig), ("sft", SFTConfig)])
def test_recipe_help_lists_every_config_key_with_its_default(recipe, schema):
    text = importlib.import_module(f"train.{recipe}").build_parser().format_help()
    missing = [key for key in _keys(schema) if f"\n  {key} = " not in text]
    assert not missing, missing
    assert "--print-config" in text
    assert "\n  optim.lr = 0.0001\n" in text and "\n  log.wandb_mode = offline  # offline | online | disabled\n" in text


@pytest.mark.parametrize("recipe, schema", [("distill", DistillConfig), ("sft", SFTConfig)])
def test_print_config_prints_the_resolved_config_and_exits(recipe, schema, capsys):
    parse_args = importlib.import_module(f"train.{recipe}").parse_args
    config = ["--config", str(ROOT / ("configs/distill/toy.yaml" if recipe == "distill" else "configs/sft/toy.yaml"))]
    printed = []
    for overrides in ([], ["max_steps=7", "optim.lr=0.5"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args([*config, "--print-config", *overrides])
        assert exit_info.value.code == 0
        printed.append(yaml.safe_load(capsys.readouterr().out))
    before, after = printed
    assert (after["max_steps"], after["optim"]["lr"]) == (7, 0.5) and before["max_steps"] != 7
    assert {k: v for k, v in after.items() if k not in ("max_steps", "optim")} == {
        k: v for k, v in before.items() if k not in ("max_steps", "optim")}
    flat = json.loads(json.dumps(after))  # every key, defaults included
    assert sorted(_keys(schema)) == sorted(_leaf_keys(flat))
    assert parse_args([*config, "max_steps=7", "optim.lr=0.5"]).max_steps == 7  # without it: the config, no exit


def _leaf_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_wrong_key_is_one_line_and_status_2():
    out = _run("train/distill.py", "max_stepz=3")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "config error: max_stepz (from the override 'max_stepz=3'): Key 'max_stepz' not in 'DistillConfig'. "
        "Did you mean: 'max_steps'?"], out.stderr
    assert out.stdout == ""


def test_a_config_error_found_while_the_run_is_set_up_is_one_line_too(tmp_path):
    """sft.py finds a data.train without transcripts only once main() reads the manifests."""
    manifest = tmp_path / "unlabelled.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "duration": 1.0, "id": "a", "language": "en"}) + "\n")
    out = _run("train/sft.py", "--config", "configs/sft/toy.yaml", f"output_dir={tmp_path / 'run'}",
               f"data.train={manifest}", f"data.dev={manifest}", "log.wandb_mode=disabled")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith(f"config error: data.train: no line of {manifest} has a transcript"), out.stderr
    assert "Traceback" not in out.stderr


def test_a_script_that_loads_a_config_says_its_errors_in_one_line_too():
    out = _run("-m", "train.models.summary", "configs/models/tiny.yaml", "encoder.num_layers=0")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "config error: encoder.num_layers (from the override 'encoder.num_layers=0'): must be > 0, got 0"]
