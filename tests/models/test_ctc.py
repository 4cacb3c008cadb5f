"""The auxiliary CTC head: the student's forward is untouched, lengths are the audio branch's, the loss
equals a brute-force sum over alignments, and the head learns."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.conftest import make_clips, tiny_config
from train.models import build_student
from train.models.ctc import StudentWithCTC, ctc_loss_per_clip, ctc_targets, student_state_dict


def _collapse(path: tuple[int, ...], blank: int) -> tuple[int, ...]:
    out, previous = [], None
    for c in path:
        if c != previous and c != blank:
            out.append(c)
        previous = c
    return tuple(out)


def _brute_force_nll(log_probs_L_C: torch.Tensor, target: tuple[int, ...], blank: int) -> float:
    """-log sum over every frame labelling that collapses to `target` (C^L paths, float64)."""
    p = log_probs_L_C.double().exp()
    total = 0.0
    for path in itertools.product(range(p.shape[1]), repeat=p.shape[0]):
        if _collapse(path, blank) == target:
            total += math.prod(float(p[t, c]) for t, c in enumerate(path))
    return -math.log(total)


def test_ctc_loss_equals_brute_force_over_alignments():
    torch.manual_seed(0)
    blank, frames = 3, [5, 4, 5]
    targets = [(0, 1), (2, 2), (1, 0, 1)]  # (2, 2) needs a blank between the repeats
    log_probs = torch.log_softmax(torch.randn(3, 5, 4, dtype=torch.float64) * 2, dim=-1)
    padded = torch.zeros(3, 3, dtype=torch.long)
    for i, t in enumerate(targets):
        padded[i, : len(t)] = torch.tensor(t)
    got = ctc_loss_per_clip(log_probs, torch.tensor(frames), padded, torch.tensor([len(t) for t in targets]), blank)
    for i, t in enumerate(targets):
        assert got[i].item() == pytest.approx(_brute_force_nll(log_probs[i, : frames[i]], t, blank), rel=1e-9)


def test_ctc_loss_of_an_unalignable_clip_is_zero():
    log_probs = torch.log_softmax(torch.randn(1, 2, 3), dim=-1)
    loss = ctc_loss_per_clip(log_probs, torch.tensor([2]), torch.tensor([[0, 1, 0]]), torch.tensor([3]), blank=2)
    assert loss.item() == 0.0


def test_ctc_targets_keep_transcript_tokens_without_eos():
    labels = torch.tensor([[-100, -100, 5, 6, 9, -100], [-100, 7, 9, -100, -100, -100]])
    targets, lengths = ctc_targets(labels, drop_ids=[9])
    assert lengths.tolist() == [2, 1]
    assert targets[0, :2].tolist() == [5, 6] and targets[1, :1].tolist() == [7]


@pytest.mark.parametrize("source", ["encoder", "adapter"])
def test_wrapper_keeps_the_students_logits_and_reports_frame_counts(tokenizer, source):
    torch.manual_seed(0)
    student, processor = build_student(tiny_config())
    wrapped = StudentWithCTC(student, source).eval()
    lengths = [16000, 9000, 3000]
    batch = processor(make_clips(lengths), texts=["a b", "c", "d e f"])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "input_features", "input_features_mask")}
    with torch.no_grad():
        out = wrapped(**inputs)
        plain = student(**inputs).logits
    torch.testing.assert_close(out.student_out.logits, plain, rtol=0, atol=0)
    mel_frames = [n // 160 for n in lengths]
    if source == "encoder":  # 50 frames/s: ceil(mel frames / 2)
        expected = [(f + 1) // 2 for f in mel_frames]
    else:  # one per <|audio|> placeholder
        expected = [processor.audio_token_count(n) for n in lengths]
    assert out.ctc_lengths_B.tolist() == expected
    assert out.ctc_log_probs_B_L_C.shape[-1] == student.config.text_config.vocab_size + 1
    torch.testing.assert_close(out.ctc_log_probs_B_L_C.exp().sum(-1), torch.ones(out.ctc_log_probs_B_L_C.shape[:2]))


def test_state_dict_for_saving_is_the_students_own():
    torch.manual_seed(0)
    student, _ = build_student(tiny_config())
    wrapped = StudentWithCTC(student, "encoder")
    kept = student_state_dict(wrapped.state_dict())
    assert set(kept) == set(student.state_dict()) and not any("ctc_head" in k for k in kept)
