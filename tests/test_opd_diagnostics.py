"""scripts/opd_diagnostics.py: a teacher that is the student itself agrees with every greedy token
and expects exactly the student's word boundaries."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import sharpen, tiny_config
from tests.test_distill import _manifest
from train.models import build_student, save_student

ROOT = Path(__file__).resolve().parents[1]


def test_the_student_as_its_own_teacher_agrees_everywhere(tmp_path, tokenizer):
    torch.manual_seed(0)
    model, processor = build_student(tiny_config())
    save_student(sharpen(model), processor, tmp_path / "student")
    manifest = _manifest(tmp_path / "data", 6)
    spec = importlib.util.spec_from_file_location("diag", ROOT / "scripts" / "opd_diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--student", str(tmp_path / "student"), "--teacher", str(tmp_path / "student"),
                       "--manifest", str(manifest), "--clips", "6", "--out", str(tmp_path / "d.json")])
    assert out["clips"] == 6
    assert out["teacher_argmax_is_student_token"] > 0.99  # float noise at a near-tie of a random model, at most
    assert out["chars_per_clip"]["student"] == pytest.approx(out["chars_per_clip"]["teacher"])
    assert out["teacher_logp_of_student_tokens"] < 0
    spaces = out["spaces_per_clip"]  # the test vocabulary spells " " as one token of its own
    assert spaces["teacher_expected"] == pytest.approx(spaces["student_expected"], rel=1e-4)
    assert spaces["reference"] == 1.0  # "alpha bravo", ...: one space a clip
    assert 0 <= spaces["student_written"] and 0 < spaces["student_expected"]
    assert out["entropy_nats"]["teacher"] == pytest.approx(out["entropy_nats"]["student"], rel=1e-4)
    assert 0 < out["entropy_nats"]["student"] < math.log(model.config.text_config.vocab_size)
