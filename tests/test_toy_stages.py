"""The toy scripts' stages: a stage runs once, alone when named, and a wrong name fails before any compute;
scripts/ship_toy_model.py ships a stage's model with MADE_BY.json."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stages(tmp_path: Path, asked: str) -> subprocess.CompletedProcess:
    """Three stages a, b, c through scripts/stage.sh, each touching its output; b's output exists already."""
    (tmp_path / "b.out").touch()
    script = (f"set -euo pipefail; RUNS={tmp_path}/runs; ASKED='{asked}'; source {ROOT}/scripts/stage.sh; "
              + "; ".join(f"stage {n} {tmp_path}/{n}.out touch {tmp_path}/{n}.out" for n in "abc"))
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)


def test_every_stage_runs_once_when_none_is_named(tmp_path):
    out = _stages(tmp_path, "").stdout
    assert (tmp_path / "a.out").exists() and (tmp_path / "c.out").exists()
    assert f"== b: done ({tmp_path}/b.out)" in out
    assert sorted(p.name for p in (tmp_path / "runs" / "wall_times").iterdir()) == ["a", "c"]


def test_only_the_named_stages_run_and_the_others_say_so(tmp_path):
    out = _stages(tmp_path, "c").stdout
    assert (tmp_path / "c.out").exists() and not (tmp_path / "a.out").exists()
    assert "== a: not asked for" in out and "== b: not asked for" in out


@pytest.mark.parametrize("script, env, message", [
    ("reproduce_toy.sh", {}, "unknown stage 'nonsense'"),
    ("toy_curves.sh", {"STARTS": "base nonsense"}, "unknown start 'nonsense' in STARTS"),
    ("toy_curves.sh", {"BUDGETS": "300 6OO"}, "whole numbers of updates, got '6OO'"),
])
def test_a_wrong_stage_start_or_budget_fails_before_any_compute(tmp_path, script, env, message):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "false", **env}  # any python call would fail
    result = subprocess.run(["bash", str(ROOT / "scripts" / script), "nonsense"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "==" not in result.stdout  # no stage began


def _ship():
    spec = importlib.util.spec_from_file_location("ship_toy_model", ROOT / "scripts" / "ship_toy_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_a_shipped_model_says_how_it_was_made(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "checkpoints"
    final = runs / "td_opd" / "final"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"weights")
    (final / "rank_digests.json").write_text("{}")
    (runs / "wall_times").mkdir()
    (runs / "wall_times" / "td_opd").write_text("1234")
    (runs / "eval").mkdir()
    (runs / "eval" / "td_opd.json").write_text(json.dumps(
        {"manifests": {"data/toy_tts/test.jsonl": {"average_rate": 0.5, "average_cer": 0.2, "languages": {}}}}))
    (out / "td_opd").mkdir(parents=True)
    (out / "td_opd" / "stale.bin").write_text("an older model's file")

    target = _ship()(["td_opd", "--runs", str(runs), "--out", str(out), "--config", "configs/toy/opd.yaml",
                      "--override", "student.checkpoint=runs/toy/td/final", "--note", "a probe's model"])

    assert sorted(p.name for p in target.iterdir()) == ["MADE_BY.json", "model.safetensors"]
    made_by = json.loads((target / "MADE_BY.json").read_text())
    assert made_by["config"] == "configs/toy/opd.yaml"
    assert made_by["overrides"] == ["student.checkpoint=runs/toy/td/final"]
    assert made_by["wall_seconds"] == 1234 and len(made_by["commit"]) == 40
    assert made_by["scores"] == {"data/toy_tts/test.jsonl": {"average_primary_metric": 0.5, "average_cer": 0.2}}
    assert made_by["note"] == "a probe's model"


def test_shipping_an_unfinished_stage_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="opd/final/model.safetensors is missing"):
        _ship()(["opd", "--runs", str(tmp_path), "--out", str(tmp_path / "out"), "--config", "configs/toy/opd.yaml"])
    assert not (tmp_path / "out" / "opd").exists()


@pytest.mark.parametrize("args, current, runs", [
    ("--pool-only", True, False),   # the demo's corpus is there and current: nothing to do
    ("--pool-only", False, True),   # made by another recipe or other arguments: built again
    ("", True, True),               # a full corpus is asked for where only the pool was built
])
def test_toy_corpus_builds_what_is_asked_unless_current(tmp_path, args, current, runs):
    """scripts/stage.sh's toy_corpus: the demo's pool-only build is done once train_pool.jsonl is there and
    prepare.py --check says it is current; a full build needs train_labelled.jsonl."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train_pool.jsonl").touch()
    log = tmp_path / "calls"
    fake = tmp_path / "python"  # stands for prepare.py: logs its arguments, --check answers `current`
    fake.write_text(f'#!/bin/bash\necho "$*" >> {log}\n'
                    f'[[ " $* " == *" --check "* ]] && exit {0 if current else 1}\nexit 0\n')
    fake.chmod(0o755)
    script = (f"set -euo pipefail; RUNS={tmp_path}/runs; PY={fake}; DATA={data}; source {ROOT}/scripts/stage.sh; "
              f"toy_corpus {args}")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    calls = log.read_text().splitlines() if log.exists() else []
    builds = [c for c in calls if "--check" not in c]
    want = f"data_recipes/toy_tts/prepare.py --out {data} --seed 0" + (" --pool-only" if args else "")
    assert builds == ([want] if runs else [])
    assert ("== corpus: done" in out) == (not runs)


@pytest.mark.parametrize("starts, makes_tokenizer", [("base_1000 base", True), ("base td", False)])
def test_toy_curves_makes_the_vocabulary_before_a_weaker_base_trains(tmp_path, starts, makes_tokenizer):
    """A weaker base (base_N) trains with the model config's runs/toy/tokenizer, which only the reproduction
    made: the sweep makes it first, before either lane starts (it was missing after 40 minutes, once)."""
    import shutil

    (tmp_path / "scripts").mkdir()
    for name in ("toy_curves.sh", "stage.sh"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    for model in ("teacher", "base", "td"):
        (tmp_path / "checkpoints/toy" / model).mkdir(parents=True)
        (tmp_path / "checkpoints/toy" / model / "model.safetensors").touch()
    log = tmp_path / "calls"
    fake = tmp_path / "python"  # every python step of the sweep: logs its arguments, does nothing
    fake.write_text(f'#!/bin/bash\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "STARTS": starts, "BUDGETS": "300"}
    subprocess.run(["bash", str(tmp_path / "scripts/toy_curves.sh")], env=env, capture_output=True, text=True,
                   check=True)
    calls = log.read_text().splitlines()
    tokenizer = [i for i, c in enumerate(calls) if "train.models.char_tokenizer" in c]
    training = [i for i, c in enumerate(calls) if c.startswith(("train/sft.py", "train/distill.py"))]
    assert training and len(tokenizer) == int(makes_tokenizer)
    if makes_tokenizer:
        assert tokenizer[0] < min(training)
