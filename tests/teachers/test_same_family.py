"""The same-family teacher scores rows in chunks (`rows_per_forward`) with the scores of one forward over
all rows, encodes each utterance's audio once whatever the chunking, and takes the setting from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_clips, sharpen, tiny_config
from tests.teachers.qwen3_fixtures import make_batch
from train.opd.rollout import rollout
from train.teachers.same_family import SameFamilyTeacher

LENGTHS, LANGUAGES = [16000, 7000, 26000], ["de", "en", "fr"]


@pytest.fixture(scope="module")
def teacher_model():
    from train.models import build_student

    torch.manual_seed(1)
    model, processor = build_student(tiny_config())
    return sharpen(model, seed=1).eval(), processor


@pytest.fixture(scope="module")
def batch(tiny_student):
    return make_batch(tiny_student[1], make_clips(LENGTHS, seed=4), LANGUAGES)


@pytest.fixture(scope="module")
def sampled(tiny_student, batch):
    model, processor = tiny_student
    return rollout(model, processor, batch, n_samples=2, max_new_tokens=6, do_sample=True,
                   generator=torch.Generator().manual_seed(2), topk=5)


def _teacher(teacher_model, tiny_student, **kwargs):
    model, processor = teacher_model
    return SameFamilyTeacher(model, processor, tiny_student[1], tiny_student[0].config.text_config.vocab_size,
                             language_prompt=True, **kwargs)


def _assert_same_scores(got, expected, atol=1e-5):
    m = expected.mask_B_T
    assert torch.equal(got.mask_B_T, m)
    assert torch.equal(got.topk_ids_B_T_K[m], expected.topk_ids_B_T_K[m])
    for name in ("sampled_logp_B_T", "topk_logp_B_T_K", "extra_logp_B_T_E", "full_logp_B_T_V"):
        a, b = getattr(got, name), getattr(expected, name)
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a[m], b[m], rtol=0, atol=atol)


def test_rows_per_forward_gives_the_scores_of_one_forward_and_encodes_audio_once(teacher_model, tiny_student,
                                                                                 batch, sampled):
    extra = sampled.student_topk_ids_B_T_K
    calls = []
    hook = teacher_model[0].model.audio_tower.register_forward_hook(
        lambda module, args, out: calls.append(args[0].shape[0]))
    teacher = _teacher(teacher_model, tiny_student)
    try:
        one = teacher.score(batch, sampled, extra_ids_B_T_E=extra, k=4, full=True)
        assert calls == [3]
        assert one.full_logp_B_T_V.shape[:2] == sampled.tokens_B_T.shape and one.mask_B_T.any(-1).all()
        for rows in (1, 2, 4):
            calls.clear()
            teacher.rows_per_forward = rows
            chunked = teacher.score(batch, sampled, extra_ids_B_T_E=extra, k=4, full=True)
            assert calls == [3], rows  # three utterances, six rows: the audio once, whatever the chunks
            _assert_same_scores(chunked, one)
    finally:
        hook.remove()


def test_each_chunk_holds_at_most_rows_per_forward_rows(teacher_model, tiny_student, batch, sampled):
    rows = []
    hook = teacher_model[0].model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    try:
        _teacher(teacher_model, tiny_student, rows_per_forward=4).score(batch, sampled, k=2)
    finally:
        hook.remove()
    assert rows == [4, 2]
    with pytest.raises(ValueError, match="rows_per_forward"):
        _teacher(teacher_model, tiny_student, rows_per_forward=0)


def test_from_pretrained_passes_rows_per_forward_on(teacher_model, tiny_student, monkeypatch):
    import train.models

    seen = {}

    def load_student(path, dtype=None, device=None):  # as the real one is called, without the disk
        seen.update(path=path, dtype=dtype, device=device)
        return teacher_model

    monkeypatch.setattr(train.models, "load_student", load_student)
    vocab = tiny_student[0].config.text_config.vocab_size
    loaded = SameFamilyTeacher.from_pretrained("ckpt/teacher", tiny_student[1], vocab, dtype="float32", device="cpu",
                                               rows_per_forward=2, language_prompt=True)
    assert seen == {"path": "ckpt/teacher", "dtype": "float32", "device": "cpu"}
    assert loaded.rows_per_forward == 2 and loaded.language_prompt and loaded.name == "ckpt/teacher"
