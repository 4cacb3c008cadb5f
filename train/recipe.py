"""Plumbing every training recipe shares: accelerator, run folder, student, optimiser, data stream,
dev evaluation, final model, and the DeepSpeed ZeRO-3 precautions. One implementation of each."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, gather_object
from transformers.integrations import is_deepspeed_zero3_enabled

from train.checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    CheckpointWriteError,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    saved_config,
    update_trainer_state,
    write_final,
)
from train.config import ConfigError, ModelConfig, RunConfig, config_to_yaml, load_config
from train.data.audio import AudioLimits, SkipCounter
from train.data.loader import read_labelled_sources, read_sources
from train.data.manifest import ManifestError, check_unique_ids, read_manifest
from train.eval.listening import ListeningProbe
from train.eval.periodic import EvaluationError, PeriodicEvaluator
from train.eval.timed import StudentTranscriber
from train.engine import is_zero3, params_sharded, resolve_mixed_precision, storage_dtype
from train.models import build_student, configure_training, load_student, save_student
from train.models.build import DTYPES, frozen_random_parts
from train.models.ctc import StudentWithCTC, student_state_dict, unwrap_student
from train.models.processor import prompt_with_language
from train.preemption import PREEMPTED_EXIT_CODE, Preempted, Preemption
from train.quiet import expect_cpu, no_shard_bar
from train.run_config import resume_changes

TOY_DIR = "data/toy_tts"
PENDING_CONFIG = ".tmp-" + CONFIG_FILE  # this launch's settings, until the run starts (resume_run)
SKIPPED_FILE = "skipped.jsonl"  # in the run folder: every clip the run could not use (SkippedClips)


def student_model_config(cfg: RunConfig) -> ModelConfig:
    """The student's model config with the run's starting points merged in, checked before any compute:
    the directories exist, and no frozen part would start (and stay) random."""
    model_cfg = load_config(ModelConfig, cfg.student.model)
    s = cfg.student
    model_cfg = dataclasses.replace(model_cfg, init_decoder_from=s.init_decoder_from or model_cfg.init_decoder_from,
                                    init_encoder_from=s.init_encoder_from or model_cfg.init_encoder_from)
    for key, path in (("student.checkpoint", s.checkpoint), ("student.init_decoder_from", model_cfg.init_decoder_from),
                      ("student.init_encoder_from", model_cfg.init_encoder_from)):
        if path and not (Path(path) / "config.json").is_file():
            raise ConfigError(f"{key}={path}: " + ("no such directory" if not Path(path).is_dir()
                                                   else "no config.json there (not a model directory)"))
    tokenizer = model_cfg.tokenizer
    # Not a folder here and not a hub id ("name" or "owner/name"): transformers would say only that the repo id
    # is malformed. (With student.checkpoint, the checkpoint's own tokenizer is used.)
    if not s.checkpoint and tokenizer and not Path(tokenizer).exists() and (
            tokenizer.count("/") > 1 or tokenizer.startswith((".", "/"))):
        raise ConfigError(f"{s.model}: tokenizer={tokenizer}: no such directory (the toy models' character "
                          "vocabulary is made by python -m train.models.char_tokenizer, as scripts/reproduce_toy.sh does)")
    random = [] if s.checkpoint else frozen_random_parts(model_cfg)
    if random and not s.allow_random_frozen:
        raise ConfigError(f"student: {'; '.join(random)}. A frozen part left at random weights never learns and "
                          f"spoils what comes after it (student.model={s.model}). Set student.checkpoint, or "
                          "student.allow_random_frozen=true if that is what you want (tests, smoke runs)")
    for part in random:
        print(f"warning: {part}, and student.allow_random_frozen=true keeps it so")
    return model_cfg


def make_accelerator(cfg: RunConfig, model_cfg: ModelConfig) -> Accelerator:
    if not torch.cuda.is_available():
        expect_cpu()  # DeepSpeed need not say it falls back to the CPU (train/quiet.py)
    trackers = []
    if cfg.log.wandb_mode != "disabled":
        trackers.append("wandb")
    if cfg.log.tensorboard:
        trackers.append("tensorboard")
    # gloo: DeepSpeed on CPU needs it (ENVIRONMENT.md); NCCL is chosen as usual on GPUs. Every collective fails
    # after faults.collective_timeout_s: a dead or hung rank ends the others (train/preemption.py).
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    group = InitProcessGroupKwargs(**({"backend": "gloo"} if distributed and not torch.cuda.is_available() else {}),
                                   timeout=timedelta(seconds=cfg.faults.collective_timeout_s))
    if "timeout" not in group.to_kwargs():  # accelerate drops one equal to its default (600 s): gloo would wait 30 min
        group.timeout += timedelta(microseconds=1)
    kwargs = [group]
    # Without a GPU, `cpu=True` makes a multi-GPU launch run on CPUs; but it would also switch
    # DeepSpeed off, which runs on CPUs by itself.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    # Accumulation is train/engine.py's (it syncs gradients on the last micro-batch itself).
    return Accelerator(gradient_accumulation_steps=1, mixed_precision=resolve_mixed_precision(cfg, model_cfg),
                       log_with=trackers or None, project_dir=cfg.output_dir, kwargs_handlers=kwargs,
                       cpu=not torch.cuda.is_available() and not deepspeed)


def ensure_toy_corpus(cfg: RunConfig, accelerator) -> None:
    """The bundled toy setup builds its corpus on first use (offline, a few minutes on 2 cores), with
    the labelled / pool split of its training audio; only the pool's audio when the run reads no
    labelled training audio (OPD from the shipped base student), which a later run adds if it must."""
    paths = [s.path for s in cfg.data.train + cfg.data.dev]
    toy = [p for p in paths if p.startswith(TOY_DIR + "/")]
    if all(Path(p).exists() for p in toy):
        return
    if accelerator.is_main_process:
        from data_recipes.toy_tts.prepare import POOL
        from data_recipes.toy_tts.prepare import main as build_toy

        pool_only = all(Path(p).name in {f"{name}.jsonl" for name in POOL} for p in toy)
        build_toy(["--out", TOY_DIR, "--seed", "0"] + (["--pool-only"] if pool_only else []))
    accelerator.wait_for_everyone()


def prepare_run_dir(cfg: RunConfig, accelerator) -> Path:
    """The run folder, and a resume checked against the settings its checkpoint was saved under, before
    any model is built. config.yaml is not written yet: `resume_run` does, once the run starts, so a
    launch that fails before that leaves the folder's record of its settings as it was."""
    run_dir = Path(cfg.output_dir)
    settings = config_to_yaml(cfg)  # as launched: the recipe may fill in derived keys later (data.keep_audio)
    check_resume_settings(cfg, run_dir, settings, accelerator)  # every rank: a refusal must stop them all
    if accelerator.is_main_process:
        for sub in ("checkpoints", "eval", "plots"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        (run_dir / PENDING_CONFIG).write_text(settings)
    accelerator.wait_for_everyone()
    return run_dir


def check_resume_settings(cfg: RunConfig, run_dir: Path, settings: str, accelerator) -> None:
    """Refuse a resume whose settings change what its checkpoint's state means (train/run_config.py);
    say which harmless ones changed. The checkpoint is chosen here, once: resume=auto takes the newest one
    whose files validate (train/checkpoint.py; a damaged one is passed over and said), an explicit one
    must validate. Validation reads every byte, so `cfg.resume` is set to the choice (its path, or never),
    which `resume_run` loads; config.yaml keeps the setting as launched."""
    checkpoint = resolve_resume(cfg.resume, run_dir, accelerator, say=accelerator.print)
    cfg.resume = str(checkpoint) if checkpoint is not None else "never"
    if checkpoint is None:
        return
    saved = saved_config(checkpoint)
    if saved is None:
        accelerator.print(f"warning: {checkpoint} has no saved config.yaml (nor its run folder): the resume's "
                          "settings cannot be checked against the ones it was saved under")
        return
    line = resume_changes(saved[0], settings, str(saved[1]))
    if line:
        accelerator.print(line)


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


def build_device(accelerator) -> torch.device | None:
    """Where to build a model: straight on the accelerator's device (a 3B model initialises there in
    seconds, not minutes of CPU init), except inside DeepSpeed's zero.Init, which partitions the weights
    as they are made and places them itself (None)."""
    return None if is_deepspeed_zero3_enabled() else accelerator.device


def build_student_model(cfg: RunConfig, model_cfg: ModelConfig, accelerator):
    """The student from `student.checkpoint`, or built with its parts' `init_*_from` weights, in the
    dtype the precision policy stores it in (train/engine.py makes its trained parts float32 masters)."""
    dtype = storage_dtype(accelerator.mixed_precision, model_cfg)
    device = build_device(accelerator)
    if cfg.student.checkpoint:
        model, processor = load_student(cfg.student.checkpoint, dtype=dtype, device=device)
        model = configure_training(model, model_cfg)
    else:
        model, processor = build_student(dataclasses.replace(model_cfg, dtype=dtype), device=device)
    if cfg.student.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train(), processor


def settle_prompting(cfg: RunConfig, processor, accelerator) -> None:
    """Whether the student's prompts name each clip's language, decided once: `data.language_prompt`, else
    as the starting model was trained (its ark_opd_prompt.json), else no; dev prompts (`eval.language_prompt`)
    follow training's unless set. The processor records it, so checkpoints and final/ remember it and
    evaluate.py, transcribe.py and a later stage's teacher or student prompt the same way by default."""
    asked = cfg.data.language_prompt
    cfg.data.language_prompt = prompt_with_language(asked, processor)
    if cfg.eval.language_prompt is None:
        cfg.eval.language_prompt = cfg.data.language_prompt
    source = ("data.language_prompt" if asked is not None else "as the starting model was trained"
              if processor.language_prompt is not None else "the starting model does not say; default")
    accelerator.print(f"language prompt: {'on' if cfg.data.language_prompt else 'off'} ({source})"
                      + (f"; dev evaluation: {'on' if cfg.eval.language_prompt else 'off'} (eval.language_prompt)"
                         if cfg.eval.language_prompt != cfg.data.language_prompt else ""))
    processor.language_prompt = cfg.data.language_prompt


def refuse_zero3_with_tied_embeddings(accelerator, student) -> None:
    """Measured here (DeepSpeed 0.19.8): under ZeRO-3 a student whose lm_head is tied to its input
    embeddings ends a step with other embedding rows than under ZeRO-2 or DDP (which agree), while an
    untied student agrees to 1e-5 across all three. Until that is understood, refuse the combination."""
    if is_zero3(accelerator) and student.config.tie_word_embeddings:
        raise ValueError("DeepSpeed ZeRO-3 with tied input/output embeddings (decoder.tie_word_embeddings=true, "
                         "as in ARK-ASR-3B) updates the embeddings differently from ZeRO-2/DDP in our tests: use "
                         "configs/accelerate/zero2.yaml, or a student config with tie_word_embeddings: false")


@dataclasses.dataclass
class RunManifests:
    train: tuple[list, list[int], list[float]]  # read_sources' (utterances, sizes, weights)
    dev: dict[str, list]  # {path: utterances}


def read_run_manifests(cfg: RunConfig, accelerator, supervised: bool = False) -> RunManifests:
    """Every manifest of the run, read and checked before any model is built: a missing file, a bad
    line, an unknown language code or an id two sources share is a ConfigError naming the key, the file
    and the line. A supervised stage reads only lines with a transcript (read_labelled_sources)."""
    try:
        train = (read_labelled_sources(cfg.data.train, "data.train", warn=accelerator.print) if supervised
                 else read_sources(cfg.data.train))
    except ManifestError as err:
        raise ConfigError(f"data.train: {err}") from None
    try:
        dev = {s.path: read_manifest(s.path) for s in cfg.data.dev}
        check_unique_ids(dev.items())
    except ManifestError as err:
        raise ConfigError(f"data.dev: {err}") from None
    return RunManifests(train, dev)


def make_evaluator(cfg: RunConfig, run_dir: Path, accelerator, processor,
                   dev: dict[str, list] | None = None) -> PeriodicEvaluator:
    """Dev evaluation on `data.dev` (`dev`: its manifests as read_run_manifests read them), with the own-
    vs swapped-audio loss gap on up to `eval.listening_clips` dev clips spread over the manifests (0: none)."""
    limits = AudioLimits(cfg.data.min_seconds, cfg.data.max_seconds)
    evaluator = PeriodicEvaluator(dev if dev is not None else [s.path for s in cfg.data.dev], run_dir,
                                  max(cfg.eval.every, 1), accelerator, cfg.eval.batch_size, limits)
    labelled = [u for utts in evaluator.manifests.values() for u in utts if u.text]
    if cfg.eval.listening_clips and len(labelled) >= 2:
        spread = labelled[:: max(1, len(labelled) // cfg.eval.listening_clips)][: cfg.eval.listening_clips]
        evaluator.listening = ListeningProbe(spread, processor, clips=len(spread), batch_size=cfg.eval.batch_size,
                                             limits=limits, language_prompt=cfg.data.language_prompt)
    return evaluator


def resume_run(cfg: RunConfig, accelerator, run_dir: Path, sampler, evaluator, engine) -> tuple[int, SkippedClips]:
    """Restore model/optimizer/RNG, the schedule, the sampler position and the evaluator's history from
    the checkpoint `cfg.resume` names (`prepare_run_dir` chose it, validated its files and checked its
    settings); (step, skipped clips) to go on from. The run starts here: its config.yaml is written."""
    path = resolve_resume(cfg.resume, run_dir, accelerator, validate=False)
    if path is None:
        record_settings(accelerator, run_dir)
        return 0, SkippedClips(accelerator, run_dir)
    state = load_checkpoint(accelerator, path)
    if "engine" not in state:
        raise ValueError(f"{path}/trainer_state.json has no 'engine' (LR schedule) entry: it was written by an "
                         "older ark-opd; start a new output_dir, or resume=never")
    engine.load_state_dict(state["engine"])
    sampler.load_state_dict(state["sampler"])
    evaluator.load_state_dict(state["evaluator"])
    accelerator.print(f"resumed from {path} at step {state['step']}")
    record_settings(accelerator, run_dir)
    return state["step"], SkippedClips(accelerator, run_dir, state["skipped"], state.get("skipped_lines"))


def record_settings(accelerator, run_dir: Path) -> None:
    """config.yaml: the settings `prepare_run_dir` kept aside, now that the run starts (each checkpoint
    copies it)."""
    if accelerator.is_main_process and (run_dir / PENDING_CONFIG).is_file():
        os.replace(run_dir / PENDING_CONFIG, run_dir / CONFIG_FILE)


class SkippedClips:
    """The clips a run could not use: counted by reason (`counts`, for the step log and the final report)
    and named in the run folder's skipped.jsonl, one line per clip {step, id, audio, reason, detail, split}
    (split: train, or dev for a dev evaluation's). Each rank holds its clips until a point every rank
    reaches (a checkpoint, the step-0 or the final evaluation), where `flush` gathers them and rank 0
    appends them, by step, before the checkpoint is written. The checkpoint keeps the file's line count:
    a run resumed from it cuts the file back to that many lines and replays the steps after it, so the
    file ends as an uninterrupted run's does, with no line twice and none lost."""

    def __init__(self, accelerator, run_dir: Path, counts: dict | None = None, lines: int | None = 0):
        """`lines`: how many of the file's lines to keep (a resumed checkpoint's count; 0: a new run); None
        (a checkpoint saved before the count was kept): the file as it is."""
        self.accelerator, self.path = accelerator, Path(run_dir) / SKIPPED_FILE
        self.counts, self.pending = SkipCounter(counts or {}), []
        if accelerator.is_main_process:  # the only writer
            kept = self.path.read_text().splitlines(keepends=True) if self.path.is_file() else []
            lines = len(kept) if lines is None else lines
            self.path.write_text("".join(kept[:lines]))
        self.lines = lines or 0  # rank 0's count is the one its checkpoints save

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, step: int, split: str, clips: list[dict]) -> None:
        """Hold this rank's `clips` ({id, audio, reason, detail}) of `step` for the next flush."""
        self.pending.extend({"step": step, **clip, "split": split} for clip in clips)

    def flush(self) -> None:
        """Collective (every rank calls it): the clips every rank holds, appended by rank 0, synced to disk."""
        records = gather_object(self.pending) if self.accelerator.num_processes > 1 else self.pending
        self.pending = []
        records = sorted(records, key=lambda r: r["step"])  # stable: by rank, then as held, within a step
        if self.accelerator.is_main_process and records:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                f.flush()
                os.fsync(f.fileno())
        self.lines += len(records)

    def report(self) -> str:
        """The final report's line: training's skips by reason, and where each skipped clip is named."""
        return self.counts.report() + (f"; each skipped clip (training and dev) is named in {self.path}"
                                       if self.lines else "")


def batches_forever(loader):
    """Batches across epochs (the sampler advances its own epoch)."""
    while True:
        yield from loader


def next_batches(data, count: int, skipped: SkippedClips, step: int) -> list[dict]:
    """The step's `count` micro-batches; the clips they had to skip are counted and held for skipped.jsonl."""
    batches = [next(data) for _ in range(count)]
    for batch in batches:
        skipped.counts.update(batch["skipped"])
        skipped.add(step, "train", batch["skipped_clips"])
    return batches


def inject_faults(engine, accelerator, step: int) -> None:
    """Fault injection for the tests, at step N after its rollouts, before its update: ARK_OPD_KILL_AT_STEP=N
    kills the process (SIGKILL); ARK_OPD_SIGNAL_AT_STEP=N sends it ARK_OPD_SIGNAL (default SIGTERM), or sends
    it to the launcher (the parent process) with ARK_OPD_SIGNAL_TO=launcher;
    ARK_OPD_HANG_AT_STEP=N makes it hang (sleep for an hour); each on every rank, or on ARK_OPD_FAULT_RANK
    only. ARK_OPD_NAN_AT_STEP=N gives the last rank a NaN loss at step N."""
    env = os.environ.get
    if env("ARK_OPD_FAULT_RANK", str(accelerator.process_index)) == str(accelerator.process_index):
        if step == int(env("ARK_OPD_KILL_AT_STEP", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        if step == int(env("ARK_OPD_SIGNAL_AT_STEP", "0")):
            to = os.getppid() if env("ARK_OPD_SIGNAL_TO") == "launcher" else os.getpid()
            os.kill(to, signal.Signals[env("ARK_OPD_SIGNAL", "SIGTERM")])
        if step == int(env("ARK_OPD_HANG_AT_STEP", "0")):
            time.sleep(3600)
    engine.inject_nonfinite = step == int(os.environ.get("ARK_OPD_NAN_AT_STEP", "0")) and \
        accelerator.process_index == accelerator.num_processes - 1


def stop_if_nonfinite(nonfinite_run: int, cfg: RunConfig, step: int, run_dir: Path) -> None:
    """Too many non-finite steps in a row end the run; skipped steps changed no weight."""
    if nonfinite_run >= cfg.max_nonfinite_in_a_row:
        raise RuntimeError(f"{nonfinite_run} non-finite losses in a row at step {step}; the last good "
                           f"checkpoint in {run_dir / 'checkpoints'} is intact")


def preemption_watch(cfg: RunConfig, accelerator, run_dir: Path) -> Preemption:
    """`with preemption_watch(...) as preempt:` around the training loop: each of `faults.signals` is noted, and
    `stop_if_preempted` stops every rank after the same step (train/preemption.py)."""
    return Preemption(cfg.faults.signals, accelerator, run_dir)


def stop_if_preempted(preempt: Preemption, cfg: RunConfig, accelerator, run_dir: Path, step: int, engine, sampler,
                      last_batch, evaluator, skipped: SkippedClips, log) -> None:
    """Collective, after `step`, its dev evaluation and checkpoint: if any rank received one of `faults.signals`,
    every rank stops here: the checkpoint of this step (unless it was due anyway), the metrics log and
    trackers closed, one line, exit status 75 (Preempted). No final model: the run is not finished."""
    stop = preempt.agreed(step)
    if stop is None:
        return
    if not checkpoint_due(cfg, step):  # checkpoint.on_error is not for this one: a failure to write it is raised
        save_run_checkpoint(accelerator, run_dir, step, engine, sampler, last_batch, evaluator, skipped,
                            cfg.checkpoint.keep_last)
    accelerator.wait_for_everyone()
    checkpoint = run_dir / "checkpoints" / f"step-{step}"
    # (a checkpoint due at this step that could not be written, under checkpoint.on_error=continue, was said)
    saved = f"checkpoint {checkpoint} written" if (checkpoint / STATE_FILE).is_file() else \
        f"checkpoint {checkpoint} could not be written (said above): the newest complete one is resumed"
    ranks = ", ".join(map(str, stop.ranks))
    line = (f"preempted by {stop.signal} (received by rank{'s' if len(stop.ranks) > 1 else ''} {ranks}) at step "
            f"{step}: {saved}; resume with resume=auto (exit status {PREEMPTED_EXIT_CODE})")
    log.close()
    accelerator.print(line, flush=True)
    raise Preempted(line)


def checkpoint_due(cfg: RunConfig, step: int) -> bool:
    return step % cfg.checkpoint.every == 0 or step == cfg.max_steps


@contextlib.contextmanager
def random_state_kept(accelerator):
    """Every random state a checkpoint saves (Python, NumPy, torch on the CPU and on this process's GPU)
    put back as it was before the block, whatever the block drew."""
    python, numpy = random.getstate(), np.random.get_state()
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def evaluate_at_start(cfg: RunConfig, accelerator, step: int, engine, processor, evaluator,
                      skipped: SkippedClips) -> None:
    """`eval.on_start`: a dev evaluation at step 0, before the first update: the starting model's rates,
    the first point of the plot, a candidate best step. A resumed run has it in its history already.
    Training goes on as it would without it (every random state is put back), so on_start=false trains
    the same weights, and a resume stays bitwise equal to an uninterrupted run."""
    if not cfg.eval.on_start or step != 0 or not evaluator.manifests:
        return
    with random_state_kept(accelerator):
        run_dev_eval(evaluator, 0, engine, processor, cfg, accelerator, skipped)
    skipped.flush()


def evaluate_and_checkpoint(cfg: RunConfig, accelerator, run_dir: Path, step: int, engine, processor, evaluator,
                            sampler, last_batch, skipped: SkippedClips) -> None:
    """The dev evaluation and the checkpoint that are due after `step` (skipped.jsonl is brought up to date
    before the checkpoint is written)."""
    if cfg.eval.every and evaluator.due(step):
        run_dev_eval(evaluator, step, engine, processor, cfg, accelerator, skipped)
    if checkpoint_due(cfg, step):
        save_run_checkpoint(accelerator, run_dir, step, engine, sampler, last_batch, evaluator, skipped,
                            cfg.checkpoint.keep_last, cfg.checkpoint.on_error)


def finish_run(cfg: RunConfig, accelerator, run_dir: Path, step: int, engine, processor, evaluator, log,
               skipped: SkippedClips, model_cfg: ModelConfig) -> dict:
    """A last dev evaluation (unless this step has one already), the final model in the model config's
    dtype, the skip report. The last evaluation comes after the step's checkpoint, whose RNG state must
    stay that of a run that goes on without it; it is added to that checkpoint's evaluator history (and its
    dev skips to skipped.jsonl's line count), so a run extended from there (a larger max_steps) keeps it in
    eval/history.jsonl, its best step and skipped.jsonl."""
    final_report = None
    if evaluator.last_step != step:  # the same on every rank: the evaluation is collective
        final_report = run_dev_eval(evaluator, step, engine, processor, cfg, accelerator, skipped)
        skipped.flush()
        checkpoint = run_dir / "checkpoints" / f"step-{step}"
        if accelerator.is_main_process and (checkpoint / STATE_FILE).is_file():
            try:  # a full disk here costs the checkpoint its record of this evaluation, not the run
                update_trainer_state(checkpoint, evaluator=evaluator.state_dict(), skipped_lines=skipped.lines)
            except Exception as err:  # noqa: BLE001
                print(f"warning: {checkpoint / STATE_FILE} keeps its state without the step-{step} evaluation "
                      f"({type(err).__name__}: {err})", flush=True)
        accelerator.wait_for_everyone()
    save_final(accelerator, engine.model, processor, run_dir, DTYPES[model_cfg.dtype])
    log.close()
    accelerator.print(skipped.report())
    return {"step": step, "run_dir": str(run_dir), "final_eval": final_report}


def decoding_sync(accelerator):
    """Where parameters are sharded (ZeRO-3, FSDP) every forward gathers them collectively: all ranks
    decode until all are done, and agree on anything that decides how many forwards they run."""
    if not params_sharded(accelerator):
        return None

    def all_done(local_done: bool) -> bool:
        flag = torch.tensor(float(local_done), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="min"))

    return all_done


def run_dev_eval(evaluator, step, engine, processor, cfg, accelerator, skipped: SkippedClips | None = None
                 ) -> dict | None:
    """The dev evaluation of `step` (collective); rank 0 gets the report. Unusable dev clips are skipped and
    counted (skipped.jsonl). An error, on any rank, is agreed on by all: rank 0 prints its traceback, naming the
    step and the rank, and adds an eval_error line to metrics.jsonl; training goes on (None), or with
    eval.fail_fast=true every rank raises it."""
    model = unwrap_student(accelerator.unwrap_model(engine.model))
    was_training = model.training
    model.eval()
    report, error = None, None
    try:
        report = evaluator.evaluate(step, StudentTranscriber(
            model, processor, max_new_tokens=cfg.eval.max_new_tokens, language_prompt=cfg.eval.language_prompt,
            generate_options={"all_done": decoding_sync(accelerator), "decoder": engine.decoder}), model=model)
    except Exception as err:  # noqa: BLE001 - said and recorded below; fatal only with eval.fail_fast
        error = err
    finally:
        model.train(was_training)
    failures = evaluation_failures(accelerator, error)
    if failures:
        said = "; ".join(f"rank {f['rank']}: {f['error']}" for f in failures)
        if accelerator.is_main_process:
            print(f"error: dev evaluation at step {step} failed ("
                  + ("eval.fail_fast=true: the run stops" if cfg.eval.fail_fast else
                     "training goes on; eval.fail_fast=true would stop the run") + "):\n"
                  + "".join(f"rank {f['rank']}, {f['traceback']}" for f in failures), file=sys.stderr, flush=True)
        log_event(accelerator, evaluator.run_dir, step, eval_error=said)
        if cfg.eval.fail_fast:
            raise error if error is not None else EvaluationError(step, failures)
        return None
    if skipped is not None:
        skipped.add(step, "dev", evaluator.skipped_clips)
    if report is not None and accelerator.log_with:  # eval/history.jsonl keeps them in the run folder
        accelerator.log(evaluator.metrics(report), step=step)
    return report


def evaluation_failures(accelerator, error: Exception | None) -> list[dict]:
    """Collective: every rank's evaluation failure ({rank, error, traceback}), the same list on every rank."""
    if isinstance(error, EvaluationError):  # raised on every rank alike: the ranks agree already
        mine = error.failures
    elif error is not None:  # on this rank only (rank 0 writing the report, say)
        mine = [{"rank": accelerator.process_index, "error": f"{type(error).__name__}: {error}",
                 "traceback": "".join(traceback.format_exception(error))}]
    else:
        mine = []
    every = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    unique = {(f["rank"], f["error"]): f for failures in every for f in failures}
    return [unique[key] for key in sorted(unique)]


def log_event(accelerator, run_dir: Path, step: int, **entry) -> None:
    """A line in metrics.jsonl (train/run_log.py's file) for something that went wrong and was survived:
    {step, eval_error} or {step, checkpoint_error}."""
    if accelerator.is_main_process:
        with open(Path(run_dir) / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **entry}) + "\n")


def save_run_checkpoint(accelerator, run_dir: Path, step: int, engine, sampler, last_batch, evaluator, skipped,
                        keep_last: int, on_error: str = "stop") -> Path | None:
    """Everything `resume_run` needs: the engines' state (model with its float32 masters, optimizer,
    RNG), the schedule's position, where the data stands after `last_batch`, and skipped.jsonl's lines
    (written first). A checkpoint that cannot be written (CheckpointWriteError: its partial files removed,
    the older ones intact) stops the run, or with on_error=continue is said, recorded in metrics.jsonl
    as checkpoint_error, and tried again at the next checkpoint (None)."""
    skipped.flush()
    try:
        return save_checkpoint(accelerator, run_dir, step, {"engine": engine.state_dict(),
                                                            "sampler": sampler.state_dict(after=last_batch),
                                                            "evaluator": evaluator.state_dict(),
                                                            "skipped": dict(skipped.counts),
                                                            "skipped_lines": skipped.lines}, keep_last)
    except CheckpointWriteError as err:
        if on_error == "stop":
            raise CheckpointWriteError(f"{err}. The run stops (checkpoint.on_error=stop): free some space and "
                                       "resume (resume=auto), or set checkpoint.on_error=continue to train on "
                                       "and retry at the next checkpoint") from err.__cause__
        accelerator.print(f"warning: {err}. Training goes on (checkpoint.on_error=continue); the next "
                          "checkpoint tries again", flush=True)
        log_event(accelerator, run_dir, step, checkpoint_error=str(err))
        return None


def save_final(accelerator, student, processor, run_dir: Path, dtype: torch.dtype) -> None:
    """The final model in `dtype` (the model config's, for deployment), and a check that data-parallel
    ranks ended with the same parameters (compared before the cast, on the masters). A training-only
    CTC head (StudentWithCTC) is left out: the final model is the student alone."""
    state_dict = accelerator.get_state_dict(student)  # gathers ZeRO-3 shards onto rank 0
    if isinstance(accelerator.unwrap_model(student), StudentWithCTC):
        state_dict = student_state_dict(state_dict)
    digests = gather_object([parameter_digest(state_dict)]) if accelerator.num_processes > 1 else [
        parameter_digest(state_dict)]

    def write(folder: Path) -> None:  # rank 0 (write_final: a failed write is said on every rank, nothing kept)
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        with no_shard_bar():
            save_student(unwrap_student(accelerator.unwrap_model(student)), processor, folder, state_dict=cast)
        (folder / "rank_digests.json").write_text(json.dumps(digests))

    write_final(accelerator, run_dir, write)
    if not is_zero3(accelerator) and len(set(digests)) > 1:  # under ZeRO-3 only rank 0 has them whole
        raise RuntimeError(f"data-parallel ranks ended with different parameters: {digests}")


def parameter_digest(state_dict: dict | None) -> str:
    if state_dict is None:  # ZeRO-3 gathers the weights on rank 0 only
        return ""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
