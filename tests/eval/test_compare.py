"""train/compare.py: base vs adapted from evaluate.py reports, changes checked against jiwer, rows one report lacks
named, files that are not reports refused by name."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass

import jiwer
import pytest
import torch

from tests.eval.test_evaluate import manifest  # noqa: F401  (fixture)
from train.compare import main


def options_without_default(parser: argparse.ArgumentParser) -> list[str]:
    """The options whose --help says neither what they do nor their default (a flag's is off; a required
    option has none)."""
    formatter = parser._get_formatter()  # the text --help prints for one option (argparse has no public call)
    return [action.option_strings[-1] if action.option_strings else action.dest for action in parser._actions
            if not isinstance(action, argparse._HelpAction)
            and (not action.help or (not action.required and action.default is not False
                                     and "default" not in formatter._expand_help(action)))]


@dataclass
class Fixed:
    """Answers every clip of a language with one text."""

    answers: dict
    name: str = "model"
    device: torch.device = torch.device("cpu")

    def transcribe(self, audios, languages):
        return [self.answers[lang] for lang in languages]


BASE = {"de": "guten", "zh": "你好"}
ADAPTED = {"de": "guten tag", "zh": "你好世界"}


def _report(path, manifest_path, answers, name, manifests=None):
    from train.evaluate import evaluate

    report, _ = evaluate(Fixed(answers, name=name), manifests or [str(manifest_path)], batch_size=4)
    path.write_text(json.dumps(report))
    return path


def _expected_rates(answers) -> dict[str, float]:
    """The fixture's references (de: guten tag / hallo welt / danke schön; zh: 你好世界 / 早上好) scored by jiwer."""
    de = ["guten tag", "hallo welt", "danke schön"]
    zh = ["你好世界", "早上好"]
    return {"de": jiwer.wer(de, [answers["de"]] * 3), "zh": jiwer.cer(zh, [answers["zh"]] * 2)}


def test_base_vs_adapted_table_with_changes(manifest, tmp_path, capsys):  # noqa: F811
    base = _report(tmp_path / "base.json", manifest, BASE, "runs/base")
    adapted = _report(tmp_path / "adapted.json", manifest, ADAPTED, "runs/adapted/final")
    out = tmp_path / "cmp" / "compare.md"
    result = main([str(base), str(adapted), "--markdown", str(out)])
    b, a = _expected_rates(BASE), _expected_rates(ADAPTED)
    assert result["labels"] == ["runs/base", "runs/adapted/final"]
    rows = {(r["manifest"], r["language"]): r for r in result["rows"]}
    assert set(rows) == {("dev.jsonl", "de"), ("dev.jsonl", "zh")}
    for lang in ("de", "zh"):
        row = rows[("dev.jsonl", lang)]
        assert row["rates"] == pytest.approx([b[lang], a[lang]])
        assert row["changes"][0] == pytest.approx((a[lang] - b[lang], (a[lang] - b[lang]) / b[lang]))
    assert rows[("dev.jsonl", "de")]["metric"] == "wer" and rows[("dev.jsonl", "zh")]["metric"] == "cer"
    mean_b, mean_a = (b["de"] + b["zh"]) / 2, (a["de"] + a["zh"]) / 2
    assert result["average"]["rates"] == pytest.approx([mean_b, mean_a]) and result["average"]["rows"] == 2
    de_chars = ["gutentag", "hallowelt", "dankeschön"]  # CER of de: characters without spaces
    cer_b = (jiwer.cer(de_chars, [BASE["de"].replace(" ", "")] * 3) + b["zh"]) / 2
    cer_a = (jiwer.cer(de_chars, [ADAPTED["de"].replace(" ", "")] * 3) + a["zh"]) / 2
    assert result["average_cer"]["rates"] == pytest.approx([cer_b, cer_a])
    text = out.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "| manifest | language | metric | runs/base | runs/adapted/final | change (points) | relative |" in text
    # de: 5 of 6 words wrong -> 4 of 6 (jiwer above): 83.33 -> 66.67, -16.67 points, -20.0 %
    assert "| dev.jsonl | de | WER | 83.33 | 66.67 | -16.67 | -20.0 % |" in text
    assert f"| **average** of the 2 rows every report has | | primary | {100 * mean_b:.2f} | {100 * mean_a:.2f} |" \
        in text
    assert f"| average CER of the 2 rows every report has | | CER | {100 * cer_b:.2f} | {100 * cer_a:.2f} |" in text
    assert "missing" not in text.lower()


def test_rows_one_report_lacks_are_named_not_dropped(manifest, tmp_path, capsys):  # noqa: F811
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"audio": "de0.wav", "text": "guten tag", "language": "de", "id": "o"}) + "\n")
    de_only = tmp_path / "de_only.jsonl"
    de_only.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                               if '"language": "de"' in line))
    base = _report(tmp_path / "base.json", None, BASE, "base", manifests=[str(manifest), str(other)])
    adapted = _report(tmp_path / "adapted.json", None, ADAPTED, "adapted", manifests=[str(de_only)])
    # the same manifest file name from another folder matches by name
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "dev.jsonl").write_text(de_only.read_text().replace('"audio": "', '"audio": "../'))
    third = _report(tmp_path / "third.json", None, ADAPTED, "third", manifests=[str(tmp_path / "copy" / "dev.jsonl")])
    result = main([str(base), str(adapted), str(third), "--label", "B", "--label", "A", "--label", "T"])
    captured = capsys.readouterr()
    keys = [(r["manifest"], r["language"]) for r in result["rows"]]
    assert keys == [("dev.jsonl", "de"), ("dev.jsonl", "zh"), ("other.jsonl", "de"), ("de_only.jsonl", "de")]
    assert result["missing"] == {"B": [["de_only.jsonl", "de"]],
                                 "A": [["dev.jsonl", "de"], ["dev.jsonl", "zh"], ["other.jsonl", "de"]],
                                 "T": [["dev.jsonl", "zh"], ["other.jsonl", "de"], ["de_only.jsonl", "de"]]}
    assert "- A: dev.jsonl / de, dev.jsonl / zh, other.jsonl / de" in captured.out
    assert "warning: T has no row for dev.jsonl / zh" in captured.err
    assert "| dev.jsonl | zh | CER | " in captured.out and "| missing | — | — |" in captured.out
    assert result["average"]["rows"] == 0  # no row is in all three


def test_not_a_report_is_refused_by_name(manifest, tmp_path, capsys):  # noqa: F811
    good = _report(tmp_path / "good.json", manifest, BASE, "base")
    hyps = tmp_path / "report.hyps.jsonl"
    hyps.write_text('{"manifest": "dev.jsonl", "id": "a"}\n{"manifest": "dev.jsonl", "id": "b"}\n')
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "glmasr"}))
    for bad, said in ((hyps, "not JSON"), (config, 'no "manifests"'), (tmp_path / "absent.json", "cannot be read")):
        with pytest.raises(SystemExit, match=re.escape(str(bad)) + ".*" + said):
            main([str(good), str(bad)])
    with pytest.raises(SystemExit):
        main([str(good), str(good), "--label", "only-one"])
    assert "--label given 1 times for 2 reports" in capsys.readouterr().err


def test_every_option_of_compare_shows_its_default():
    from train.compare import build_parser

    assert options_without_default(build_parser()) == []
