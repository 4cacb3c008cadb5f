"""evaluate.py, transcribe.py and the training recipes check what they read and write before any model
loads, and say when a flag cannot act."""

from __future__ import annotations

import pytest

import train.models
from tests.eval.test_evaluate import manifest  # noqa: F401  (fixture)


@pytest.fixture()
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")
    monkeypatch.setattr(train.models, "load_student", refuse)


@pytest.fixture()
def model_dir(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def _error(capsys, run) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_evaluate_checks_model_manifests_and_output_first(tmp_path, manifest, model_dir, no_model_loads,  # noqa: F811
                                                          capsys):
    from train.evaluate import main

    def run(model=model_dir, manifests=(manifest,), out=tmp_path / "r.json"):
        return lambda: main(["--model", str(model), "--out", str(out), "--device", "cpu"]
                            + [arg for m in manifests for arg in ("--manifest", str(m))])

    assert f"--out {tmp_path}: is a directory" in _error(capsys, run(out=tmp_path))
    assert "name it *.json" in _error(capsys, run(out=tmp_path / "report"))
    assert f"--manifest {tmp_path / 'nope.jsonl'}: no such manifest" in _error(
        capsys, run(manifests=(manifest, tmp_path / "nope.jsonl")))
    assert f"--model {tmp_path / 'absent'}: no such directory" in _error(capsys, run(model=tmp_path / "absent"))
    (model_dir / "config.json").unlink()
    assert "no config.json there (not a model directory)" in _error(capsys, run())


def test_transcribe_checks_first_and_says_which_flags_cannot_act(tmp_path, manifest, model_dir,  # noqa: F811
                                                                 no_model_loads, capsys):
    from train.transcribe import load_transcriber, parse_args

    assert f"--out {tmp_path}: is a directory" in _error(capsys, lambda: parse_args(
        ["--model", str(model_dir), "--manifest", str(manifest), "--out", str(tmp_path)]))
    assert "--manifest nope.jsonl: no such manifest" in _error(capsys, lambda: parse_args(
        ["--model", str(model_dir), "--manifest", "nope.jsonl", "--out", str(tmp_path / "o.jsonl")]))
    assert "missing.wav: no such audio file" in _error(capsys, lambda: parse_args(
        ["--model", str(model_dir), str(tmp_path / "missing.wav")]))
    with pytest.raises(SystemExit, match=f"--model {tmp_path / 'absent'}: no such directory"):
        load_transcriber(str(tmp_path / "absent"), "cpu", None, 4, None)
    parse_args(["--model", str(model_dir), "--manifest", str(manifest), "--out", str(tmp_path / "o.jsonl"),
                "--language", "de", "--max-wer", "0.3"])
    said = capsys.readouterr().out
    assert "--language de is ignored in manifest mode" in said
    assert "--max-wer compares with each line's reference" in said and "does nothing on unlabelled audio" in said


@pytest.mark.parametrize("problem", ["missing dev", "bad language", "shared id"])
def test_a_training_run_reads_every_manifest_before_building_anything(tmp_path, monkeypatch, problem):
    """A dev manifest that does not exist, a line with an unknown language code, an id two training
    sources share: each is a ConfigError naming the key and the file before any model is built."""
    import json

    from train import distill
    from tests.test_distill import _manifest, _overrides
    from train.config import ConfigError

    train, dev = _manifest(tmp_path / "data", 2), _manifest(tmp_path / "data", 1, name="dev.jsonl")
    other = tmp_path / "data" / "other.jsonl"
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    sources, expected = f"[{{path: {train}}}]", None
    if problem == "missing dev":
        dev, expected = tmp_path / "nowhere.jsonl", "data.dev: .*nowhere.jsonl"
    elif problem == "bad language":
        other.write_text("".join(json.dumps({**r, "id": f"x{i}", "language": "gr"}) + "\n" for i, r in enumerate(rows)))
        sources, expected = f"[{{path: {train}}}, {{path: {other}}}]", "data.train: .*other.jsonl.*did you mean el"
    else:
        other.write_text(json.dumps(rows[0]) + "\n")
        sources, expected = f"[{{path: {train}}}, {{path: {other}}}]", f"data.train: id .* in {train} and in {other}"
    monkeypatch.setattr(distill, "build_student_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(ConfigError, match=expected):
        distill.main(distill.parse_args(_overrides(tmp_path, train, dev, **{"data.train": sources})))
    assert not (tmp_path / "run").exists()
