"""Quiet by default: an offline wandb run says one line; the expected third-party messages (DeepSpeed's CPU
fallback, accelerate's tied lm_head left out of a checkpoint, the final save's shard bar) are dropped,
each where it is emitted, and nothing else of those loggers is."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from train.checkpoint import save_checkpoint
from train.config import DistillConfig, ModelConfig, load_config
from train.quiet import no_shard_bar, tied_embeddings_saved
from train.recipe import make_accelerator
from train.run_log import RunLog

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = str(ROOT / "configs/models/tiny.yaml")


def _accelerator(tmp_path, wandb_mode="disabled"):
    cfg = load_config(DistillConfig, None, [f"output_dir={tmp_path}", "data.train=x.jsonl",
                                            f"log.wandb_mode={wandb_mode}"])
    return cfg, make_accelerator(cfg, load_config(ModelConfig, TINY_MODEL))


def test_an_offline_wandb_run_says_one_line(tmp_path, capfd):
    cfg, accelerator = _accelerator(tmp_path, "offline")
    log = RunLog(accelerator, tmp_path, 2, 0, cfg.log, {"max_steps": 2, "opd": {"k": 8}})
    for step in (1, 2):
        log.log(step, {"loss": 1.0 / step, "lr": 1e-3})
    log.close()
    out = capfd.readouterr()
    said = [line for line in (out.out + out.err).splitlines() if "wandb" in line]
    assert len(said) == 1, said
    files = Path(said[0].split("offline run in ", 1)[1].split(";", 1)[0])
    assert files.is_dir() and files.parent == tmp_path / "wandb" and f"wandb sync {files}" in said[0]
    assert list(files.glob("run-*.wandb"))  # the metrics are there to upload


@pytest.mark.skipif(torch.cuda.is_available() or "DS_ACCELERATOR" in os.environ,
                    reason="DeepSpeed says it falls back to the CPU only when torch sees no GPU")
def test_deepspeed_does_not_say_it_falls_back_to_the_cpu(tmp_path):
    from deepspeed.accelerator import real_accelerator

    from train.quiet import CPU_NOTICE

    # What reaches DeepSpeed's logger's handlers, read by a handler of our own: its own handler writes
    # to whatever sys.stdout was when deepspeed was first imported (in a suite, maybe another test's capture).
    logger, seen = logging.getLogger("DeepSpeed"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)

    def detect() -> str:  # DeepSpeed's own detection and message, again (it runs once per process)
        seen.clear()
        found, real_accelerator.ds_accelerator = real_accelerator.ds_accelerator, None
        try:
            real_accelerator.get_accelerator()
        finally:
            real_accelerator.ds_accelerator = found
        return "\n".join(seen)

    try:
        logger.removeFilter(CPU_NOTICE)
        assert "Setting accelerator to CPU" in detect()  # what a CPU run printed
        _accelerator(tmp_path)
        assert "Setting accelerator to CPU" not in detect()
        seen.clear()
        logger.warning("another DeepSpeed warning")
        assert seen == ["another DeepSpeed warning"]
    finally:
        logger.removeHandler(handler)


def test_a_checkpoint_of_a_tied_student_does_not_warn_about_the_tied_head(tmp_path, caplog):
    from accelerate.utils.other import clean_state_dict_for_safetensors

    from train.models import build_student

    model, _ = build_student(tiny_config())
    assert model.config.text_config.tie_word_embeddings
    _, accelerator = _accelerator(tmp_path)
    model = accelerator.prepare(model)
    caplog.set_level(logging.WARNING)
    clean_state_dict_for_safetensors(dict(model.state_dict()))
    assert "Removed shared tensor {'lm_head.weight'}" in caplog.text  # what every checkpoint printed
    caplog.clear()
    save_checkpoint(accelerator, tmp_path, 1, {})
    assert (tmp_path / "checkpoints" / "step-1").is_dir()
    assert "Removed shared tensor" not in caplog.text
    with tied_embeddings_saved():
        logging.getLogger("accelerate.utils.other").warning("Removed shared tensor {'encoder.weight'} while saving")
    assert "{'encoder.weight'}" in caplog.text  # an untied tensor dropped from a file is still said


def test_the_final_save_shows_no_shard_bar(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    from train.models import build_student

    model, _ = build_student(tiny_config())
    if hf_logging.is_progress_bar_enabled():
        model.save_pretrained(tmp_path / "with_bar")
        assert "Writing model shards" in capfd.readouterr().err
    with no_shard_bar():
        model.save_pretrained(tmp_path / "final")
    assert "Writing model shards" not in capfd.readouterr().err
    assert (tmp_path / "final" / "model.safetensors").is_file()
