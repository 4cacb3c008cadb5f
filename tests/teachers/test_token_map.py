"""Token ids between the Qwen2.5+ARK student and a Qwen3-ASR teacher: shared BPE ids, EOS aliasing,
ARK-only specials unmapped, the unmapped-share guard, and scores gathered over the teacher's full vocabulary."""

from __future__ import annotations

import pytest
import torch

from tests.teachers.qwen3_fixtures import BASE_VOCAB_SIZE, IDS, TEACHER_VOCAB_SIZE, qwen3_asr_tokenizer
from train.teachers.base import gather_scores
from train.teachers.token_map import TokenMap


@pytest.fixture(scope="module")
def teacher_tokenizer():
    return qwen3_asr_tokenizer()


@pytest.fixture(scope="module")
def student(tiny_student):
    model, processor = tiny_student
    return processor, model.config.text_config.vocab_size


@pytest.fixture(scope="module")
def tmap(student, teacher_tokenizer):
    processor, vocab_size = student
    return TokenMap.for_student(processor, teacher_tokenizer, vocab_size, TEACHER_VOCAB_SIZE)


def test_the_shared_bpe_base_maps_to_itself_both_ways(tmap):
    base = torch.arange(BASE_VOCAB_SIZE)
    assert torch.equal(tmap.to_teacher(base), base)
    assert torch.equal(tmap.to_student(base), base)
    assert not tmap.is_identity  # the specials differ, so the general path is taken


def test_shared_specials_map_by_content(tmap, tokenizer):
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        s, t = tokenizer.convert_tokens_to_ids(token), IDS[token]
        assert tmap.to_teacher(torch.tensor([s])).item() == t
        assert tmap.to_student(torch.tensor([t])).item() == s


def test_ark_specials_have_no_plain_equivalent_but_the_eos_ones_alias_to_im_end(tmap, tokenizer, student):
    processor, _ = student
    im_end = IDS["<|im_end|>"]
    for token in ("<|audio|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|system|>", "<|observation|>"):
        assert tmap.to_teacher(torch.tensor([tokenizer.convert_tokens_to_ids(token)])).item() == -1, token
    # <|user|> (151666) and <|assistant|> (151667) sit where Qwen3 has </tool_response> and <think>:
    # assuming equal ids would score the student's end of transcript as a tool call.
    for token in ("<|user|>", "<|assistant|>"):
        s = tokenizer.convert_tokens_to_ids(token)
        assert s in processor.eos_token_ids
        assert tmap.to_teacher(torch.tensor([s])).item() == im_end
    assert set(tmap.eos_aliases) == set(processor.eos_token_ids)
    # Teacher-only tokens have no student id.
    for token in ("<|audio_pad|>", "<asr_text>", "<think>", "<blank27>"):
        assert tmap.to_student(torch.tensor([IDS[token]])).item() == -1, token


def test_ids_outside_the_tokenizers_map_to_minus_one(tmap, student):
    _, vocab_size = student
    ids = torch.tensor([-1, 151670, vocab_size - 1, vocab_size + 5])
    assert tmap.to_teacher(ids).tolist() == [-1, -1, -1, -1]
    assert tmap.to_student(torch.tensor([151705, TEACHER_VOCAB_SIZE - 1])).tolist() == [-1, -1]
    assert tmap.student_to_teacher.shape == (vocab_size,)
    assert tmap.teacher_to_student.shape == (TEACHER_VOCAB_SIZE,)


def test_unmapped_share_is_tiny_and_reported(tmap, tokenizer, student, teacher_tokenizer):
    processor, vocab_size = student
    summary = tmap.summary()
    assert summary["unmapped_share"] == tmap.unmapped_share == 0.0  # every decodable id has a teacher token
    assert summary["decodable"] == int(processor.allowed_token_mask(vocab_size).sum())
    assert summary["teacher_eos_id"] == IDS["<|im_end|>"] and not summary["identity"]
    # Without the EOS aliases, <|user|> and <|assistant|> would be decodable yet unscorable.
    plain = TokenMap(tokenizer, teacher_tokenizer, vocab_size, TEACHER_VOCAB_SIZE,
                     decodable_V=processor.allowed_token_mask(vocab_size))
    assert plain.summary()["unmapped_decodable"] == 2
    assert 0 < plain.unmapped_share < 1e-4


def test_a_foreign_tokenizer_raises_naming_both_and_the_share(tokenizer, student):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["the cat sat on the mat", "ein Hund lief über die Straße", "le chat dort"],
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    foreign = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>")
    processor, vocab_size = student
    with pytest.raises(ValueError, match=r"student tokenizer .* and teacher tokenizer toy-bpe: 9\d\.\d+%"):
        TokenMap.for_student(processor, foreign, vocab_size, 301, teacher_name="toy-bpe")
    assert TokenMap.for_student(processor, foreign, vocab_size, 301, max_unmapped_share=1.0).unmapped_share > 0.99


def test_identical_vocabularies_take_the_identity_path(tokenizer, student):
    processor, vocab_size = student
    same = TokenMap.for_student(processor, tokenizer, vocab_size, vocab_size)
    assert same.is_identity and same.summary()["identity"] and not same.eos_aliases
    ids = torch.tensor([[0, 151666, 151667, 151669]])
    assert torch.equal(same.to_teacher(ids), ids) and torch.equal(same.to_student(ids), ids)
    logits = torch.randn(1, 4, vocab_size)
    mask = torch.ones(1, 4, dtype=torch.bool)
    scores, dropped = same.gather_scores(logits, ids, mask, k=3, full=True)
    expected = gather_scores(logits, ids, mask, 3, 1.0, None, True)
    assert dropped == 0 and torch.equal(scores.full_logp_B_T_V, expected.full_logp_B_T_V)


def test_scores_are_gathered_from_the_full_teacher_vocabulary(tmap, tokenizer):
    user, im_end, asr_text = tokenizer.convert_tokens_to_ids("<|user|>"), IDS["<|im_end|>"], IDS["<asr_text>"]
    begin_audio = tokenizer.convert_tokens_to_ids("<|begin_of_audio|>")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, TEACHER_VOCAB_SIZE, generator=gen)
    logits[0, 0, asr_text] = 30.0  # teacher-only token on top: its mass must not be renormalised away
    tokens = torch.tensor([[9707, begin_audio, user]])  # "Hello", an ARK-only special, an aliased EOS
    mask = torch.ones(1, 3, dtype=torch.bool)
    extra = torch.tensor([[[9707, im_end, user, begin_audio]]]).expand(1, 3, 4)
    scores, dropped = tmap.gather_scores(logits, tokens, mask, k=2, temperature=2.0, extra_ids_B_T_E=extra)
    logp1, logp2 = torch.log_softmax(logits, -1), torch.log_softmax(logits / 2.0, -1)
    assert dropped == 1 and scores.mask_B_T.tolist() == [[True, False, True]]
    torch.testing.assert_close(scores.sampled_logp_B_T[0, [0, 2]], logp1[0, [0, 2], [9707, im_end]])
    assert scores.sampled_logp_B_T[0, 1] == 0
    assert scores.topk_ids_B_T_K[0, 0, 0] == -1  # <asr_text> has no student id
    torch.testing.assert_close(scores.topk_logp_B_T_K[0, 0, 0], logp2[0, 0, asr_text])
    torch.testing.assert_close(scores.extra_logp_B_T_E[0, :, :2], logp2[0, :, [9707, im_end]])
    # The alias <|user|> would count the teacher's <|im_end|> mass twice in a union: -inf like a missing id.
    assert torch.isneginf(scores.extra_logp_B_T_E[0, :, 2:]).all()
    assert scores.temperature == 2.0
    with pytest.raises(ValueError, match="identical vocabularies"):
        tmap.gather_scores(logits, tokens, mask, k=2, full=True)
