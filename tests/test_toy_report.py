"""scripts/toy_report.py: per-language rates from hypotheses, averages, and the gap each method closes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from train.eval.error_rates import error_rates

ROOT = Path(__file__).resolve().parents[1]
REFS = {"en": ["the cat sat", "a dog ran"], "zh": ["中心死长", "学生我"]}
HYPS = {"teacher": {"en": ["the cat sat", "a dog ran"], "zh": ["中心死长", "学生我"]},
        "base": {"en": ["the bat sat", "a dog"], "zh": ["中心长", "学我"]},
        "opd": {"en": ["the cat sat", "a dog"], "zh": ["中心死长", "学我"]},
        "td": {"en": ["the c at sat", "a dog ran ran"], "zh": ["中心死长", "学生我"]}}  # splits and adds words


def _report_module():
    spec = importlib.util.spec_from_file_location("toy_report", ROOT / "scripts" / "toy_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_and_gap_closed(tmp_path):
    (tmp_path / "eval").mkdir()
    for model, hyps in HYPS.items():
        rows = [{"manifest": "test.jsonl", "language": lang, "reference": r, "hypothesis": h}
                for lang in REFS for r, h in zip(REFS[lang], hyps[lang])]
        (tmp_path / "eval" / f"{model}.hyps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "wall_times").mkdir()
    for stage, seconds in {"teacher": 120, "opd": 60, "this_invocation": 150}.items():
        (tmp_path / "wall_times" / stage).write_text(str(seconds))
    (tmp_path / "diagnostics").mkdir()
    (tmp_path / "diagnostics" / "base.json").write_text(json.dumps({
        "teacher_logp_of_student_tokens": -3.9, "teacher_argmax_is_student_token": 0.43,
        "teacher_argmax_is_end_where_student_ends": 0.44, "chars_per_clip": {"student": 14.6, "teacher": 14.4,
                                                                              "reference": 14.5},
        "spaces_per_clip": {"teacher_expected": 2.5, "student_expected": 2.0, "student_written": 2.0, "reference": 2.25},
        "entropy_nats": {"student": 0.8, "teacher": 1.25}}))
    data = _report_module().main(["--runs", str(tmp_path)])["manifests"]["test.jsonl"]
    primary = {m: (error_rates(REFS["en"], HYPS[m]["en"], "en", metric="wer")["rate"]
                   + error_rates(REFS["zh"], HYPS[m]["zh"], "zh", metric="cer")["rate"]) / 2 for m in HYPS}
    for m in HYPS:
        assert data["summary"][m]["primary"] == pytest.approx(primary[m])
    expected_gap = (primary["base"] - primary["opd"]) / (primary["base"] - primary["teacher"])
    assert data["gap_closed"]["opd"]["primary"] == pytest.approx(expected_gap)
    assert 0 < expected_gap < 1
    text = (tmp_path / "report.md").read_text()
    assert "| zh |" in text and "Base+OPD" in text and "| whole script, start to end | 2.5 min |" in text
    assert "| teacher | 2.0 min |" in text
    assert "| Base | -3.90 | 43.0 % | 44.0 % | 14.6 / 14.4 / 14.5 | 2.50 / 2.00 / 2.00 / 2.25 | 0.80 / 1.25 |" in text and "`test.jsonl`" in text
    # word errors, counted: "the c at sat" is one substitution and one insertion, "ran ran" one insertion
    assert data["word_errors"]["td"] == {"substitutions": 1, "deletions": 0, "insertions": 2, "ref_len": 6,
                                         "hyp_len": 8}
    assert data["word_errors"]["base"]["deletions"] == 1 and data["word_errors"]["base"]["hyp_len"] == 5
    assert "| Base+TD | 1 | 0 | 2 | 8 / 6 |" in text and "languages scored by WER (1)" in text


def test_each_manifest_gets_its_own_tables(tmp_path):
    """`make demo` evaluates every model on dev and test in one call: the hypotheses files then hold both
    manifests, and each gets its own error rates and gap closed (here OPD helps on dev, not on test)."""
    (tmp_path / "eval").mkdir()
    on = {"dev.jsonl": HYPS, "test.jsonl": {**HYPS, "opd": HYPS["base"]}}
    for model in HYPS:
        rows = [{"manifest": manifest, "language": "en", "reference": r, "hypothesis": h}
                for manifest, hyps in on.items() for r, h in zip(REFS["en"], hyps[model]["en"])]
        (tmp_path / "eval" / f"{model}.hyps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _report_module().main(["--runs", str(tmp_path)])
    assert list(data["manifests"]) == ["dev.jsonl", "test.jsonl"]
    wer = {m: error_rates(REFS["en"], HYPS[m]["en"], "en", metric="wer")["rate"] for m in HYPS}
    dev, test = data["manifests"]["dev.jsonl"], data["manifests"]["test.jsonl"]
    assert dev["gap_closed"]["opd"]["primary"] == pytest.approx((wer["base"] - wer["opd"]) / (wer["base"] - wer["teacher"]))
    assert test["gap_closed"]["opd"]["primary"] == pytest.approx(0.0)
    assert test["summary"]["opd"]["primary"] == pytest.approx(wer["base"])
    text = (tmp_path / "report.md").read_text()
    assert text.index("Error rates in % on `dev.jsonl`") < text.index("Error rates in % on `test.jsonl`")
    assert "Share of the Base→Teacher gap closed on `test.jsonl`" in text
