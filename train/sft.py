"""Supervised training: base SFT, or teacher-data adaptation (TD) on pseudo-labelled manifests.

    python train/sft.py --config FILE [key=value ...]
    accelerate launch train/sft.py --config FILE [key=value ...]

Which parts train is the student model config's (adapter-only alignment: train_encoder=false,
train_decoder=false; full SFT: the default; LoRA: lora.enabled=true). TD is SFT whose data.train
points at manifests written by train/transcribe.py. `ctc.weight` > 0 adds an auxiliary CTC loss
on the encoder or adapter outputs (train/models/ctc.py); the saved model leaves its head out.
Only lines with a transcript train: the others are dropped when data.train is read (a warning per
manifest), and a data.train without any fails at start.
Same run folder, logging, dev evaluation, checkpoints and resume as train/distill.py (the shared
pieces live in train/recipe.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate.utils import set_seed  # noqa: E402

from train.cli import config_errors_exit, recipe_config, recipe_parser  # noqa: E402
from train.config import SFTConfig, config_to_dict  # noqa: E402
from train.data.loader import make_loader  # noqa: E402
from train.engine import Engine  # noqa: E402
from train.models.ctc import StudentWithCTC  # noqa: E402
from train.recipe import (  # noqa: E402
    batches_forever,
    build_student_model,
    ensure_toy_corpus,
    evaluate_and_checkpoint,
    evaluate_at_start,
    finish_run,
    inject_faults,
    make_accelerator,
    make_evaluator,
    next_batches,
    no_zero3_init,
    preemption_watch,
    prepare_run_dir,
    read_run_manifests,
    refuse_zero3_with_tied_embeddings,
    resume_run,
    settle_prompting,
    stop_if_nonfinite,
    stop_if_preempted,
    student_model_config,
)
from train.run_log import RunLog  # noqa: E402
from train.supervised import sft_update  # noqa: E402


def main(cfg: SFTConfig) -> dict:
    model_cfg = student_model_config(cfg)  # every key and the precision checked before any compute
    accelerator = make_accelerator(cfg, model_cfg)
    set_seed(cfg.seed)  # the same initial student on every rank
    ensure_toy_corpus(cfg, accelerator)
    # Every manifest read and checked before any build; transcripts only (others dropped and said).
    manifests = read_run_manifests(cfg, accelerator, supervised=True)
    run_dir = prepare_run_dir(cfg, accelerator)

    with no_zero3_init(accelerator, unless_asked=True):
        student, processor = build_student_model(cfg, model_cfg, accelerator)
    settle_prompting(cfg, processor, accelerator)  # data/eval.language_prompt: unset = as the model was trained
    refuse_zero3_with_tied_embeddings(accelerator, student)
    if cfg.ctc.weight > 0:  # a training-only head; save_final keeps the student alone
        student = StudentWithCTC(student, cfg.ctc.source)
    loader = make_loader(cfg.data.train, processor, cfg.data, seed=cfg.seed, num_replicas=accelerator.num_processes,
                         rank=accelerator.process_index, read=manifests.train)
    sampler = loader.batch_sampler
    evaluator = make_evaluator(cfg, run_dir, accelerator, processor, manifests.dev)
    engine = Engine(accelerator, cfg, student)

    step, skipped = resume_run(cfg, accelerator, run_dir, sampler, evaluator, engine)
    last_batch, nonfinite_run = None, 0
    log = RunLog(accelerator, run_dir, cfg.max_steps, step, cfg.log, config_to_dict(cfg), desc="sft")
    evaluate_at_start(cfg, accelerator, step, engine, processor, evaluator, skipped)  # eval.on_start
    data = batches_forever(loader)
    with preemption_watch(cfg, accelerator, run_dir) as preempt:  # faults.signals: stop after a whole step
        while step < cfg.max_steps:
            step += 1
            started = time.perf_counter()
            batches = next_batches(data, cfg.optim.grad_accum, skipped, step)
            inject_faults(engine, accelerator, step)
            lr = engine.lr  # this update's
            stats = sft_update(engine, batches, ctc_weight=cfg.ctc.weight, eos_token_ids=processor.eos_token_ids,
                               chunk=cfg.optim.logits_chunk)
            last_batch = (batches[-1]["epoch"], batches[-1]["position"])
            nonfinite_run = nonfinite_run + 1 if stats["nonfinite"] else 0
            log.log(step, {**stats, "lr": lr, "step_seconds": time.perf_counter() - started,
                           "samples": float(sum(b["size"] for b in batches)), "skipped_files": skipped.total})
            stop_if_nonfinite(nonfinite_run, cfg, step, run_dir)
            evaluate_and_checkpoint(cfg, accelerator, run_dir, step, engine, processor, evaluator, sampler,
                                    last_batch, skipped)
            stop_if_preempted(preempt, cfg, accelerator, run_dir, step, engine, sampler, last_batch, evaluator,
                              skipped, log)
    return finish_run(cfg, accelerator, run_dir, step, engine, processor, evaluator, log, skipped, model_cfg)


def build_parser() -> argparse.ArgumentParser:
    return recipe_parser(__doc__, SFTConfig, None, "max_steps=20 optim.lr=1e-4")


def parse_args(argv: list[str] | None = None) -> SFTConfig:
    return recipe_config(build_parser(), SFTConfig, argv)


if __name__ == "__main__":
    with config_errors_exit():  # a wrong key or value, here or while the run is set up: one line, status 2
        main(parse_args())
