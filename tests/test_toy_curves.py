"""scripts/toy_curves_report.py: OPD's gap closed against its budget and its start, and the toy report showing it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jiwer
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFS = {"en": ["the cat sat on the mat", "a dog ran home"], "de": ["ein hund lief", "die katze sass"]}
# A weak start, a stronger one, and OPD runs from each: words fixed one by one.
HYPS = {
    "teacher": {"en": ["the cat sat on the mat", "a dog ran home"], "de": ["ein hund lief", "die katze sass"]},
    "base": {"en": ["the bat sad on a mat", "a dot ran"], "de": ["ein hunt lief", "die kaze sas"]},
    "td": {"en": ["the cat sat on a mat", "a dog ran"], "de": ["ein hund lief", "die kaze sass"]},
    "base+opd_300": {"en": ["the bat sat on a mat", "a dot ran"], "de": ["ein hunt lief", "die kaze sass"]},
    "base+opd_600": {"en": ["the cat sat on a mat", "a dog ran"], "de": ["ein hund lief", "die kaze sas"]},
    "td+opd_600": {"en": ["the cat sat on the mat", "a dog ran"], "de": ["ein hund lief", "die katze sass"]},
}


def _module():
    spec = importlib.util.spec_from_file_location("toy_curves_report", ROOT / "scripts" / "toy_curves_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, names) -> None:
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    for name in names:
        rows = [{"manifest": "test.jsonl", "language": lang, "reference": r, "hypothesis": h}
                for lang in REFS for r, h in zip(REFS[lang], HYPS[name][lang])]
        (folder / "eval" / f"{name}.hyps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _cer(refs, hyps) -> float:
    """CER as the project scores it: characters with the spaces dropped."""
    return jiwer.cer(["".join(r.split()) for r in refs], ["".join(h.split()) for h in hyps])


def _average(name: str, metric) -> float:
    """The rate averaged over languages, each language's rate over its whole corpus, by jiwer directly."""
    return sum(metric(REFS[lang], HYPS[name][lang]) for lang in REFS) / len(REFS)


def test_gap_closed_is_measured_from_each_runs_own_start(tmp_path):
    _write(tmp_path, HYPS)
    data = _module().main(["--curves", str(tmp_path), "--start-updates", "600"])

    for run in data["runs"]:
        name = f"{run['start']}+opd_{run['updates']}"
        for key, metric in (("cer", _cer), ("wer", jiwer.wer)):
            start, after, teacher = (_average(n, metric) for n in (run["start"], name, "teacher"))
            assert run["rates"][key] == pytest.approx(after)
            assert run["gap_closed"][key] == pytest.approx((start - after) / (start - teacher))
    assert sorted((r["start"], r["updates"]) for r in data["runs"]) == [("base", 300), ("base", 600), ("td", 600)]
    assert set(data["starts"]) == {"base", "td"}
    # td+opd_600 fixes every word but one: most of td's own (smaller) gap.
    assert next(r for r in data["runs"] if r["start"] == "td")["gap_closed"]["wer"] == pytest.approx(
        (_average("td", jiwer.wer) - _average("td+opd_600", jiwer.wer)) / _average("td", jiwer.wer))

    text = (tmp_path / "curves.md").read_text()
    assert "| Base+TD (shipped) | 600 |" in text and "| base (shipped, 3,000 SFT updates) | 300 |" in text
    assert "](curves.png)" in text and (tmp_path / "curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "curves.json").read_text())["runs"] == data["runs"]


def test_the_toy_report_includes_the_curves(tmp_path):
    _write(tmp_path / "curves", HYPS)
    _module().main(["--curves", str(tmp_path / "curves")])
    _write(tmp_path, ["teacher", "base"])
    spec = importlib.util.spec_from_file_location("toy_report", ROOT / "scripts" / "toy_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    text, _ = report.build_report(tmp_path)
    assert "| Base+TD (shipped) | 600 |" in text and "](curves/curves.png)" in text


@pytest.mark.parametrize("missing, named", [("teacher", "teacher.hyps.jsonl"), ("td", "td.hyps.jsonl")])
def test_a_missing_reference_is_named(tmp_path, missing, named):
    _write(tmp_path, [n for n in HYPS if n != missing])
    with pytest.raises(FileNotFoundError, match=named):
        _module().main(["--curves", str(tmp_path)])

