"""A model remembers how it was prompted in training (ark_opd_prompt.json), and whatever decodes it
uses that by default: evaluate.py, transcribe.py, a same-family teacher. An explicit flag wins."""

from __future__ import annotations

import json

import pytest

from tests.eval.test_evaluate import manifest  # noqa: F401  (fixture)
from train.models import load_student, save_student
from train.models.processor import PROMPT_FILE, prompt_with_language


@pytest.fixture()
def saved(tmp_path, tiny_student):
    """A tiny student saved as trained with language-tagged prompts."""
    model, processor = tiny_student
    processor.language_prompt = True
    try:
        path = save_student(model, processor, tmp_path / "model")
    finally:
        processor.language_prompt = None
    return path


def test_the_prompting_is_saved_and_loaded_and_a_bad_value_is_named(saved):
    assert json.loads((saved / PROMPT_FILE).read_text())["language_prompt"] is True
    _, processor = load_student(saved)
    assert processor.language_prompt is True
    assert prompt_with_language(None, processor) is True and prompt_with_language(False, processor) is False
    record = json.loads((saved / PROMPT_FILE).read_text())
    del record["language_prompt"]  # an older checkpoint: not recorded, so no language unless asked
    (saved / PROMPT_FILE).write_text(json.dumps(record))
    _, processor = load_student(saved)
    assert processor.language_prompt is None and prompt_with_language(None, processor) is False
    (saved / PROMPT_FILE).write_text(json.dumps({**record, "language_prompt": "yes"}))
    with pytest.raises(ValueError, match=f"{PROMPT_FILE}: language_prompt must be true or false"):
        load_student(saved)


def test_the_shipped_toy_models_say_they_were_trained_with_language_prompts():
    for name in ("teacher", "base"):
        assert load_student(f"checkpoints/toy/{name}")[1].language_prompt is True


@pytest.mark.parametrize("flag,expected", [([], True), (["--no-language-prompt"], False),
                                           (["--language-prompt"], True)])
def test_evaluate_prompts_as_the_model_was_trained_unless_told(saved, manifest, tmp_path, monkeypatch,  # noqa: F811
                                                               capsys, flag, expected):
    from train import evaluate
    from train.eval import timed

    seen = []
    original = timed.StudentTranscriber.transcribe

    def spy(self, audios, languages):
        seen.append(self.language_prompt)
        return original(self, audios, languages)

    monkeypatch.setattr(timed.StudentTranscriber, "transcribe", spy)
    evaluate.main(["--model", str(saved), "--manifest", str(manifest), "--out", str(tmp_path / "r.json"),
                   "--max-new-tokens", "2", "--device", "cpu"] + flag)
    assert seen and set(seen) == {expected}
    said = "as asked" if flag else "as the model was trained"
    assert f"language prompt: {'on' if expected else 'off'} ({said})" in capsys.readouterr().out


def test_transcribe_and_a_same_family_teacher_default_to_the_model_s_prompting(saved, tiny_student):
    from train.teachers.same_family import SameFamilyTeacher
    from train.transcribe import load_transcriber

    assert load_transcriber(str(saved), "cpu", None, 4, None).language_prompt is True
    assert load_transcriber(str(saved), "cpu", None, 4, False).language_prompt is False
    student_processor = tiny_student[1]
    vocab = tiny_student[0].config.text_config.vocab_size
    assert SameFamilyTeacher.from_pretrained(saved, student_processor, vocab).language_prompt is True
    assert SameFamilyTeacher.from_pretrained(saved, student_processor, vocab, language_prompt=False
                                             ).language_prompt is False


def _sft(tmp_path, name, train, dev, *overrides):
    from train.sft import main, parse_args

    base = [f"output_dir={tmp_path / name}", "max_steps=1", f"data.train=[{{path: {train}}}]",
            f"data.dev=[{{path: {dev}}}]", "data.num_workers=0", "data.max_batch_size=2", "eval.max_new_tokens=2",
            "eval.listening_clips=0", "log.wandb_mode=disabled", "checkpoint.every=1"]
    main(parse_args(["--config", "configs/sft/toy.yaml", *base, *overrides]))
    return json.loads((tmp_path / name / "final" / PROMPT_FILE).read_text()).get("language_prompt")


def test_training_records_its_prompting_and_the_next_stage_follows_it_unless_told(tmp_path, tokenizer, capsys,
                                                                                monkeypatch):
    """data.language_prompt unset: as the starting model was trained; the run's final/ records what it used,
    and dev prompts follow training's unless eval.language_prompt says otherwise."""
    from tests.test_distill import _manifest
    from train.eval import timed

    train, dev = _manifest(tmp_path / "data", 2), _manifest(tmp_path / "data", 1, name="dev.jsonl")
    seen = []
    original = timed.StudentTranscriber.transcribe
    monkeypatch.setattr(timed.StudentTranscriber, "transcribe",
                        lambda self, audios, languages: seen.append(self.language_prompt) or original(
                            self, audios, languages))

    assert _sft(tmp_path, "scratch", train, dev) is False  # a fresh model does not say: no language
    assert "language prompt: off (the starting model does not say; default)" in capsys.readouterr().out
    assert _sft(tmp_path, "tagged", train, dev, "data.language_prompt=true") is True
    assert "language prompt: on (data.language_prompt)" in capsys.readouterr().out and seen[-1] is True

    tagged = tmp_path / "tagged" / "final"
    assert _sft(tmp_path, "follows", train, dev, f"student.checkpoint={tagged}") is True
    assert "language prompt: on (as the starting model was trained)" in capsys.readouterr().out and seen[-1] is True
    assert _sft(tmp_path, "told", train, dev, f"student.checkpoint={tagged}", "data.language_prompt=false") is False
    assert _sft(tmp_path, "dev_apart", train, dev, f"student.checkpoint={tagged}", "eval.language_prompt=false") is True
    assert "language prompt: on (as the starting model was trained); dev evaluation: off" in capsys.readouterr().out
    assert seen[-1] is False


def test_a_qwen3_asr_teacher_refuses_a_language_prompt_it_would_ignore():
    from train.config import ConfigError, TeacherConfig

    with pytest.raises(ConfigError, match="teacher.language_prompt: a qwen3_asr teacher always forces"):
        TeacherConfig(kind="qwen3_asr", checkpoint="x", language_prompt=False)
    assert TeacherConfig(kind="qwen3_asr", checkpoint="x").language_prompt is None
