"""python -m train.data.inspect: usable utterances and hours from the decoded audio, skips by reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.audio_files import broken_files, sine, write
from train.data import SKIP_REASONS
from train.data.inspect import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def manifests(tmp_path):
    rows_de, rows_fr = [], []
    for i, seconds in enumerate([1.0, 2.0, 3.0, 4.0]):
        write(tmp_path / f"de{i}.wav", sine(300, seconds))
        rows_de.append({"audio": f"de{i}.wav", "text": "ja", "language": "de", "duration": 99.0})
    for reason, path in broken_files(tmp_path / "bad").items():
        rows_de.append({"audio": str(path), "text": "x", "language": "de", "duration": 1.0})
    write(tmp_path / "fr.wav", sine(300, 6.0))
    rows_fr.append({"audio": "fr.wav", "language": "fr", "begin_time": 1.0, "end_time": 3.5})
    de, fr = tmp_path / "de.jsonl", tmp_path / "fr.jsonl"
    de.write_text("".join(json.dumps(r) + "\n" for r in rows_de))
    fr.write_text("".join(json.dumps(r) + "\n" for r in rows_fr))
    return de, fr


def test_report(manifests, capsys):
    de, fr = manifests
    report = main([str(de), str(fr), "--workers", "2"])
    assert json.loads(capsys.readouterr().out) == report
    assert report["utterances"] == 5 and report["labelled"] == 4
    assert report["hours"] == pytest.approx((1 + 2 + 3 + 4 + 2.5) / 3600, abs=1e-4)  # decoded, not claimed
    assert report["languages"]["de"]["utterances"] == 4 and report["languages"]["fr"]["utterances"] == 1
    assert report["skipped"] == {reason: 1 for reason in SKIP_REASONS}
    assert report["durations"]["p0"] == pytest.approx(1.0) and report["durations"]["p100"] == pytest.approx(4.0)
    assert report["manifests"][str(fr)]["skipped"] == {}


def test_cli_as_a_module(manifests):
    de, _ = manifests
    out = subprocess.run([sys.executable, "-m", "train.data.inspect", str(de), "--workers", "1",
                          "--max-seconds", "3.5"], capture_output=True, text=True, cwd=ROOT, check=True)
    report = json.loads(out.stdout)
    assert report["utterances"] == 3 and report["skipped"]["too_long"] == 2
