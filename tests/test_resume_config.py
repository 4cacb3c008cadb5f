"""What a resume may change: the allowlist, the comparison of saved and new settings, the saved config a
checkpoint is compared with, and the trainer state a finished run's final evaluation is recorded in."""

from __future__ import annotations

import json

import pytest

from train.checkpoint import STATE_FILE, saved_config, update_trainer_state
from train.config import ConfigError, DistillConfig, config_to_yaml, load_config
from train.run_config import (
    RESUMABLE,
    compare_settings,
    flat_settings,
    resumable,
    resume_changes,
)

ROOT_CONFIG = "configs/distill/tiny_random_teacher.yaml"
TRAIN = ["data.train=[{path: a.jsonl}]", "data.dev=[{path: dev.jsonl}]", "optim.schedule=constant", "eval.every=0",
         "data.num_workers=2"]


def _yaml(*overrides: str) -> str:
    return config_to_yaml(load_config(DistillConfig, ROOT_CONFIG, TRAIN + list(overrides)))


def test_flat_settings_use_dotted_keys_and_index_lists_of_sections():
    flat = flat_settings(_yaml("optim.lr=0.001", "data.train=[{path: a.jsonl}, {path: b.jsonl, weight: 2}]"))
    assert flat["optim.lr"] == 0.001 and flat["max_steps"] == load_config(DistillConfig, ROOT_CONFIG, TRAIN).max_steps
    assert flat["data.train[1].path"] == "b.jsonl" and flat["data.train[1].weight"] == 2.0
    assert flat["optim.betas"] == [0.9, 0.999]  # a list of values stays one setting


def test_the_allowlist_is_explicit_and_everything_else_is_refused():
    for key in ("max_steps", "output_dir", "resume", "eval.every", "eval.batch_size", "log.wandb_mode",
                "checkpoint.every", "checkpoint.keep_last", "checkpoint.on_error", "data.num_workers", "decode.engine",
                "teacher.rows_per_forward", "optim.logits_chunk",  # memory only: the same numbers
                "faults.signals", "faults.collective_timeout_s"):  # how a run stops, not what it computes
        assert resumable(key), key
    for key in ("optim.lr", "optim.schedule", "seed", "student.model", "teacher.seed", "opd.k", "data.train[0].path",
                "data.max_batch_seconds", "data.language_prompt", "data.dev[0].path", "mixed_precision",
                "a_key_added_next_year", "evaluation.every", "eval"):  # a new key is refused until listed
        assert not resumable(key), key
    assert all(isinstance(p, str) and (p.endswith(".*") or "*" not in p) for p in RESUMABLE)


def test_compare_settings_splits_refused_from_allowed_changes():
    refused, allowed = compare_settings(_yaml("optim.lr=0.0001", "max_steps=3"),
                                        _yaml("optim.lr=0.001", "max_steps=4", "eval.every=2"))
    assert refused == [("optim.lr", 0.0001, 0.001)]
    assert allowed == [("eval.every", 0, 2), ("max_steps", 3, 4)]
    assert compare_settings(_yaml(), _yaml()) == ([], [])


def test_a_key_the_saved_config_lacks_counts_as_a_change():
    saved = "\n".join(line for line in _yaml().splitlines() if "max_unmapped" not in line)
    refused, _ = compare_settings(saved, _yaml())
    assert [key for key, _, _ in refused] == ["teacher.max_unmapped"]
    with pytest.raises(ConfigError, match=r"teacher.max_unmapped: \(absent\) → "):
        resume_changes(saved, _yaml(), "ckpt")


def test_resume_changes_refuses_with_a_diff_and_the_ways_out():
    with pytest.raises(ConfigError) as err:
        resume_changes(_yaml("optim.lr=0.0001", "seed=1"), _yaml("optim.lr=0.001", "seed=2", "max_steps=9"),
                       "runs/x/checkpoints/step-6/config.yaml")
    message = str(err.value)
    assert "optim.lr: 0.0001 → 0.001" in message and "seed: 1 → 2" in message
    assert "max_steps" not in message.split("ways out")[0]  # the allowed change is not among the refused
    assert "output_dir" in message and "resume=never" in message
    assert "runs/x/checkpoints/step-6/config.yaml" in message


def test_resume_changes_names_the_allowed_changes():
    assert resume_changes(_yaml(), _yaml(), "ckpt") is None
    line = resume_changes(_yaml("max_steps=3"), _yaml("max_steps=4", "data.num_workers=0"), "ckpt")
    assert line == "resuming with changed settings: data.num_workers 2 → 0, max_steps 3 → 4"
    cosine = resume_changes(_yaml("max_steps=3", "optim.schedule=cosine"),
                            _yaml("max_steps=4", "optim.schedule=cosine"), "ckpt")
    assert cosine.startswith("resuming with changed settings: max_steps 3 → 4") and "cosine" in cosine


def test_saved_config_prefers_the_checkpoints_own_then_the_runs(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    checkpoint.mkdir(parents=True)
    assert saved_config(checkpoint) is None
    (tmp_path / "run" / "config.yaml").write_text("seed: 1\n")
    assert saved_config(checkpoint) == ("seed: 1\n", tmp_path / "run" / "config.yaml")  # an older checkpoint
    (checkpoint / "config.yaml").write_text("seed: 2\n")
    assert saved_config(checkpoint) == ("seed: 2\n", checkpoint / "config.yaml")


def test_update_trainer_state_replaces_entries_and_keeps_the_rest(tmp_path):
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": 3, "evaluator": {"history": []}, "skipped": {}}))
    update_trainer_state(tmp_path, evaluator={"history": [{"step": 3}]})
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {"step": 3, "evaluator": {"history": [{"step": 3}]},
                                                               "skipped": {}}
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary file left behind
