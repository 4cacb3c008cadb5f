"""The scoring core both teachers share (train/teachers/scoring.py): how a row is built, one rule for student
tokens the teacher cannot map (checked on both teachers against a plain forward of each model),
`rows_per_forward` as one forward per chunk of rows, log-probs gathered without a full log-softmax copy
(against float64 and the full-copy implementation it replaced), and the renamed config key."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import make_clips, sharpen, tiny_config
from tests.teachers.qwen3_fixtures import (CHAT_TEMPLATE, IDS, TEACHER_VOCAB_SIZE, make_batch, qwen3_asr_tokenizer,
                                           tiny_qwen3_asr)
from train.config import ConfigError, DistillConfig, TeacherConfig, config_from_dict, load_config
from train.models.generation import left_padded_positions
from train.models.processor import HOP_LENGTH
from train.opd.rollout import Rollout, rollout
from train.teachers import base
from train.teachers.base import gather_scores
from train.teachers.qwen3_asr import Qwen3ASRTeacher
from train.teachers.same_family import SameFamilyTeacher
from train.teachers.scoring import build_rows
from train.teachers.token_map import TokenMap

LENGTHS, LANGUAGES = [16000, 9000], ["de", "en"]
KINDS = ["same_family", "qwen3_asr"]


@pytest.fixture(scope="module")
def batch(tiny_student):
    return make_batch(tiny_student[1], make_clips(LENGTHS, seed=7), LANGUAGES)


@pytest.fixture(scope="module")
def teachers(tiny_student):
    from train.models import build_student

    student_model, student_processor = tiny_student
    vocab = student_model.config.text_config.vocab_size
    torch.manual_seed(1)
    model, processor = build_student(tiny_config())
    same = SameFamilyTeacher(sharpen(model, seed=1).eval(), processor, student_processor, vocab, language_prompt=True)
    qwen_model, qwen_processor = tiny_qwen3_asr(CHAT_TEMPLATE)
    return {"same_family": same, "qwen3_asr": Qwen3ASRTeacher(qwen_model, qwen_processor, student_processor, vocab)}


@pytest.fixture(scope="module")
def sampled(tiny_student, batch):
    model, processor = tiny_student
    return rollout(model, processor, batch, n_samples=2, max_new_tokens=5, do_sample=True,
                   generator=torch.Generator().manual_seed(5), topk=4)


def _assert_same_scores(got, expected, atol=1e-5):
    m = expected.mask_B_T
    assert torch.equal(got.mask_B_T, m)
    assert torch.equal(got.topk_ids_B_T_K[m], expected.topk_ids_B_T_K[m])
    for name in ("sampled_logp_B_T", "topk_logp_B_T_K", "extra_logp_B_T_E"):
        torch.testing.assert_close(getattr(got, name)[m], getattr(expected, name)[m], rtol=0, atol=atol)


# ---- rows ------------------------------------------------------------------------------------------------
def test_rows_are_left_padded_prompts_then_tokens_with_audio_only_in_the_prompt():
    audio, pad = 99, 0
    prompts = [torch.tensor([5, audio, audio, 6]), torch.tensor([7, audio, 8])]
    tokens = torch.tensor([[10, -1, audio], [11, 12, 13]])  # an unmapped token; a token with the audio id
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ids, attn, placeholder = build_rows(prompts, tokens, mask, pad, audio)
    assert ids.tolist() == [[5, audio, audio, 6, 10, pad, audio], [pad, 7, audio, 8, 11, 12, 13]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 0]]
    assert placeholder.tolist() == [[False, True, True, False, False, False, False],
                                    [False, False, True, False, False, False, False]]
    # The unmapped token keeps its place: the tokens after it have the positions the student gave them.
    assert left_padded_positions(attn).tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 0, 1, 2, 3, 4, 4]]


# ---- one rule for unmapped tokens, on both teachers -----------------------------------------------------
def _with_unmapped(teacher, student_id: int):
    """The teacher with a token map in which `student_id` has no teacher token (as with another tokenizer)."""
    tmap = copy.copy(teacher.token_map)
    tmap.student_to_teacher = tmap.student_to_teacher.clone()
    tmap.student_to_teacher[student_id] = -1
    tmap.is_identity, tmap._tables = False, {}
    other = copy.copy(teacher)
    other.token_map = tmap
    return other


def _plain_logp(kind, teacher, batch, i, teacher_ids):
    """Reference: one row alone through the model's own forward (input ids and audio features, no padding,
    default positions), float64 log-softmax over the full vocabulary at the positions predicting each token."""
    if kind == "qwen3_asr":
        inputs = teacher.processor(text=[teacher.prompt(LANGUAGES[i])], audio=[batch["audio"][i]], return_tensors="pt")
        prompt = inputs["input_ids"][0]
        audio = {"input_features": inputs["input_features"], "input_features_mask": inputs["input_features_mask"]}
    else:
        samples = int(batch["input_features_mask"][i].sum()) * HOP_LENGTH
        prompt = teacher.processor.prompt_ids([samples], [LANGUAGES[i]])["input_ids"][0]
        audio = {"input_features": batch["input_features"][i: i + 1],
                 "input_features_mask": batch["input_features_mask"][i: i + 1]}
    with torch.no_grad():
        logits = teacher.model(input_ids=torch.cat([prompt, teacher_ids])[None], **audio).logits[0]
    start = len(prompt) - 1
    return torch.log_softmax(logits[start: start + len(teacher_ids)].double(), dim=-1)


@pytest.mark.parametrize("kind", KINDS)
def test_both_teachers_feed_an_unmapped_token_as_attended_pad_and_drop_its_score(kind, teachers, batch, tokenizer):
    user, begin_audio = (tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|begin_of_audio|>"))
    teacher = teachers[kind]
    if kind == "same_family":  # same tokenizer: nothing is unmapped unless the map says so
        teacher = _with_unmapped(teacher, begin_audio)
    assert teacher.token_map.to_teacher(torch.tensor([begin_audio])).item() == -1
    pad_id = teacher.pad_id if kind == "qwen3_asr" else teacher.processor.pad_token_id
    eos = teacher.token_map.to_teacher(torch.tensor([user])).item()
    # "Hello" ?? " world" EOS (pad), and a row of the other clip with no unmapped token.
    tokens = torch.tensor([[9707, begin_audio, 1879, user, 151643], [9707, 1879, 11, 1917, user]])
    mask = torch.tensor([[True, True, True, True, False], [True] * 5])
    crafted = Rollout(tokens_B_T=tokens, mask_B_T=mask, logprobs_B_T=torch.zeros(2, 5), source_B=torch.tensor([0, 1]),
                      prompt_ids_B_S=torch.zeros(2, 0, dtype=torch.long),
                      prompt_mask_B_S=torch.zeros(2, 0, dtype=torch.long))
    before = teacher.dropped_positions_total
    scores = teacher.score(batch, crafted, k=3)

    assert scores.mask_B_T.tolist() == [[True, False, True, True, False], [True] * 5]
    assert teacher.dropped_positions == 1 and teacher.dropped_positions_total == before + 1
    assert scores.sampled_logp_B_T[0, 1] == 0
    row0 = torch.tensor([9707, pad_id, 1879, eos])  # the rule: the pad id in its place, attended
    row1 = teacher.token_map.to_teacher(tokens[1])
    for b, teacher_ids, scored in ((0, row0, [0, 2, 3]), (1, row1, [0, 1, 2, 3, 4])):
        logp = _plain_logp(kind, teacher, batch, b, teacher_ids)
        expected = logp.gather(-1, teacher_ids[:, None]).squeeze(-1)
        torch.testing.assert_close(scores.sampled_logp_B_T[b, scored].double(), expected[scored], rtol=0, atol=1e-5)
        torch.testing.assert_close(scores.topk_logp_B_T_K[b, scored].double(), logp[scored].topk(3).values,
                                   rtol=0, atol=1e-5)
    # The other rule (the token out of the attention, as if absent) scores the later tokens differently.
    absent = torch.tensor([9707, 1879, eos])
    logp = _plain_logp(kind, teacher, batch, 0, absent).gather(-1, absent[:, None]).squeeze(-1)
    assert (scores.sampled_logp_B_T[0, [2, 3]].double() - logp[1:]).abs().max() > 1e-3


# ---- rows per forward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_rows_per_forward_one_is_one_forward_per_row_with_the_same_scores(kind, teachers, batch, sampled):
    teacher = copy.copy(teachers[kind])
    rows_seen = []
    forward = teacher._forward

    def counting_forward(embeds_B_L_D, *args):
        rows_seen.append(embeds_B_L_D.shape[0])
        return forward(embeds_B_L_D, *args)

    teacher._forward = counting_forward
    extra = sampled.student_topk_ids_B_T_K
    teacher.rows_per_forward = None
    together = teacher.score(batch, sampled, extra_ids_B_T_E=extra, k=3)
    assert rows_seen == [4]
    rows_seen.clear()
    teacher.rows_per_forward = 1
    one_by_one = teacher.score(batch, sampled, extra_ids_B_T_E=extra, k=3)
    assert rows_seen == [1, 1, 1, 1]
    assert together.mask_B_T.any(-1).all()
    _assert_same_scores(one_by_one, together)


# ---- gathered log-probs --------------------------------------------------------------------------------
def _full_copy_gather(logits, tokens, k, temperature, extra):
    """The implementation the core replaced: full float32 log-softmax copies, then gathers."""
    logits = logits.float()
    logp1 = torch.log_softmax(logits, dim=-1)
    logpT = logp1 if temperature == 1.0 else torch.log_softmax(logits / temperature, dim=-1)
    return (logp1.gather(-1, tokens[..., None]).squeeze(-1), logpT.topk(k, dim=-1).values,
            logpT.gather(-1, extra.clamp(min=0)).masked_fill(extra < 0, float("-inf")), logpT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gathered_logp_equal_a_float64_log_softmax_and_the_full_copy_path(dtype, temperature, monkeypatch):
    monkeypatch.setattr(base, "LOGSUMEXP_BLOCK_ELEMENTS", 3 * 1000)  # blocks of 3 positions, a remainder of 2
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 6, 1000, generator=gen) * 4).to(dtype)[:, :5]  # a slice, as the teacher passes it
    tokens = torch.randint(0, 1000, (3, 5), generator=gen)
    extra = torch.randint(-1, 1000, (3, 5, 8), generator=gen)
    mask = torch.rand(3, 5, generator=gen) < 0.8
    got = gather_scores(logits, tokens, mask, 4, temperature, extra, full=True)
    ref1 = torch.log_softmax(logits.double(), dim=-1)
    refT = torch.log_softmax(logits.double() / temperature, dim=-1)
    expected_extra = refT.gather(-1, extra.clamp(min=0)).masked_fill(extra < 0, float("-inf"))
    old_sampled, old_topk, old_extra, old_full = _full_copy_gather(logits, tokens, 4, temperature, extra)
    close = {"rtol": 1e-6, "atol": 1e-6}  # float32 rounding of values down to -45: a few 1e-6 absolute
    torch.testing.assert_close(got.sampled_logp_B_T.double(), ref1.gather(-1, tokens[..., None]).squeeze(-1), **close)
    torch.testing.assert_close(got.topk_logp_B_T_K.double(), refT.topk(4, dim=-1).values, **close)
    torch.testing.assert_close(got.topk_logp_B_T_K.double(), refT.gather(-1, got.topk_ids_B_T_K), **close)
    torch.testing.assert_close(got.extra_logp_B_T_E.double(), expected_extra, **close)
    torch.testing.assert_close(got.full_logp_B_T_V.double(), refT, **close)
    for new, old in ((got.sampled_logp_B_T, old_sampled), (got.topk_logp_B_T_K, old_topk),
                     (got.extra_logp_B_T_E, old_extra), (got.full_logp_B_T_V, old_full)):
        torch.testing.assert_close(new, old, **close)
    assert torch.equal(got.mask_B_T, mask) and got.full_logp_B_T_V.dtype == torch.float32
    assert gather_scores(logits, tokens, mask, 4, temperature, extra, full=False).full_logp_B_T_V is None


def test_mapped_gather_equals_a_float64_log_softmax_over_the_teachers_vocabulary(tiny_student, monkeypatch):
    monkeypatch.setattr(base, "LOGSUMEXP_BLOCK_ELEMENTS", TEACHER_VOCAB_SIZE)  # one position per block
    model, processor = tiny_student
    tmap = TokenMap.for_student(processor, qwen3_asr_tokenizer(), model.config.text_config.vocab_size,
                                TEACHER_VOCAB_SIZE)
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, TEACHER_VOCAB_SIZE, generator=gen) * 3).to(torch.bfloat16)[:, :3]
    tokens = torch.tensor([[9707, 1879, 151645], [11, 151664, 151666]])  # <|begin_of_audio|>, EOS alias <|user|>
    extra = torch.tensor([9707, 151645, 151666, 151664, 42])[None, None].expand(2, 3, 5)
    scores, dropped = tmap.gather_scores(logits, tokens, torch.ones(2, 3, dtype=torch.bool), k=4, temperature=0.5,
                                         extra_ids_B_T_E=extra)
    ref1 = torch.log_softmax(logits.double(), dim=-1)
    refT = torch.log_softmax(logits.double() / 0.5, dim=-1)
    close = {"rtol": 1e-6, "atol": 1e-6}
    teacher_tokens = torch.tensor([[9707, 1879, IDS["<|im_end|>"]], [11, 0, IDS["<|im_end|>"]]])
    expected = ref1.gather(-1, teacher_tokens[..., None]).squeeze(-1)
    expected[1, 1] = 0.0  # <|begin_of_audio|> has no teacher token: dropped
    assert dropped == 1 and scores.mask_B_T.tolist() == [[True, True, True], [True, False, True]]
    torch.testing.assert_close(scores.sampled_logp_B_T.double(), expected, **close)
    torch.testing.assert_close(scores.topk_logp_B_T_K.double(), refT.topk(4, dim=-1).values, **close)
    own = refT[..., [9707, IDS["<|im_end|>"], 42]]
    torch.testing.assert_close(scores.extra_logp_B_T_E[..., [0, 1, 4]].double(), own, **close)
    assert torch.isneginf(scores.extra_logp_B_T_E[..., 2:4]).all()  # an EOS alias, an unmapped id


@pytest.mark.gpu
def test_gather_peak_memory_is_far_below_the_full_copy_path():
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(4, 129, TEACHER_VOCAB_SIZE, generator=gen, device=device).to(torch.bfloat16)[:, :128]
    tokens = torch.randint(0, TEACHER_VOCAB_SIZE, (4, 128), generator=gen, device=device)
    extra = torch.randint(0, TEACHER_VOCAB_SIZE, (4, 128, 32), generator=gen, device=device)
    mask = torch.ones(4, 128, dtype=torch.bool, device=device)

    def peak_bytes(fn):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start

    new = peak_bytes(lambda: gather_scores(logits, tokens, mask, 32, 0.7, extra, full=False))
    old = peak_bytes(lambda: _full_copy_gather(logits, tokens, 32, 0.7, extra))
    assert old > 4 * logits.numel() * 2  # at least two float32 copies of the bfloat16 logits
    assert new < old / 2, (new, old)


# ---- the config key --------------------------------------------------------------------------------------
def test_rows_per_forward_is_the_key_and_the_old_name_is_refused_with_the_new_one():
    assert TeacherConfig(rows_per_forward=3).rows_per_forward == 3
    with pytest.raises(ConfigError, match=r"teacher\.rows_per_forward: must be >= 1, got 0"):
        TeacherConfig(rows_per_forward=0)
    for load in (lambda: config_from_dict(DistillConfig, {"teacher": {"score_chunk_rows": 2}}),
                 lambda: load_config(DistillConfig, None, ["teacher.score_chunk_rows=2"])):
        with pytest.raises(ConfigError, match=r"^teacher\.score_chunk_rows.*: renamed to teacher\.rows_per_forward$"):
            load()


def test_build_teacher_passes_rows_per_forward_to_both_kinds(tiny_student, monkeypatch):
    from train.distill import build_teacher

    model, processor = tiny_student
    vocab = model.config.text_config.vocab_size
    data = {"train": [{"path": "unused.jsonl"}]}
    cfg = config_from_dict(DistillConfig, {"data": data, "teacher": {"rows_per_forward": 2}})
    assert build_teacher(cfg, processor, vocab, torch.device("cpu")).rows_per_forward == 2
    seen = {}
    monkeypatch.setattr(Qwen3ASRTeacher, "from_pretrained", lambda *args, **kwargs: seen.update(kwargs))
    cfg = config_from_dict(DistillConfig, {"data": data, "teacher": {"kind": "qwen3_asr", "checkpoint": "ckpt",
                                                                     "rows_per_forward": 5}})
    build_teacher(cfg, processor, vocab, torch.device("cpu"))
    assert seen["rows_per_forward"] == 5
