"""The static-cache decode engine against the eager reference: same tokens, same log-probs (fp32, CPU)."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch

from tests.conftest import make_clips, sharpen, tiny_config
from train.config import DecodeConfig
from train.decode import EAGER, StaticCacheDecoder, make_decoder
from train.models import build_student, generate
from train.opd.rollout import clip_sample_keys, rollout


def _args(model, processor):
    return (processor.allowed_token_mask(model.config.text_config.vocab_size), processor.eos_token_ids,
            processor.pad_token_id)


def _assert_same(static, eager):
    assert torch.equal(static.tokens_B_T, eager.tokens_B_T)
    assert torch.equal(static.mask_B_T, eager.mask_B_T)
    torch.testing.assert_close(static.logprobs_B_T, eager.logprobs_B_T, rtol=0, atol=2e-5)
    if eager.topk_ids_B_T_K is not None:  # where a token was chosen (past EOS a row may be compacted away)
        assert torch.equal(static.topk_ids_B_T_K[eager.mask_B_T], eager.topk_ids_B_T_K[eager.mask_B_T])


def _staggered_eos(model, processor, batch) -> list[int]:
    """For row i, the token the eager greedy decode emits at step 1 + i: used as EOS, the rows end at
    different steps (or earlier, where another row's EOS comes first)."""
    allowed, _, pad = _args(model, processor)
    free = generate(model, batch, allowed, [], pad, max_new_tokens=12)
    return sorted({row[(1 + i) % 12] for i, row in enumerate(free.tokens_B_T.tolist())})


def test_greedy_with_left_padding_and_topk_equals_the_eager_loop(tiny_student):
    model, processor = tiny_student
    batch = processor(make_clips([16000, 7000, 30000, 3000, 12000], seed=3))  # 5 rows: a bucket of 8
    args = _args(model, processor)
    decoder = StaticCacheDecoder(check_every=3, length_bucket=24)
    static = decoder.generate(model, batch, *args, max_new_tokens=11, return_topk=4)
    eager = generate(model, batch, *args, max_new_tokens=11, return_topk=4)
    _assert_same(static, eager)
    assert decoder.stats["host_checks"] == 3  # after steps 3, 6 and 9, not every step
    (shape,) = decoder._shapes.values()
    prompt = batch["input_ids"].shape[1]
    assert shape.valid_B_L.shape == (8, -(-(prompt + 11) // 24) * 24)  # batch and length buckets


def test_rows_that_finish_are_compacted_and_the_tokens_do_not_change(tiny_student):
    model, processor = tiny_student
    batch = processor(make_clips([16000, 7000, 30000, 3000, 12000, 9000, 20000, 5000], seed=7))
    allowed, _, pad = _args(model, processor)
    eos = _staggered_eos(model, processor, batch)
    decoder = StaticCacheDecoder(check_every=1)
    static = decoder.generate(model, batch, allowed, eos, pad, max_new_tokens=12, return_topk=3)
    eager = generate(model, batch, allowed, eos, pad, max_new_tokens=12, return_topk=3)
    lengths = eager.lengths_B.tolist()
    assert len(set(lengths)) > 2 and min(lengths) < 6, lengths  # rows really end at different steps
    assert decoder.stats["compactions"] >= 1
    _assert_same(static, eager)
    # Without compaction: the same again, with the whole batch to the end.
    plain = StaticCacheDecoder(check_every=1, compact=False)
    _assert_same(plain.generate(model, batch, allowed, eos, pad, max_new_tokens=12, return_topk=3), eager)
    assert plain.stats["compactions"] == 0


def test_keyed_sampling_with_temperature_and_top_p_equals_the_eager_loop(tiny_student):
    model, processor = tiny_student
    batch = processor(make_clips([16000, 7000, 30000, 3000, 12000, 9000], seed=11))
    allowed, _, pad = _args(model, processor)
    eos = _staggered_eos(model, processor, batch)
    keys = clip_sample_keys(5, [str(i) for i in range(6)], 1)
    options = dict(max_new_tokens=10, do_sample=True, temperature=0.7, top_p=0.9, sample_keys_B=keys)
    decoder = StaticCacheDecoder(check_every=2)
    _assert_same(decoder.generate(model, batch, allowed, eos, pad, **options),
                 generate(model, batch, allowed, eos, pad, **options))


def test_generator_sampling_draws_what_the_eager_loop_draws(tiny_student):
    model, processor = tiny_student
    batch = processor(make_clips([16000, 7000, 30000], seed=2))
    args = _args(model, processor)
    static = StaticCacheDecoder().generate(model, batch, *args, 6, do_sample=True,
                                           generator=torch.Generator().manual_seed(3))
    eager = generate(model, batch, *args, 6, do_sample=True, generator=torch.Generator().manual_seed(3))
    _assert_same(static, eager)


def test_buffers_are_reused_across_calls_and_other_lengths_get_their_own(tiny_student):
    model, processor = tiny_student
    args = _args(model, processor)
    decoder = StaticCacheDecoder(length_bucket=64)
    for lengths in ([16000, 7000], [9000, 12000], [30000]):
        batch = processor(make_clips(lengths, seed=len(lengths)))
        _assert_same(decoder.generate(model, batch, *args, 5), generate(model, batch, *args, 5))
    assert len(decoder._shapes) == 2  # (2 rows, 64) reused; (1 row, 64) new


@pytest.mark.parametrize("variant", ["qwen3", "lora"])
def test_other_decoders_and_lora_wrappers_decode_the_same(tokenizer, variant):
    torch.manual_seed(0)
    if variant == "qwen3":
        model, processor = build_student(tiny_config(decoder={"arch": "qwen3", "head_dim": 8}))
    else:
        model, processor = build_student(tiny_config(lora={"enabled": True, "r": 4}, train_decoder=True,
                                                     init_decoder_from=None))
    model = sharpen(model).eval()
    if variant == "lora":  # non-zero LoRA B, so the adapters change the output
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    batch = processor(make_clips([16000, 6000, 21000], seed=9))
    args = _args(model, processor)
    _assert_same(StaticCacheDecoder(check_every=2).generate(model, batch, *args, 8, return_topk=2),
                 generate(model, batch, *args, 8, return_topk=2))


def test_rollout_through_the_interface_is_the_same_with_either_engine(tiny_student):
    model, processor = tiny_student
    clips = make_clips([16000, 7000, 12000], seed=4)
    feats = processor.features(clips)
    prompts = processor.prompt_ids([len(c) for c in clips], [None] * 3)
    batch = {"input_features": feats[0], "input_features_mask": feats[1], "prompt_ids": prompts["input_ids"],
             "prompt_mask": prompts["attention_mask"], "ids": ["a", "b", "c"]}
    options = dict(n_samples=2, max_new_tokens=6, do_sample=True, topk=3, sample_seed=1)
    static = rollout(model, processor, batch, decoder=StaticCacheDecoder(), **options)
    eager = rollout(model, processor, batch, decoder=EAGER, **options)
    assert torch.equal(static.tokens_B_T, eager.tokens_B_T)
    torch.testing.assert_close(static.logprobs_B_T, eager.logprobs_B_T, rtol=0, atol=2e-5)
    assert torch.equal(static.student_topk_ids_B_T_K, eager.student_topk_ids_B_T_K)


def test_the_engine_setting_picks_the_engine_and_refuses_static_with_sharded_weights():
    assert make_decoder(DecodeConfig(), device="cpu") is EAGER  # auto: eager off CUDA
    assert isinstance(make_decoder(DecodeConfig(), device="cuda"), StaticCacheDecoder)
    assert make_decoder(DecodeConfig(), device="cuda", sharded=True) is EAGER
    assert isinstance(make_decoder(DecodeConfig(engine="static"), device="cpu"), StaticCacheDecoder)
    with pytest.raises(ValueError, match="decode.engine=eager"):
        make_decoder(DecodeConfig(engine="static"), device="cuda", sharded=True)
    static = make_decoder(DecodeConfig(engine="static", check_every=5, compact=False, length_bucket=32,
                                       cuda_graphs=False, compile=True, bf16_copy=False))
    assert (static.check_every, static.compact, static.length_bucket, static.cuda_graphs, static.compile,
            static.bf16_copy) == (5, False, 32, False, True, False)


def _bf16_copy_of(model):
    copy = deepcopy(model)
    for p in copy.parameters():
        p.data = p.data.to(torch.bfloat16)
    return copy


def test_an_autocast_model_decodes_from_a_bf16_copy_refreshed_at_each_call(tiny_student):
    """A student that trains float32 masters under bf16 autocast (train/engine.py) decodes from a bf16 copy
    of its weights: exactly what a bf16 model decodes; after an update, from the updated weights."""
    model, processor = tiny_student
    master = deepcopy(model)
    master.autocast_bf16 = True
    batch = processor(make_clips([16000, 7000, 12000], seed=1))
    args = _args(model, processor)
    decoder = StaticCacheDecoder(check_every=2)
    for update in range(2):
        out = decoder.generate(master, batch, *args, 6, return_topk=3)
        reference = StaticCacheDecoder(check_every=2).generate(_bf16_copy_of(master), batch, *args, 6, return_topk=3)
        _assert_same(out, reference)
        (shape,) = decoder._shapes.values()
        assert shape.kv.keys[0].dtype == torch.bfloat16
        assert decoder._copy.model.language_model.rotary_emb.inv_freq.dtype == torch.float32  # buffers stay
        with torch.no_grad():  # an optimizer step on the masters
            master.model.language_model.layers[0].mlp.down_proj.weight.mul_(-3.0)
    assert not torch.equal(out.tokens_B_T, decoder.generate(model, batch, *args, 6).tokens_B_T)
    # bf16_copy=false: autocast over the float32 weights instead (another rounding, no copy)
    plain = StaticCacheDecoder(bf16_copy=False)
    plain.generate(master, batch, *args, 6)
    assert plain._copy is None and next(iter(plain._shapes.values())).kv.keys[0].dtype == torch.bfloat16


def test_compile_puts_the_decode_step_through_torch_compile(tiny_student, monkeypatch):
    """`decode.compile` has an effect (a spy stands in for torch.compile: compiling takes ~40 s on CPU;
    scripts/bench_gpu.sh runs the real thing)."""
    model, processor = tiny_student
    compiled = []

    def spy(fn, **kwargs):
        compiled.append(kwargs)

        def counted(*args):
            compiled.append("call")
            return fn(*args)
        return counted

    monkeypatch.setattr(torch, "compile", spy)
    batch = processor(make_clips([16000, 7000], seed=1))
    args = _args(model, processor)
    out = StaticCacheDecoder(compile=True).generate(model, batch, *args, 5)
    assert compiled[0] == {"dynamic": False} and compiled.count("call") == 4  # steps 2..5; step 1 is the prefill
    _assert_same(out, generate(model, batch, *args, 5))
    compiled.clear()
    StaticCacheDecoder(compile=False).generate(model, batch, *args, 5)
    assert compiled == []


@pytest.mark.gpu
def test_cuda_graphs_replay_the_eager_loop_s_tokens(tiny_student):
    model, processor = tiny_student
    model = model.to("cuda")
    try:
        batch = {k: v.to("cuda") for k, v in processor(make_clips([16000, 7000, 30000, 3000], seed=3)).items()}
        args = _args(model, processor)
        decoder = StaticCacheDecoder(cuda_graphs=True, check_every=2)
        for _ in range(2):  # the second call replays the graphs the first captured
            _assert_same(decoder.generate(model, batch, *args, 9, return_topk=3),
                         generate(model, batch, *args, 9, return_topk=3))
        assert decoder.stats["captures"] == 1
    finally:
        model.to("cpu")
