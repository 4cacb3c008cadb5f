"""On-policy distillation: the student transcribes, the teacher scores every token, the student learns.

    accelerate launch train/distill.py [--config configs/distill/toy.yaml] [key=value ...]
    python train/distill.py --config configs/distill/toy.yaml max_steps=20      # one process

Reads top to bottom: config -> accelerator and run folder -> student, teacher, data, optimizer ->
resume -> loop (collect rollouts and teacher scores; update) with logging, dev evaluation and
checkpoints -> final model. The default config is the bundled toy setup.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate.utils import set_seed  # noqa: E402

from train.config import DistillConfig, ModelConfig, config_to_dict, load_config  # noqa: E402
from train.data.loader import make_loader  # noqa: E402
from train.models import build_student  # noqa: E402
from train.opd.step import collect, update  # noqa: E402
from train.recipe import (  # noqa: E402
    batches_forever,
    build_student_model,
    decoding_sync,
    ensure_toy_corpus,
    evaluate_and_checkpoint,
    finish_run,
    make_accelerator,
    make_evaluator,
    next_batches,
    no_zero3_init,
    prepare_run_dir,
    prepare_training,
    refuse_zero3_with_tied_embeddings,
    resume_run,
    stop_if_nonfinite,
)
from train.run_log import RunLog  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "distill" / "toy.yaml"


def build_teacher(cfg: DistillConfig, student_processor, student_vocab_size: int, device):
    t = cfg.teacher
    if t.kind == "qwen3_asr":
        from train.teachers.qwen3_asr import Qwen3ASRTeacher

        return Qwen3ASRTeacher.from_pretrained(t.checkpoint, student_processor, dtype=t.dtype, device=device,
                                               max_unmapped=t.max_unmapped)
    from train.teachers.same_family import SameFamilyTeacher

    if t.checkpoint:
        return SameFamilyTeacher.from_pretrained(t.checkpoint, student_processor, student_vocab_size, dtype=t.dtype,
                                                 device=device, language_prompt=t.language_prompt,
                                                 max_unmapped=t.max_unmapped)
    torch.manual_seed(t.seed)  # a random teacher of a config: for demos and tests
    model, processor = build_student(load_config(ModelConfig, t.model))
    if t.init_std:  # N(0, init_std^2 / fan_in): peaked, varied outputs instead of near-uniform ones
        gen = torch.Generator().manual_seed(t.seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * t.init_std / p.shape[-1] ** 0.5)
    return SameFamilyTeacher(model.to(device), processor, student_processor, student_vocab_size,
                             name=f"random:{t.model}", language_prompt=t.language_prompt, max_unmapped=t.max_unmapped)


def main(cfg: DistillConfig) -> dict:
    accelerator = make_accelerator(cfg)
    # One seed on every rank: the student must start identical everywhere (ZeRO-3 keeps each rank's own
    # partition of its initial weights; nothing broadcasts them). Sampling is seeded per step and rank.
    set_seed(cfg.seed)
    ensure_toy_corpus(cfg, accelerator)
    run_dir = prepare_run_dir(cfg, accelerator)

    with no_zero3_init(accelerator, unless_asked=True):  # partitioned at build only with zero3_init_flag
        student, processor = build_student_model(cfg)
    refuse_zero3_with_tied_embeddings(accelerator, student)
    with no_zero3_init(accelerator):  # the teacher is not trained: whole weights on every rank
        teacher = build_teacher(cfg, processor, student.config.text_config.vocab_size, accelerator.device)
    needs_audio = cfg.teacher.kind == "qwen3_asr" or (
        teacher.processor.feature_extractor.feature_size != processor.feature_extractor.feature_size)
    cfg.data.keep_audio = cfg.data.keep_audio or needs_audio
    loader = make_loader(cfg.data.train, processor, cfg.data, seed=cfg.seed, num_replicas=accelerator.num_processes,
                         rank=accelerator.process_index)
    sampler = loader.batch_sampler
    evaluator = make_evaluator(cfg, run_dir, accelerator, processor)
    student, optimizer, scheduler = prepare_training(cfg, accelerator, student)
    all_done = decoding_sync(accelerator)
    allowed_V = processor.allowed_token_mask(accelerator.unwrap_model(student).config.text_config.vocab_size)

    step, skipped = resume_run(cfg, accelerator, run_dir, sampler, evaluator)
    last_batch, nonfinite_run = None, 0
    log = RunLog(accelerator, run_dir, cfg.max_steps, step, cfg.log, config_to_dict(cfg))
    data = batches_forever(loader)
    generator = torch.Generator(device=accelerator.device)
    kill_at = int(os.environ.get("ARK_OPD_KILL_AT_STEP", "0"))  # fault injection for the resume test
    while step < cfg.max_steps:
        step += 1
        started = time.perf_counter()
        # Seeded per step (and rank, for GKD's coin), so a resumed run samples exactly what it would have;
        # sampled rollouts are keyed by the step's seed and each clip's id, whatever the batch layout.
        step_seed = cfg.seed * 1_000_003 + step * 1_009
        generator.manual_seed(step_seed + accelerator.process_index)
        on_policy = torch.rand((), generator=generator, device=generator.device).item() < cfg.opd.on_policy_fraction
        batches = next_batches(data, cfg.optim.grad_accum, skipped)
        micro = collect(accelerator.unwrap_model(student), processor, teacher, batches, cfg.opd, on_policy,
                        step_seed, accelerator.device, all_done)
        rolled = time.perf_counter()
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        stats = update(accelerator, student, optimizer, scheduler, micro, cfg.opd, allowed_V, cfg.optim.grad_clip)
        last_batch = (batches[-1]["epoch"], batches[-1]["position"])
        nonfinite_run = nonfinite_run + 1 if stats["nonfinite"] else 0
        log.log(step, {**stats, **rollout_stats(micro, processor), "lr": scheduler.get_last_lr()[0],
                       "rollout_seconds": rolled - started, "step_seconds": time.perf_counter() - started,
                       "skipped_files": sum(skipped.values()), "on_policy": float(on_policy)})
        stop_if_nonfinite(nonfinite_run, cfg, step, run_dir)
        evaluate_and_checkpoint(cfg, accelerator, run_dir, step, student, processor, evaluator, sampler, last_batch,
                                skipped)
    return finish_run(cfg, accelerator, run_dir, step, student, processor, evaluator, log, skipped)


def rollout_stats(micro, processor) -> dict:
    rows = [mb for mb in micro if mb.rollout is not None]
    if not rows:
        return {}
    lengths = torch.cat([mb.rollout.mask_B_T.sum(-1).float() for mb in rows])
    eos = torch.tensor(processor.eos_token_ids, device=rows[0].rollout.tokens_B_T.device)
    ended = torch.cat([torch.isin(mb.rollout.tokens_B_T, eos).any(-1).float() for mb in rows])
    return {"rollout_length": float(lengths.mean()), "eos_rate": float(ended.mean()),
            "samples": float(len(lengths)), "rollout_tokens": float(lengths.sum())}


def parse_args(argv: list[str] | None = None) -> DistillConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. max_steps=20 opd.k=16")
    args = parser.parse_args(argv)
    return load_config(DistillConfig, args.config, args.overrides)


if __name__ == "__main__":
    main(parse_args())
