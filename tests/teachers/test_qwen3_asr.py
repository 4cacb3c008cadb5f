"""The Qwen3-ASR teacher on a tiny random model: its prompt, scores equal to a plain forward of the teacher,
one audio encoding per utterance, frozen, clear errors; loading from a checkpoint dir; batched audio
encoding, the cached batched language header and chunked scoring equal to their one-at-a-time references."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.conftest import make_clips
from tests.teachers.qwen3_fixtures import (CHAT_TEMPLATE, EXPECTED_PROMPT, IDS, TEACHER_VOCAB_SIZE, make_batch,
                                           tiny_qwen3_asr)
from train.opd.rollout import Rollout, rollout
from train.teachers.qwen3_asr import Qwen3ASRTeacher, language_name

LENGTHS, LANGUAGES = [16000, 9000], ["de", "en"]


@pytest.fixture(scope="module")
def student(tiny_student):
    model, processor = tiny_student
    return model, processor, model.config.text_config.vocab_size


@pytest.fixture(scope="module")
def teacher(student):
    model, processor = tiny_qwen3_asr(CHAT_TEMPLATE)
    return Qwen3ASRTeacher(model, processor, student[1], student[2])


@pytest.fixture(scope="module")
def batch(student):
    return make_batch(student[1], make_clips(LENGTHS, seed=11), LANGUAGES)


@pytest.fixture(scope="module")
def sampled(student, batch):
    """Two sampled transcripts per utterance (4 rows), with the student's top-5 ids."""
    model, processor, _ = student
    return rollout(model, processor, batch, n_samples=2, max_new_tokens=6, do_sample=True,
                   generator=torch.Generator().manual_seed(0), topk=5)


def _plain_logp(teacher, clip, language_name, student_tokens, n):
    """Independent reference: the processor's own inputs for one clip, the student's tokens mapped by hand
    (shared BPE ids as they are, any EOS as <|im_end|>), one full forward, log-softmax over all ids."""
    prompt = EXPECTED_PROMPT + f"language {language_name}<asr_text>"
    inputs = teacher.processor(text=[prompt], audio=[clip], return_tensors="pt")
    eos = set(teacher.token_map.eos_aliases)
    mapped = torch.tensor([IDS["<|im_end|>"] if t in eos else t for t in student_tokens[:n].tolist()])
    assert (mapped < 151643).logical_or(mapped == IDS["<|im_end|>"]).all()
    ids = torch.cat([inputs["input_ids"][0], mapped])[None]
    with torch.no_grad():
        logits = teacher.model(input_ids=ids, input_features=inputs["input_features"],
                               input_features_mask=inputs["input_features_mask"]).logits[0]
    start = inputs["input_ids"].shape[1] - 1
    return torch.log_softmax(logits[start: start + n].float(), dim=-1), mapped


def test_prompt_is_the_chat_template_with_the_forced_language(teacher, batch):
    assert teacher.prompt("de") == EXPECTED_PROMPT + "language German<asr_text>"
    assert teacher.prompt("pt").endswith("language Portuguese<asr_text>")
    assert teacher.prompt("hr") == teacher.prompt(None) == EXPECTED_PROMPT  # not a Qwen3-ASR language
    utts = teacher.encode_utterances(batch, [0, 1])
    text = teacher.tokenizer.decode(utts[0].prompt_ids_S)
    assert text.endswith("<|im_start|>assistant\nlanguage German<asr_text>") and utts[0].language == "German"
    for i, utt in utts.items():  # one placeholder per audio embedding, as the processor counts them
        assert int((utt.prompt_ids_S == IDS["<|audio_pad|>"]).sum()) == utt.audio_embeds_N_D.shape[0]
    assert utts[0].audio_embeds_N_D.shape[0] == 13  # 1 s of audio
    assert utts[0].audio_embeds_N_D.shape[1] == teacher.model.config.text_config.hidden_size


def test_scores_follow_the_contract(teacher, batch, sampled, student):
    k, vocab_size = 4, student[2]
    scores = teacher.score(batch, sampled, extra_ids_B_T_E=sampled.student_topk_ids_B_T_K, k=k)
    rows, steps = sampled.tokens_B_T.shape
    assert scores.sampled_logp_B_T.shape == scores.mask_B_T.shape == (rows, steps)
    assert scores.topk_ids_B_T_K.shape == scores.topk_logp_B_T_K.shape == (rows, steps, k)
    assert scores.extra_logp_B_T_E.shape == sampled.student_topk_ids_B_T_K.shape
    assert scores.mask_B_T.dtype == torch.bool and torch.equal(scores.mask_B_T, sampled.mask_B_T)
    assert teacher.dropped_positions == 0
    assert (scores.topk_logp_B_T_K[..., :-1] >= scores.topk_logp_B_T_K[..., 1:]).all()
    assert ((scores.topk_ids_B_T_K >= -1) & (scores.topk_ids_B_T_K < vocab_size)).all()
    assert torch.isfinite(scores.sampled_logp_B_T).all() and (scores.sampled_logp_B_T <= 0).all()
    assert scores.full_logp_B_T_V is None
    with pytest.raises(ValueError, match="identical vocabularies"):
        teacher.score(batch, sampled, full=True)


def test_sampled_logp_equals_a_plain_forward_of_the_teacher(teacher, batch, sampled):
    scores = teacher.score(batch, sampled, extra_ids_B_T_E=sampled.student_topk_ids_B_T_K, k=3)
    names = {"de": "German", "en": "English"}
    for b, s in enumerate(sampled.source_B.tolist()):
        n = int(sampled.mask_B_T[b].sum())
        logp, mapped = _plain_logp(teacher, batch["audio"][s], names[LANGUAGES[s]], sampled.tokens_B_T[b], n)
        expected = logp.gather(-1, mapped[:, None]).squeeze(-1)
        torch.testing.assert_close(scores.sampled_logp_B_T[b, :n], expected, rtol=0, atol=1e-5)
        top = logp.topk(3, dim=-1)
        torch.testing.assert_close(scores.topk_logp_B_T_K[b, :n], top.values, rtol=0, atol=1e-5)
        assert torch.equal(scores.topk_ids_B_T_K[b, :n], teacher.token_map.to_student(top.indices))
        # The student's top-k: shared ids score as themselves (<|im_end|> is 151645 in both), while the
        # EOS aliases <|user|>/<|assistant|> get -inf (the teacher's <|im_end|> mass is the student's <|im_end|>).
        extra = sampled.student_topk_ids_B_T_K[b, :n]
        alias = torch.isin(extra, torch.tensor([i for i in teacher.token_map.eos_aliases if i != IDS["<|im_end|>"]]))
        assert ((extra < 151643) | (extra == IDS["<|im_end|>"]) | alias).all()
        expected_extra = logp.gather(-1, extra.masked_fill(alias, 0)).masked_fill(alias, float("-inf"))
        torch.testing.assert_close(scores.extra_logp_B_T_E[b, :n], expected_extra, rtol=0, atol=1e-5)


def test_eos_aliases_and_unmapped_tokens(teacher, batch, tokenizer):
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    begin_audio = tokenizer.convert_tokens_to_ids("<|begin_of_audio|>")
    tokens = torch.tensor([[9707, begin_audio, 1879, user, 151643]])  # "Hello" ?? " world" EOS pad
    mask = torch.tensor([[True, True, True, True, False]])
    crafted = Rollout(tokens_B_T=tokens, mask_B_T=mask, logprobs_B_T=torch.zeros(1, 5), source_B=torch.tensor([0]),
                      prompt_ids_B_S=torch.zeros(1, 0, dtype=torch.long),
                      prompt_mask_B_S=torch.zeros(1, 0, dtype=torch.long))
    before = teacher.dropped_positions_total
    scores = teacher.score(batch, crafted, k=2)
    assert scores.mask_B_T.tolist() == [[True, False, True, True, False]]
    assert teacher.dropped_positions == 1 and teacher.dropped_positions_total == before + 1
    assert scores.sampled_logp_B_T[0, 1] == 0
    # The aliased EOS is scored as the teacher's <|im_end|>, after the teacher saw the substituted token.
    utt = teacher.encode_utterances(batch, [0])[0]
    ids = torch.cat([utt.prompt_ids_S, torch.tensor([9707, teacher.pad_id, 1879])])[None]
    with torch.no_grad():
        logits = teacher.model(inputs_embeds=teacher._embed(ids, utt.audio_embeds_N_D), logits_to_keep=1).logits
    expected = torch.log_softmax(logits[0, -1].float(), -1)[IDS["<|im_end|>"]]
    torch.testing.assert_close(scores.sampled_logp_B_T[0, 3], expected, rtol=0, atol=1e-5)


def test_audio_is_encoded_once_per_utterance_and_rows_score_as_alone(teacher, batch, sampled, student):
    calls = []
    hook = teacher.model.model.audio_tower.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_features"].shape[0]), with_kwargs=True)
    try:
        together = teacher.score(batch, sampled, extra_ids_B_T_E=sampled.student_topk_ids_B_T_K, k=3)
    finally:
        hook.remove()
    assert sampled.source_B.tolist() == [0, 0, 1, 1]
    assert calls == [2]  # two utterances in one encoder call, four rows
    chunked = Qwen3ASRTeacher(teacher.model, teacher.processor, student[1], student[2], rows_per_forward=3)
    in_chunks = chunked.score(batch, sampled, extra_ids_B_T_E=sampled.student_topk_ids_B_T_K, k=3)
    for b in range(4):
        one = Rollout(tokens_B_T=sampled.tokens_B_T[b: b + 1], mask_B_T=sampled.mask_B_T[b: b + 1],
                      logprobs_B_T=sampled.logprobs_B_T[b: b + 1], source_B=sampled.source_B[b: b + 1],
                      prompt_ids_B_S=sampled.prompt_ids_B_S[b: b + 1],
                      prompt_mask_B_S=sampled.prompt_mask_B_S[b: b + 1])
        alone = teacher.score(batch, one, extra_ids_B_T_E=sampled.student_topk_ids_B_T_K[b: b + 1], k=3)
        m = sampled.mask_B_T[b]
        for got in (together, in_chunks):
            torch.testing.assert_close(got.sampled_logp_B_T[b, m], alone.sampled_logp_B_T[0, m], rtol=0, atol=1e-5)
            torch.testing.assert_close(got.extra_logp_B_T_E[b, m], alone.extra_logp_B_T_E[0, m], rtol=0, atol=1e-5)
            torch.testing.assert_close(got.topk_logp_B_T_K[b, m], alone.topk_logp_B_T_K[0, m], rtol=0, atol=1e-5)


def test_unknown_language_lets_the_teacher_write_its_header(teacher, student):
    clips = make_clips([12000], seed=5)
    batch = make_batch(student[1], clips, ["hr"])
    utt = teacher.encode_utterances(batch, [0])[0]
    base = teacher.processor(text=[teacher.prompt(None)], audio=clips, return_tensors="pt")["input_ids"][0]
    assert utt.language is None and torch.equal(utt.prompt_ids_S[: len(base)], base)
    header = utt.prompt_ids_S[len(base):]
    assert 1 <= len(header) <= teacher.max_header_tokens + 1 and header[-1] == IDS["<asr_text>"]
    assert (header[:-1] != IDS["<asr_text>"]).all()
    ro = rollout(student[0], student[1], batch, max_new_tokens=4)
    assert torch.isfinite(teacher.score(batch, ro, k=2).sampled_logp_B_T).all()


def test_teacher_is_frozen_and_records_no_grad(teacher, batch, sampled):
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    with torch.enable_grad():
        scores = teacher.score(batch, sampled, extra_ids_B_T_E=sampled.student_topk_ids_B_T_K, k=3)
    for value in (scores.sampled_logp_B_T, scores.topk_logp_B_T_K, scores.extra_logp_B_T_E):
        assert not value.requires_grad and value.grad_fn is None
    assert all(p.grad is None for p in teacher.model.parameters())


def test_a_batch_without_raw_audio_raises(teacher, student, sampled):
    batch = make_batch(student[1], make_clips(LENGTHS, seed=11), LANGUAGES, keep_audio=False)
    with pytest.raises(ValueError, match="keep_audio"):
        teacher.score(batch, sampled)


def test_a_template_that_renders_another_prompt_is_refused(student):
    model, processor = tiny_qwen3_asr(CHAT_TEMPLATE.replace("<|im_start|>system\\n", "<|im_start|>system\\nBe brief."))
    with pytest.raises(ValueError, match="chat template renders"):
        Qwen3ASRTeacher(model, processor, student[1], student[2])


def test_from_pretrained_loads_a_saved_teacher_and_refuses_other_checkpoints(teacher, batch, sampled, student,
                                                                           tmp_path, monkeypatch):
    import train.teachers.qwen3_asr as qwen3_asr

    teacher.model.save_pretrained(tmp_path / "hf")
    teacher.processor.save_pretrained(tmp_path / "hf")
    loads, model_class = [], qwen3_asr.Qwen3ASRForConditionalGeneration

    class Recorded:  # the real class, with its from_pretrained arguments recorded
        @staticmethod
        def from_pretrained(*args, **kwargs):
            loads.append(kwargs)
            return model_class.from_pretrained(*args, **kwargs)

    monkeypatch.setattr(qwen3_asr, "Qwen3ASRForConditionalGeneration", Recorded)
    # As distill.py calls it; the student's vocabulary defaults to its tokenizer's length.
    loaded = Qwen3ASRTeacher.from_pretrained(tmp_path / "hf", student[1], dtype="float32", device="cpu",
                                             max_unmapped=0.05)
    # Loaded where it runs (no CPU copy first); without a device, where transformers puts it.
    assert loads[-1]["device_map"] == torch.device("cpu")
    assert {p.device for p in loaded.model.parameters()} == {torch.device("cpu")}
    Qwen3ASRTeacher.from_pretrained(tmp_path / "hf", student[1])
    assert "device_map" not in loads[-1]
    assert loaded.model.config.text_config.vocab_size == TEACHER_VOCAB_SIZE
    assert loaded.name == "qwen3_asr:hf" and loaded.token_map.student_vocab_size == len(student[1].tokenizer)
    torch.testing.assert_close(loaded.score(batch, sampled, k=2).sampled_logp_B_T,
                               teacher.score(batch, sampled, k=2).sampled_logp_B_T, rtol=0, atol=1e-6)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for name, changed, message in (("glm", {**config, "model_type": "glmasr"}, "needs 'qwen3_asr'"),
                                   ("orig", {**config, "thinker_config": {}}, "original Qwen3-ASR release")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(changed))
        with pytest.raises(ValueError, match=message):
            Qwen3ASRTeacher.from_pretrained(tmp_path / name, student[1])
    with pytest.raises(ValueError, match="not a torch dtype"):
        Qwen3ASRTeacher.from_pretrained(tmp_path / "hf", student[1], dtype="bf16")


# ---- batching: audio encoder, language header, rows per forward ------------------------------------------
# 0.25-3 s: one clip under Qwen3-ASR's 0.5 s minimum, partial and whole 1 s encoder chunks; four languages
# the model cannot be forced to (so four headers of prompts of different lengths) and two it can.
MIXED_LENGTHS = [4000, 16000, 24000, 32160, 12345, 47999]
MIXED_LANGUAGES = ["hr", "de", None, "sk", "en", "lt"]
UNFORCED = [i for i, language in enumerate(MIXED_LANGUAGES) if language_name(language) is None]


@pytest.fixture(scope="module")
def mixed_batch(student):
    return make_batch(student[1], make_clips(MIXED_LENGTHS, seed=21), MIXED_LANGUAGES)


@pytest.fixture(scope="module")
def mixed_sampled(student, mixed_batch):
    model, processor, _ = student
    return rollout(model, processor, mixed_batch, n_samples=2, max_new_tokens=5, do_sample=True,
                   generator=torch.Generator().manual_seed(3), topk=4)


def _variant(teacher, **settings):
    """The module's teacher (same model, processor and token map) with some settings changed."""
    other = copy.copy(teacher)
    for key, value in settings.items():
        setattr(other, key, value)
    return other


def _alone(teacher, clip, language):
    """Reference inputs of one clip: the processor and the audio encoder on this clip only."""
    inputs = teacher.processor(text=[teacher.prompt(language)], audio=[clip], return_tensors="pt")
    with torch.no_grad():
        audio = teacher.model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    return inputs["input_ids"][0], audio.pooler_output


def _uncached_header(teacher, prompt_ids_S, audio_N_D):
    """Reference header: one clip, greedy, no KV cache (a full forward over the prompt per token)."""
    ids = prompt_ids_S[None]
    for _ in range(teacher.max_header_tokens):
        with torch.no_grad():
            logits = teacher.model(inputs_embeds=teacher._embed(ids, audio_N_D), logits_to_keep=1).logits[0, -1]
        next_id = int(logits.argmax())
        if next_id in teacher.stop_ids:
            break
        ids = torch.cat([ids, ids.new_tensor([[next_id]])], dim=1)
        if next_id == teacher.asr_text_id:
            return ids[0]
    return torch.cat([ids[0], ids.new_tensor([teacher.asr_text_id])])


def _assert_same_scores(got, expected, atol=1e-5):
    m = expected.mask_B_T
    assert torch.equal(got.mask_B_T, m)
    assert torch.equal(got.topk_ids_B_T_K[m], expected.topk_ids_B_T_K[m])
    torch.testing.assert_close(got.sampled_logp_B_T[m], expected.sampled_logp_B_T[m], rtol=0, atol=atol)
    torch.testing.assert_close(got.topk_logp_B_T_K[m], expected.topk_logp_B_T_K[m], rtol=0, atol=atol)
    torch.testing.assert_close(got.extra_logp_B_T_E[m], expected.extra_logp_B_T_E[m], rtol=0, atol=atol)


@pytest.mark.parametrize("encode_batch_size,calls_expected", [(None, [6]), (4, [4, 2])])
def test_batched_audio_encoding_equals_each_clip_encoded_alone(teacher, mixed_batch, encode_batch_size,
                                                               calls_expected):
    calls = []
    hook = teacher.model.model.audio_tower.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_features"].shape[0]), with_kwargs=True)
    try:
        utts = _variant(teacher, encode_batch_size=encode_batch_size, max_header_tokens=2).encode_utterances(
            mixed_batch, [5, 0, 3, 1, 2, 4, 0])
    finally:
        hook.remove()
    assert calls == calls_expected and sorted(utts) == list(range(6))
    for i, (clip, language) in enumerate(zip(mixed_batch["audio"], MIXED_LANGUAGES)):
        ids, audio = _alone(teacher, clip, language)
        assert torch.equal(utts[i].prompt_ids_S[: len(ids)], ids)
        assert utts[i].audio_embeds_N_D.shape == audio.shape
        torch.testing.assert_close(utts[i].audio_embeds_N_D, audio, rtol=0, atol=1e-5)


def test_cached_batched_headers_equal_uncached_one_clip_decoding(teacher, mixed_batch):
    clips = mixed_batch["audio"]
    alone = {i: _alone(teacher, clips[i], MIXED_LANGUAGES[i]) for i in UNFORCED}
    prompt_len = {i: len(alone[i][0]) for i in UNFORCED}
    assert len(set(prompt_len.values())) == len(UNFORCED)  # rows of different widths: left padding is exercised
    plain = _variant(teacher, max_header_tokens=5)
    expected = {i: _uncached_header(plain, *alone[i]) for i in UNFORCED}
    got = plain.encode_utterances(mixed_batch, UNFORCED)
    for i in UNFORCED:
        assert torch.equal(got[i].prompt_ids_S, expected[i]), i
    # Rows that stop at different steps: one row's 2nd header token stands for <asr_text>, another's 3rd for
    # a stop id, so one row ends on its own <asr_text>, one gets <asr_text> appended early, the rest run out.
    a, b = UNFORCED[0], UNFORCED[1]
    asr_text, stop = int(expected[a][prompt_len[a] + 1]), int(expected[b][prompt_len[b] + 2])
    stopping = _variant(plain, asr_text_id=asr_text, stop_ids=plain.stop_ids | {stop}, encode_batch_size=3)
    expected = {i: _uncached_header(stopping, *alone[i]) for i in UNFORCED}
    got = stopping.encode_utterances(mixed_batch, UNFORCED)
    assert len({len(expected[i]) - prompt_len[i] for i in UNFORCED}) >= 3
    for i in UNFORCED:
        assert torch.equal(got[i].prompt_ids_S, expected[i]), i


def test_rows_per_forward_gives_the_scores_of_one_forward(teacher, mixed_batch, mixed_sampled):
    short = _variant(teacher, max_header_tokens=3)
    extra = mixed_sampled.student_topk_ids_B_T_K
    one = short.score(mixed_batch, mixed_sampled, extra_ids_B_T_E=extra, k=3)
    assert mixed_sampled.tokens_B_T.shape[0] == 12 and one.mask_B_T.any(-1).all()
    for rows in (1, 2):
        _assert_same_scores(_variant(short, rows_per_forward=rows).score(mixed_batch, mixed_sampled,
                                                                        extra_ids_B_T_E=extra, k=3), one)


def test_a_clips_scores_do_not_depend_on_the_other_clips_in_its_batch(teacher, student, mixed_batch, mixed_sampled):
    short = _variant(teacher, max_header_tokens=3)
    extra = mixed_sampled.student_topk_ids_B_T_K
    together = short.score(mixed_batch, mixed_sampled, extra_ids_B_T_E=extra, k=3)
    for i in range(len(MIXED_LENGTHS)):
        rows = (mixed_sampled.source_B == i).nonzero().squeeze(-1)
        own_batch = make_batch(student[1], [mixed_batch["audio"][i]], [MIXED_LANGUAGES[i]])
        own = Rollout(tokens_B_T=mixed_sampled.tokens_B_T[rows], mask_B_T=mixed_sampled.mask_B_T[rows],
                      logprobs_B_T=mixed_sampled.logprobs_B_T[rows], source_B=torch.zeros_like(rows),
                      prompt_ids_B_S=mixed_sampled.prompt_ids_B_S[rows],
                      prompt_mask_B_S=mixed_sampled.prompt_mask_B_S[rows])
        alone = short.score(own_batch, own, extra_ids_B_T_E=extra[rows], k=3)
        _assert_same_scores(together.select(rows), alone)


def test_batch_settings_are_checked(teacher, student):
    for key in ("rows_per_forward", "encode_batch_size", "max_header_tokens"):
        with pytest.raises(ValueError, match=key):
            Qwen3ASRTeacher(teacher.model, teacher.processor, student[1], student[2], **{key: 0})
