"""The listening probe: its NLLs equal transformers' own loss, and a model deaf to audio has no gap."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_clips
from tests.data.audio_files import write
from train.data.manifest import Utterance
from train.eval.listening import ListeningProbe

TEXTS = ["alpha bravo", "charlie", "delta echo fox", "golf hotel"]


def _utterances(tmp_path, lengths):
    utts = []
    for i, (clip, text) in enumerate(zip(make_clips(lengths), TEXTS)):
        path = tmp_path / f"{i}.wav"
        write(path, clip)
        utts.append(Utterance(id=str(i), audio=str(path), duration=len(clip) / 16000, text=text, language="en"))
    return utts


def _hf_loss(model, processor, clips, texts):
    batch = processor(clips, texts=texts)
    with torch.no_grad():
        return float(model(**batch).loss)  # GlmAsr's own shifted cross-entropy over the label tokens


def test_nlls_equal_the_models_own_loss(tmp_path, tiny_student):
    model, processor = tiny_student
    lengths = [16000, 12000, 20000, 9000]
    probe = ListeningProbe(_utterances(tmp_path, lengths), processor, clips=4, batch_size=4)
    out = probe(model)
    assert out["own_audio_nll"] == pytest.approx(_hf_loss(model, processor, probe.audio, TEXTS), rel=1e-5)
    assert out["swapped_audio_nll"] == pytest.approx(
        _hf_loss(model, processor, probe.audio, TEXTS[1:] + TEXTS[:1]), rel=1e-5)
    assert out["listening_gap"] == pytest.approx(out["swapped_audio_nll"] - out["own_audio_nll"])


def test_a_model_deaf_to_audio_has_no_gap(tmp_path, tiny_student):
    model, processor = tiny_student
    probe = ListeningProbe(_utterances(tmp_path, [16000] * 4), processor, clips=4, batch_size=2)
    assert abs(probe(model)["listening_gap"]) > 1e-4  # the random model does hear its (different) clips
    with torch.no_grad():  # every clip now gives the same (zero) audio embeddings
        model.model.multi_modal_projector.linear_2.weight.zero_()
        model.model.multi_modal_projector.linear_2.bias.zero_()
    assert probe(model)["listening_gap"] == pytest.approx(0.0, abs=1e-5)


def test_needs_two_labelled_clips(tmp_path, tiny_student):
    import dataclasses

    utts = _utterances(tmp_path, [16000, 16000])
    utts[1] = dataclasses.replace(utts[1], text=None)
    with pytest.raises(ValueError, match="at least 2"):
        ListeningProbe(utts, tiny_student[1])
