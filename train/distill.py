"""On-policy distillation: the student transcribes, the teacher scores every token, the student learns.

    accelerate launch train/distill.py [--config configs/distill/toy.yaml] [key=value ...]
    python train/distill.py --config configs/distill/toy.yaml max_steps=20      # one process

Reads top to bottom: config -> accelerator and run folder -> student, teacher, data, optimizer ->
resume -> the starting model's dev evaluation (step 0) -> loop (collect rollouts and teacher scores;
update) with logging, dev evaluation and checkpoints -> final model. The default config is the bundled
toy setup. A signal of `faults.signals` (SIGTERM, SIGUSR1) stops the run after a whole step, at a checkpoint
of it, with exit status 75; resume=auto goes on from there (train/preemption.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate.utils import set_seed  # noqa: E402

from train.cli import config_errors_exit, recipe_config, recipe_parser  # noqa: E402
from train.config import (  # noqa: E402
    DistillConfig,
    ModelConfig,
    config_to_dict,
    load_config,
)
from train.data.loader import make_loader  # noqa: E402
from train.models import build_student  # noqa: E402
from train.engine import Engine  # noqa: E402
from train.opd.gkd import check_reference_use, gkd_coin, gkd_lambda  # noqa: E402
from train.opd.step import collect, update  # noqa: E402
from train.recipe import (  # noqa: E402
    batches_forever,
    build_student_model,
    decoding_sync,
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

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "distill" / "toy.yaml"


def build_teacher(cfg: DistillConfig, student_processor, student_vocab_size: int, device):
    t = cfg.teacher
    if t.kind == "qwen3_asr":
        from train.teachers.qwen3_asr import Qwen3ASRTeacher

        return Qwen3ASRTeacher.from_pretrained(t.checkpoint, student_processor, dtype=t.dtype, device=device,
                                               max_unmapped=t.max_unmapped, rows_per_forward=t.rows_per_forward)
    from train.teachers.same_family import SameFamilyTeacher

    if t.checkpoint:
        return SameFamilyTeacher.from_pretrained(t.checkpoint, student_processor, student_vocab_size, dtype=t.dtype,
                                                 device=device, language_prompt=t.language_prompt,
                                                 max_unmapped=t.max_unmapped, rows_per_forward=t.rows_per_forward)
    torch.manual_seed(t.seed)  # a random teacher of a config: for demos and tests
    model, processor = build_student(load_config(ModelConfig, t.model), device=device)  # built where it runs
    if t.init_std:  # N(0, init_std^2 / fan_in): peaked, varied outputs instead of near-uniform ones
        gen = torch.Generator(device=model.device).manual_seed(t.seed)  # drawn there too
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
                            * t.init_std / p.shape[-1] ** 0.5)
    return SameFamilyTeacher(model, processor, student_processor, student_vocab_size,
                             name=f"random:{t.model}", language_prompt=t.language_prompt, max_unmapped=t.max_unmapped,
                             rows_per_forward=t.rows_per_forward)


def main(cfg: DistillConfig) -> dict:
    model_cfg = student_model_config(cfg)  # every key and the precision checked before any compute
    accelerator = make_accelerator(cfg, model_cfg)
    # One seed on every rank: the student must start identical everywhere (ZeRO-3 keeps each rank's own
    # partition of its initial weights; nothing broadcasts them).
    set_seed(cfg.seed)
    ensure_toy_corpus(cfg, accelerator)
    manifests = read_run_manifests(cfg, accelerator)  # every manifest read and checked before any build
    check_reference_use(cfg.opd, [s.path for s in cfg.data.train], *manifests.train, say=accelerator.print)
    run_dir = prepare_run_dir(cfg, accelerator)

    with no_zero3_init(accelerator, unless_asked=True):  # partitioned at build only with zero3_init_flag
        student, processor = build_student_model(cfg, model_cfg, accelerator)
    settle_prompting(cfg, processor, accelerator)  # data/eval.language_prompt: unset = as the model was trained
    refuse_zero3_with_tied_embeddings(accelerator, student)
    with no_zero3_init(accelerator):  # the teacher is not trained: whole weights on every rank
        teacher = build_teacher(cfg, processor, student.config.text_config.vocab_size, accelerator.device)
    needs_audio = cfg.teacher.kind == "qwen3_asr" or (
        teacher.processor.feature_extractor.feature_size != processor.feature_extractor.feature_size)
    cfg.data.keep_audio = cfg.data.keep_audio or needs_audio
    loader = make_loader(cfg.data.train, processor, cfg.data, seed=cfg.seed, num_replicas=accelerator.num_processes,
                         rank=accelerator.process_index, new_tokens=cfg.opd.max_new_tokens,
                         rows_per_clip=cfg.opd.n_samples, read=manifests.train)
    sampler = loader.batch_sampler
    evaluator = make_evaluator(cfg, run_dir, accelerator, processor, manifests.dev)
    engine = Engine(accelerator, cfg, student)
    all_done = decoding_sync(accelerator)
    allowed_V = processor.allowed_token_mask(accelerator.unwrap_model(engine.model).config.text_config.vocab_size)

    step, skipped = resume_run(cfg, accelerator, run_dir, sampler, evaluator, engine)
    last_batch, nonfinite_run = None, 0
    log = RunLog(accelerator, run_dir, cfg.max_steps, step, cfg.log, config_to_dict(cfg))
    evaluate_at_start(cfg, accelerator, step, engine, processor, evaluator, skipped)  # eval.on_start
    data = batches_forever(loader)
    with preemption_watch(cfg, accelerator, run_dir) as preempt:  # faults.signals: stop after a whole step
        while step < cfg.max_steps:
            step += 1
            started = time.perf_counter()
            # Sampled rollouts are keyed by the step's seed and each clip's id, whatever the batch layout,
            # so a resumed run samples exactly what it would have.
            step_seed = cfg.seed * 1_000_003 + step * 1_009
            on_policy = gkd_coin(cfg.opd, cfg.seed, step)
            batches = next_batches(data, cfg.optim.grad_accum, skipped, step)
            micro = collect(accelerator.unwrap_model(engine.model), processor, teacher, batches, cfg.opd, on_policy,
                            step_seed, accelerator.device, all_done, chunk=cfg.optim.logits_chunk,
                            decoder=engine.decoder)
            rolled = time.perf_counter()
            inject_faults(engine, accelerator, step)
            lr = engine.lr  # this update's
            stats = update(engine, micro, cfg.opd, allowed_V, chunk=cfg.optim.logits_chunk)
            last_batch = (batches[-1]["epoch"], batches[-1]["position"])
            nonfinite_run = nonfinite_run + 1 if stats["nonfinite"] else 0
            log.log(step, {**stats, **rollout_stats(micro, processor), "lr": lr,
                           "rollout_seconds": rolled - started, "step_seconds": time.perf_counter() - started,
                           "skipped_files": skipped.total, "on_policy": on_policy_share(micro),
                           "gkd_lambda": gkd_lambda(cfg.opd, step)})
            stop_if_nonfinite(nonfinite_run, cfg, step, run_dir)
            evaluate_and_checkpoint(cfg, accelerator, run_dir, step, engine, processor, evaluator, sampler,
                                    last_batch, skipped)
            stop_if_preempted(preempt, cfg, accelerator, run_dir, step, engine, sampler, last_batch, evaluator,
                              skipped, log)
    return finish_run(cfg, accelerator, run_dir, step, engine, processor, evaluator, log, skipped, model_cfg)


def on_policy_share(micro) -> float:
    """The share of the step's micro-batches the student rolled out: the GKD coin's side, except that a
    batch without transcripts is rolled out on an off-policy step too."""
    rows = [mb for mb in micro if mb.rollout is not None]
    return sum(mb.on_policy for mb in rows) / len(rows) if rows else 0.0


def rollout_stats(micro, processor) -> dict:
    rows = [mb for mb in micro if mb.rollout is not None]
    if not rows:
        return {}
    lengths = torch.cat([mb.rollout.mask_B_T.sum(-1).float() for mb in rows])
    eos = torch.tensor(processor.eos_token_ids, device=rows[0].rollout.tokens_B_T.device)
    ended = torch.cat([torch.isin(mb.rollout.tokens_B_T, eos).any(-1).float() for mb in rows])
    return {"rollout_length": float(lengths.mean()), "eos_rate": float(ended.mean()),
            "samples": float(len(lengths)), "rollout_tokens": float(lengths.sum())}


def build_parser() -> argparse.ArgumentParser:
    return recipe_parser(__doc__, DistillConfig, str(DEFAULT_CONFIG), "max_steps=20 opd.k=16")


def parse_args(argv: list[str] | None = None) -> DistillConfig:
    return recipe_config(build_parser(), DistillConfig, argv)


if __name__ == "__main__":
    with config_errors_exit():  # a wrong key or value, here or while the run is set up: one line, status 2
        main(parse_args())
