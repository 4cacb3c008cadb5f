"""On-policy distillation: the student transcribes, the teacher scores every token, the student learns.

    accelerate launch train/distill.py [--config configs/distill/toy.yaml] [key=value ...]
    python train/distill.py --config configs/distill/toy.yaml max_steps=20      # one process

Reads top to bottom: config -> accelerator and run folder -> student, teacher, data, optimizer ->
resume -> loop (collect rollouts and teacher scores; update) with logging, dev evaluation and
checkpoints -> final model. The default config is the bundled toy setup.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import InitProcessGroupKwargs, gather_object, set_seed  # noqa: E402
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup  # noqa: E402

from train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint  # noqa: E402
from train.config import DistillConfig, ModelConfig, config_to_dict, config_to_yaml, load_config  # noqa: E402
from train.data.audio import AudioLimits, SkipCounter  # noqa: E402
from train.data.loader import make_loader  # noqa: E402
from train.eval.periodic import PeriodicEvaluator  # noqa: E402
from train.eval.timed import StudentTranscriber  # noqa: E402
from train.models import build_student, configure_training, load_student, save_student  # noqa: E402
from train.opd.step import collect, update  # noqa: E402
from train.run_log import RunLog  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "distill" / "toy.yaml"
TOY_DIR = "data/toy_tts"


def make_accelerator(cfg: DistillConfig) -> Accelerator:
    trackers = []
    if cfg.log.wandb_mode != "disabled":
        trackers.append("wandb")
    if cfg.log.tensorboard:
        trackers.append("tensorboard")
    # gloo: DeepSpeed on CPU needs it (ENVIRONMENT.md); NCCL is chosen as usual on GPUs.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if distributed and not torch.cuda.is_available() else []
    # Without a GPU, `cpu=True` makes a multi-GPU launch run on CPUs; but it would also switch
    # DeepSpeed off, which runs on CPUs by itself.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return Accelerator(gradient_accumulation_steps=cfg.optim.grad_accum, mixed_precision=cfg.mixed_precision,
                       log_with=trackers or None, project_dir=cfg.output_dir, kwargs_handlers=kwargs,
                       cpu=not torch.cuda.is_available() and not deepspeed)


def prepare_run_dir(cfg: DistillConfig, accelerator) -> Path:
    run_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        for sub in ("checkpoints", "eval", "plots"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    accelerator.wait_for_everyone()
    return run_dir


def build_student_model(cfg: DistillConfig):
    model_cfg = load_config(ModelConfig, cfg.student.model)
    if cfg.student.checkpoint:
        model, processor = load_student(cfg.student.checkpoint)
        return configure_training(model.train(), model_cfg), processor
    model, processor = build_student(model_cfg)
    return model.train(), processor


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


def build_optimizer(cfg: DistillConfig, model):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the model config freezes every part")
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    if cfg.optim.schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.max_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, cfg.optim.warmup_steps)
    return optimizer, scheduler


def batches_forever(loader):
    """Batches across epochs (the sampler advances its own epoch)."""
    while True:
        yield from loader


def ensure_toy_corpus(cfg: DistillConfig, accelerator) -> None:
    """The bundled toy setup builds its corpus on first use (about 2 minutes, offline)."""
    paths = [s.path for s in cfg.data.train + cfg.data.dev]
    if not any(p.startswith(TOY_DIR + "/") and not Path(p).exists() for p in paths):
        return
    if accelerator.is_main_process:
        from data_recipes.toy_tts.prepare import main as build_toy

        build_toy(["--out", TOY_DIR, "--seed", "0"])
    accelerator.wait_for_everyone()


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
    evaluator = PeriodicEvaluator([s.path for s in cfg.data.dev], run_dir, max(cfg.eval.every, 1), accelerator,
                                  cfg.eval.batch_size, AudioLimits(cfg.data.min_seconds, cfg.data.max_seconds))
    optimizer, scheduler = build_optimizer(cfg, student)
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        # Batches are sized by audio seconds, not by count; DeepSpeed uses this number only for its logs.
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    all_done = decoding_sync(accelerator)
    allowed_V = processor.allowed_token_mask(accelerator.unwrap_model(student).config.text_config.vocab_size)

    step, last_batch, skipped, nonfinite_run = 0, None, SkipCounter(), 0
    resume_from = resolve_resume(cfg.resume, run_dir)
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
        step, skipped = state["step"], SkipCounter(state["skipped"])
        sampler.load_state_dict(state["sampler"])
        evaluator.load_state_dict(state["evaluator"])
        accelerator.print(f"resumed from {resume_from} at step {step}")

    log = RunLog(accelerator, run_dir, cfg.max_steps, step, cfg.log, config_to_dict(cfg))
    data = batches_forever(loader)
    generator = torch.Generator(device=accelerator.device)
    kill_at = int(os.environ.get("ARK_OPD_KILL_AT_STEP", "0"))  # fault injection for the resume test
    while step < cfg.max_steps:
        step += 1
        started = time.perf_counter()
        # Seeded per step and rank, so a resumed run samples exactly what it would have.
        generator.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + accelerator.process_index)
        on_policy = torch.rand((), generator=generator, device=generator.device).item() < cfg.opd.on_policy_fraction
        batches = [next(data) for _ in range(cfg.optim.grad_accum)]
        for b in batches:
            skipped.update(b["skipped"])
        micro = collect(accelerator.unwrap_model(student), processor, teacher, batches, cfg.opd, on_policy,
                        generator, accelerator.device, all_done)
        rolled = time.perf_counter()
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        stats = update(accelerator, student, optimizer, scheduler, micro, cfg.opd, allowed_V, cfg.optim.grad_clip)
        last_batch = (batches[-1]["epoch"], batches[-1]["position"])
        nonfinite_run = nonfinite_run + 1 if stats["nonfinite"] else 0
        log.log(step, {**stats, **rollout_stats(micro, processor), "lr": scheduler.get_last_lr()[0],
                       "rollout_seconds": rolled - started, "step_seconds": time.perf_counter() - started,
                       "skipped_files": sum(skipped.values()), "on_policy": float(on_policy)})
        if nonfinite_run >= cfg.max_nonfinite_in_a_row:  # skipped steps changed no weight
            raise RuntimeError(f"{nonfinite_run} non-finite losses in a row at step {step}; the last good "
                               f"checkpoint in {run_dir / 'checkpoints'} is intact")
        if cfg.eval.every and evaluator.due(step):
            run_dev_eval(evaluator, step, student, processor, cfg, accelerator)
        if step % cfg.checkpoint.every == 0 or step == cfg.max_steps:
            save_checkpoint(accelerator, run_dir, step, {"sampler": sampler.state_dict(after=last_batch),
                                                         "evaluator": evaluator.state_dict(),
                                                         "skipped": dict(skipped)}, cfg.checkpoint.keep_last)

    final_report = run_dev_eval(evaluator, step, student, processor, cfg, accelerator) \
        if not cfg.eval.every or not evaluator.due(step) else None
    save_final(accelerator, student, processor, run_dir)
    log.close()
    accelerator.print(skipped.report())
    return {"step": step, "run_dir": str(run_dir), "final_eval": final_report}


def rollout_stats(micro, processor) -> dict:
    rows = [mb for mb in micro if mb.rollout is not None]
    if not rows:
        return {}
    lengths = torch.cat([mb.rollout.mask_B_T.sum(-1).float() for mb in rows])
    eos = torch.tensor(processor.eos_token_ids, device=rows[0].rollout.tokens_B_T.device)
    ended = torch.cat([torch.isin(mb.rollout.tokens_B_T, eos).any(-1).float() for mb in rows])
    return {"rollout_length": float(lengths.mean()), "eos_rate": float(ended.mean()),
            "samples": float(len(lengths)), "rollout_tokens": float(lengths.sum())}


def run_dev_eval(evaluator, step, student, processor, cfg, accelerator) -> dict | None:
    model = accelerator.unwrap_model(student)
    was_training = model.training
    model.eval()
    report = evaluator.evaluate(step, StudentTranscriber(model, processor, max_new_tokens=cfg.eval.max_new_tokens,
                                                         language_prompt=cfg.eval.language_prompt,
                                                         sampling={"all_done": decoding_sync(accelerator)}))
    model.train(was_training)
    if report is not None and accelerator.log_with:  # eval/history.jsonl keeps them in the run folder
        accelerator.log(evaluator.metrics(report), step=step)
    return report


def save_final(accelerator, student, processor, run_dir: Path) -> None:
    """The final model, and a check that data-parallel ranks ended with the same parameters."""
    state_dict = accelerator.get_state_dict(student)  # gathers ZeRO-3 shards onto rank 0
    digests = gather_object([parameter_digest(state_dict)]) if accelerator.num_processes > 1 else [
        parameter_digest(state_dict)]
    if accelerator.is_main_process:
        save_student(accelerator.unwrap_model(student), processor, run_dir / "final", state_dict=state_dict)
        (run_dir / "final" / "rank_digests.json").write_text(json.dumps(digests))
        if not is_zero3(accelerator) and len(set(digests)) > 1:  # under ZeRO-3 only rank 0 has them whole
            raise RuntimeError(f"data-parallel ranks ended with different parameters: {digests}")
    accelerator.wait_for_everyone()


def parameter_digest(state_dict: dict | None) -> str:
    if state_dict is None:  # ZeRO-3 gathers the weights on rank 0 only
        return ""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def no_zero3_init(accelerator, unless_asked: bool = False):
    """Build models whole inside this context even under ZeRO-3. transformers partitions every model
    it constructs while accelerate's DeepSpeed config is registered (whatever zero3_init_flag says):
    a teacher that no DeepSpeed engine owns would never gather its weights back, and a student
    initialised inside zero.Init draws other random weights than one built whole. With
    `unless_asked`, the launcher's zero3_init_flag=true (for models too big to build whole) wins."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or (unless_asked and plugin.zero3_init_flag):
        yield
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref  # no public getter for the object itself
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def refuse_zero3_with_tied_embeddings(accelerator, student) -> None:
    """Measured here (DeepSpeed 0.19.8): under ZeRO-3 a student whose lm_head is tied to its input
    embeddings ends a step with other embedding rows than under ZeRO-2 or DDP (which agree), while an
    untied student agrees to 1e-5 across all three. Until that is understood, refuse the combination."""
    if is_zero3(accelerator) and student.config.tie_word_embeddings:
        raise ValueError("DeepSpeed ZeRO-3 with tied input/output embeddings (decoder.tie_word_embeddings=true, "
                         "as in ARK-ASR-3B) updates the embeddings differently from ZeRO-2/DDP in our tests: use "
                         "configs/accelerate/zero2.yaml, or a student config with tie_word_embeddings: false")


def decoding_sync(accelerator):
    """Under ZeRO-3 every forward gathers parameters collectively: all ranks decode until all are done."""
    if not is_zero3(accelerator):
        return None

    def all_done(local_done: bool) -> bool:
        flag = torch.tensor(float(local_done), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="min"))

    return all_done


def is_zero3(accelerator) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def parse_args(argv: list[str] | None = None) -> DistillConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. max_steps=20 opd.k=16")
    args = parser.parse_args(argv)
    return load_config(DistillConfig, args.config, args.overrides)


if __name__ == "__main__":
    main(parse_args())
