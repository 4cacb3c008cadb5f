"""Periodic dev evaluation: sharded over 2 CPU processes, gathered on rank 0, equal to one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.audio_files import sine, write
from tests.launch import launcher, run
from train.eval.periodic import PeriodicEvaluator, plot_history
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


def test_step_0_counts_for_the_best_step_and_skipped_dev_clips_are_named(dev_manifest, tmp_path, tiny_student):
    """The starting model (step 0) can be the best; the clips an evaluation could not use are listed."""
    model, processor = tiny_student
    evaluator = PeriodicEvaluator([str(dev_manifest)], tmp_path / "run", every_steps=5, batch_size=4)
    assert not evaluator.due(0)  # the recipe asks for step 0 itself (eval.on_start)
    transcriber = StudentTranscriber(model, processor, max_new_tokens=4)
    start = evaluator.evaluate(0, transcriber)
    assert start["best_step"] == 0
    assert [(c["id"], c["reason"], Path(c["audio"]).name) for c in evaluator.skipped_clips] == \
        [("gone", "missing", "gone.wav")]
    evaluator.best_rate = start["average_rate"] - 1e-9  # as if training only made things worse
    assert evaluator.evaluate(5, transcriber)["best_step"] == 0
    history = [json.loads(line) for line in (tmp_path / "run/eval/history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 5]
    assert (tmp_path / "run/eval/step-0.json").exists()


def _history(languages: list[str], steps: list[int]) -> list[dict]:
    out = []
    for n, step in enumerate(steps):
        rates = {lang: {"rate": 0.2 + 0.03 * k - 0.01 * n, "fidelity": 1.0} for k, lang in enumerate(languages)}
        out.append({"step": step, "average_rate": sum(r["rate"] for r in rates.values()) / len(rates),
                    "languages": rates})
    return out


def test_plot_of_19_languages_names_each_line_at_its_end_without_a_legend():
    languages = ["ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "nl", "pl", "pt", "ru", "sv", "th", "tr",
                 "uk", "vi", "zh"]
    fig = plot_history(_history(languages, [0, 50, 100]), best_step=100)
    ax = fig.axes[0]
    assert ax.get_legend() is None  # no 19-entry legend, and no empty entries
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {*languages, "average"}
    average = lines.pop("average")
    assert average.get_color() == "black" and average.get_linewidth() >= 2
    assert all(line.get_linewidth() < 1.5 and line.get_alpha() < 1 for line in lines.values())  # thin and faint
    labels = {t.get_text(): t for t in ax.texts}
    assert set(labels) == {*languages, "average", "best: step 100"} and all(labels)
    assert all(labels[lang].xy[0] == 100 for lang in languages)  # at the line's end
    heights = sorted(labels[name].xy[1] for name in [*languages, "average"])
    assert min(b - a for a, b in zip(heights, heights[1:])) > 0.5  # the labels do not sit on each other
    assert labels["average"].get_fontweight() == "bold"
    lo, hi = ax.get_xlim()
    assert lo < 0 and hi > 100  # a margin either side
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_plot_of_a_single_evaluation_is_a_point_on_an_integer_axis():
    fig = plot_history(_history(["de", "fr"], [0]), best_step=0)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo < 0 < hi and hi - lo <= 2  # centred on step 0, not a meaningless span
    assert [t for t in ax.get_xticks() if lo <= t <= hi] == [0]
    average = next(line for line in ax.get_lines() if line.get_label() == "average")
    assert average.get_marker() not in (None, "None", "") and average.get_markersize() >= 3  # a visible point
    assert {t.get_text() for t in ax.texts} == {"de", "fr", "average", "best: step 0"}
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top > max(line.get_ydata().max() for line in ax.get_lines())  # every point shows


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
