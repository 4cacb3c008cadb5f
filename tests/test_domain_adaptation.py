"""docs/domain_adaptation.md, step by step, at tiny scale:
an ARK-layout "released" checkpoint, a Qwen3-ASR teacher, a folder of unlabelled audio and a
labelled dev folder -> manifests -> baseline -> pseudo-labels + SFT (route 1) and OPD (route 2)
-> dev error rates. Each entry runs from the route's own config files, with only paths and sizes
overridden."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from tests.data.audio_files import write
from tests.teachers.qwen3_fixtures import CHAT_TEMPLATE, tiny_qwen3_asr
from train import distill, evaluate, sft, transcribe
from train.config import DistillConfig, SFTConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = {"max_steps": 2, "data.num_workers": 0, "data.max_batch_seconds": 4.0, "data.max_batch_size": 4,
            "eval.every": 0, "eval.max_new_tokens": 4, "eval.batch_size": 4, "log.wandb_mode": "disabled",
            "checkpoint.every": 2, "mixed_precision": "no", "optim.warmup_steps": 0,
            "student.model": ROOT / "configs/models/ark_asr_3b.yaml"}  # trainable parts; shape from checkpoint


def _make_tiny_checkpoint(out: Path, layout: str) -> Path:
    spec = importlib.util.spec_from_file_location("mk", ROOT / "scripts" / "make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--out", str(out), "--layout", layout])


def _audio_folder(folder: Path, n: int, labelled: bool) -> None:
    rng = np.random.default_rng(n)
    for i in range(n):
        seconds = 0.6 + 0.2 * (i % 3)
        t = np.arange(int(16000 * seconds)) / 16000
        write(folder / f"call{i}.wav", (0.3 * np.sin(2 * np.pi * rng.uniform(120, 600) * t)).astype(np.float32))
        if labelled:
            (folder / f"call{i}.txt").write_text(["guten tag", "danke schön", "bis morgen"][i % 3])


def _overrides(values: dict) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def test_both_routes_from_a_released_checkpoint(tmp_path, tokenizer, monkeypatch):
    released = _make_tiny_checkpoint(tmp_path / "checkpoints/ARK-ASR-3B", layout="ark")
    teacher, teacher_processor = tiny_qwen3_asr(CHAT_TEMPLATE)
    teacher.save_pretrained(tmp_path / "checkpoints/Qwen3-ASR-1.7B")
    teacher_processor.save_pretrained(tmp_path / "checkpoints/Qwen3-ASR-1.7B")
    _audio_folder(tmp_path / "calls", 6, labelled=False)
    _audio_folder(tmp_path / "calls_dev", 3, labelled=True)
    monkeypatch.chdir(tmp_path)  # the route's relative paths, in a scratch folder

    # 2. manifests
    from data_recipes.local_dir import prepare

    prepare.main(["--audio-dir", "calls", "--language", "de", "--out", "data/my_domain", "--name", "unlabelled"])
    prepare.main(["--audio-dir", "calls_dev", "--language", "de", "--out", "data/my_domain", "--name", "dev"])
    unlabelled = [json.loads(x) for x in Path("data/my_domain/unlabelled.jsonl").read_text().splitlines()]
    assert len(unlabelled) == 6 and not any(row.get("text") for row in unlabelled)

    # 3. baseline
    base = evaluate.main(["--model", str(released), "--manifest", "data/my_domain/dev.jsonl",
                          "--out", "runs/domain/base.json", "--max-new-tokens", "4", "--device", "cpu"])
    assert Path("runs/domain/base.json").exists() and base

    # 4. route 1: pseudo-label with the teacher, then SFT on the kept lines
    counts = transcribe.main(["--model", "checkpoints/Qwen3-ASR-1.7B", "--manifest", "data/my_domain/unlabelled.jsonl",
                              "--out", "data/my_domain/pseudo.jsonl", "--max-new-tokens", "4", "--device", "cpu"])
    pseudo = [json.loads(x) for x in Path("data/my_domain/pseudo.jsonl").read_text().splitlines()]
    assert len(pseudo) == 6 and all(row["pseudo_label_model"].endswith("Qwen3-ASR-1.7B") for row in pseudo), counts
    td_cfg = load_config(SFTConfig, ROOT / "configs/domain_adaptation/pseudo_label_sft.yaml", _overrides(TINY_RUN))
    sft.main(td_cfg)
    # route 2: on-policy distillation from the teacher on the unlabelled audio
    opd_cfg = load_config(DistillConfig, ROOT / "configs/domain_adaptation/opd.yaml",
                          _overrides({**TINY_RUN, "opd.max_new_tokens": 4, "opd.k": 4, "teacher.dtype": "float32"}))
    distill.main(opd_cfg)

    # 5. compare on the dev set
    for route in ("td", "opd"):
        report = evaluate.main(["--model", f"runs/domain/{route}/final", "--manifest", "data/my_domain/dev.jsonl",
                                "--out", f"runs/domain/{route}.json", "--max-new-tokens", "4", "--device", "cpu"])
        assert json.loads(Path(f"runs/domain/{route}.json").read_text()) and report
