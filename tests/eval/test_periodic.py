"""Periodic dev evaluation: sharded over 2 CPU processes, gathered on rank 0, equal to one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.audio_files import sine, write
from tests.launch import launcher, run
from train.eval.periodic import PeriodicEvaluator
from train.eval.timed import StudentTranscriber

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def dev_manifest(tmp_path):
    rows = []
    for lang, texts in {"de": ["guten tag", "hallo", "ja nein", "danke"], "fr": ["bonjour", "merci beaucoup", "oui"]}.items():
        for i, text in enumerate(texts):
            write(tmp_path / f"{lang}{i}.wav", sine(180 + 70 * i, 0.4 + 0.3 * i))
            rows.append({"audio": f"{lang}{i}.wav", "text": text, "language": lang, "id": f"{lang}{i}"})
    rows.append({"audio": "gone.wav", "text": "x", "language": "fr", "id": "gone"})
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_single_process_history_best_step_and_plot(dev_manifest, tmp_path, tiny_student):
    model, processor = tiny_student
    evaluator = PeriodicEvaluator([str(dev_manifest)], tmp_path / "run", every_steps=5, batch_size=3)
    assert [s for s in range(12) if evaluator.due(s)] == [5, 10]
    transcriber = StudentTranscriber(model, processor, max_new_tokens=6)
    first = evaluator.evaluate(5, transcriber)
    assert first["manifests"][str(dev_manifest)]["utterances"] == 7
    assert first["manifests"][str(dev_manifest)]["languages"]["fr"]["skipped"] == {"missing": 1}
    assert first["best_step"] == 5
    evaluator.best_rate = first["average_rate"] - 1e-9  # pretend step 5 was marginally better
    second = evaluator.evaluate(10, transcriber)
    assert second["best_step"] == 5
    history = [json.loads(line) for line in (tmp_path / "run/eval/history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [5, 10] and set(history[0]["languages"]) == {"de", "fr"}
    assert (tmp_path / "run/eval/step-10.json").exists()
    assert (tmp_path / "run/plots/dev_error_rate.png").read_bytes()[:4] == b"\x89PNG"
    metrics = evaluator.metrics(second)
    assert set(metrics) == {"dev/average_rate", "dev/de/rate", "dev/de/fidelity", "dev/fr/rate", "dev/fr/fidelity"}
    resumed = PeriodicEvaluator([str(dev_manifest)], tmp_path / "run2", every_steps=5)
    resumed.load_state_dict(evaluator.state_dict())
    assert resumed.best_step == 5 and len(resumed.history) == 2
    assert evaluator.last_step == resumed.last_step == 10  # a resumed run knows step 10 was evaluated


@pytest.mark.slow
def test_two_process_launch_gathers_everything(dev_manifest, tmp_path, tiny_student):
    out = tmp_path / "reports.json"
    cmd = launcher("ddp") + [str(ROOT / "tests/eval/periodic_worker.py"), str(dev_manifest), str(tmp_path / "run"),
                             str(out)]
    proc = run(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    sharded = result["reports"][1]

    # The same model in this process, unsharded, must score the same.
    import torch

    from tests.conftest import sharpen, tiny_config
    from train.models import build_student

    torch.manual_seed(0)
    model, processor = build_student(tiny_config())
    model = sharpen(model).eval()
    single = PeriodicEvaluator([str(dev_manifest)], tmp_path / "one", every_steps=2, batch_size=2)
    alone = single.evaluate(4, StudentTranscriber(model, processor, max_new_tokens=6))
    a, b = sharded["manifests"][str(dev_manifest)], alone["manifests"][str(dev_manifest)]
    assert a["utterances"] == b["utterances"] == 7
    for lang in ("de", "fr"):
        for key in ("errors", "ref_len", "substitutions", "deletions", "insertions", "skipped", "fidelity"):
            assert a["languages"][lang][key] == b["languages"][lang][key], (lang, key)
    assert (tmp_path / "run/eval/step-4.json").exists() and (tmp_path / "run/plots/dev_error_rate.png").exists()
