"""Batched decoding: log-probs match a full forward, EOS and max_new_tokens, the filter, sampling."""

from __future__ import annotations

import torch

from tests.conftest import make_clips
from train.models import generate, transcribe
from train.models.generation import keyed_sample, splitmix64
from train.models.token_filter import apply_token_filter


def _args(model, processor):
    return (processor.allowed_token_mask(model.config.text_config.vocab_size), processor.eos_token_ids,
            processor.pad_token_id)


def test_logprobs_equal_a_full_forward_without_cache(tiny_student):
    model, processor = tiny_student
    clips = make_clips([16000, 7000, 30000], seed=3)
    allowed, eos, pad = _args(model, processor)
    out = generate(model, processor(clips), allowed, eos, pad, max_new_tokens=10)
    for i, clip in enumerate(clips):
        n = int(out.mask_B_T[i].sum())
        one = processor([clip])
        ids = torch.cat([one["input_ids"][0], out.tokens_B_T[i, :n]])[None]
        with torch.no_grad():
            logits = model(input_ids=ids, input_features=one["input_features"],
                           input_features_mask=one["input_features_mask"]).logits[0].double()
        prompt_len = one["input_ids"].shape[1]
        logp = torch.log_softmax(apply_token_filter(logits[prompt_len - 1: prompt_len - 1 + n], allowed), -1)
        expected = logp.gather(-1, out.tokens_B_T[i, :n, None]).squeeze(-1)
        torch.testing.assert_close(out.logprobs_B_T[i, :n].double(), expected, rtol=1e-4, atol=1e-4)
        # greedy: each token is the filtered argmax of the full forward
        assert torch.equal(logp.argmax(-1), out.tokens_B_T[i, :n])


def test_eos_ends_a_row_and_max_new_tokens_caps_it(tiny_student):
    model, processor = tiny_student
    allowed, eos, pad = _args(model, processor)
    out = generate(model, processor(make_clips([16000, 8000, 4000, 20000], seed=4)), allowed, eos, pad,
                   max_new_tokens=7)
    assert out.tokens_B_T.shape[1] <= 7
    for row, mask in zip(out.tokens_B_T, out.mask_B_T):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        hit = [j for j, t in enumerate(row[:n].tolist()) if t in eos]
        assert hit == [] or hit == [n - 1], "EOS only as the last unmasked token"
        assert n == 7 or hit, "a row shorter than the cap must end with EOS"
        assert torch.all(row[n:] == pad)
    assert torch.all(out.logprobs_B_T[~out.mask_B_T] == 0)


def test_filter_blocks_a_placeholder_the_model_prefers(tokenizer):
    from tests.conftest import sharpen, tiny_config
    from train.models import build_student

    model, processor = build_student(tiny_config(decoder={"tie_word_embeddings": False}))
    model = sharpen(model).eval()
    batch = processor(make_clips([16000], seed=5))
    with torch.no_grad():  # point two blocked rows of lm_head at the final hidden state: top logits at step 1
        h = model(**batch, output_hidden_states=True).hidden_states[-1][0, -1]
        model.lm_head.weight[151663] = h * (100.0 / h.norm() ** 2)
        model.lm_head.weight[151900] = h * (90.0 / h.norm() ** 2)
        raw = model(**batch).logits[0, -1]
    assert int(raw.argmax()) == 151663 and int(raw.topk(2).indices[1]) == 151900
    out = generate(model, batch, *_args(model, processor), max_new_tokens=5)
    assert not torch.isin(out.tokens_B_T, torch.tensor([151663, 151900])).any()
    assert torch.all(out.tokens_B_T[out.mask_B_T] < 151670)


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(tiny_student):
    model, processor = tiny_student
    allowed, eos, pad = _args(model, processor)
    batch = processor(make_clips([16000, 9000], seed=6))
    a = generate(model, batch, allowed, eos, pad, 8, do_sample=True, generator=torch.Generator().manual_seed(1))
    b = generate(model, batch, allowed, eos, pad, 8, do_sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens_B_T, b.tokens_B_T)
    greedy = generate(model, batch, allowed, eos, pad, 8)
    narrow = generate(model, batch, allowed, eos, pad, 8, do_sample=True, top_p=1e-9,
                      generator=torch.Generator().manual_seed(2))
    assert torch.equal(greedy.tokens_B_T, narrow.tokens_B_T)


def test_sampled_first_tokens_follow_the_tempered_distribution(tiny_student):
    model, processor = tiny_student
    allowed, eos, pad = _args(model, processor)
    clip = make_clips([12000], seed=7)[0]
    n, temperature = 800, 1.5
    one = processor([clip])
    with torch.no_grad():
        logits = model(**one).logits[0, -1].double()
    probs = torch.softmax(apply_token_filter(logits, allowed) / temperature, -1)
    batch = {k: v.expand(n, *v.shape[1:]) for k, v in one.items()}
    out = generate(model, batch, allowed, eos, pad, 1, do_sample=True, temperature=temperature,
                   generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(out.tokens_B_T[:, 0], minlength=probs.numel()).double()
    top = probs.topk(3).indices
    for t in top:  # binomial standard error: 4 sigma
        p = probs[t]
        assert abs(counts[t] / n - p) < 4 * (p * (1 - p) / n).sqrt() + 1e-3
    # log-probs stay those of the model at temperature 1, not of the tempered sampler
    expected = torch.log_softmax(apply_token_filter(logits, allowed), -1)[out.tokens_B_T[:, 0]]
    torch.testing.assert_close(out.logprobs_B_T[:, 0].double(), expected, rtol=1e-4, atol=1e-4)


def _splitmix64_reference(seed: int, n: int) -> list[int]:
    """The published algorithm on Python integers (unbounded, reduced mod 2**64 by hand)."""
    mask, out = (1 << 64) - 1, []
    for _ in range(n):
        seed = (seed + 0x9E3779B97F4A7C15) & mask
        z = ((seed ^ (seed >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_splitmix64_matches_the_published_stream():
    # the first outputs for seed 1234567 in the algorithm's reference tests
    assert _splitmix64_reference(1234567, 3) == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    keys = torch.tensor([1234567, -5, 0, 2**63 - 1, -(2**63)])
    table = splitmix64(keys, torch.arange(40))
    for key, row in zip(keys.tolist(), table.tolist()):
        assert [x & ((1 << 64) - 1) for x in row] == _splitmix64_reference(key & ((1 << 64) - 1), 40)


def test_keyed_sampling_follows_the_distribution_and_its_exclusions():
    scores = torch.tensor([1.0, 0.2, -0.5, 2.0, float("-inf"), 0.0], dtype=torch.float64)
    probs = torch.softmax(scores, -1)
    n = 20_000
    keys = torch.arange(n) * 7_919 - 10_000
    draws = keyed_sample(scores.expand(n, -1), keys, step=3)
    counts = torch.bincount(draws, minlength=scores.numel()).double()
    assert counts[4] == 0  # an excluded token is never drawn
    for t in range(scores.numel()):
        p = probs[t]
        assert abs(counts[t] / n - p) <= 4 * (p * (1 - p) / n).sqrt() + 1e-9, (t, counts[t] / n, p)
    # another step is another draw: the rows do not repeat their tokens step after step
    assert (keyed_sample(scores.expand(n, -1), keys, step=4) != draws).double().mean() > 0.4


def test_keyed_sampling_does_not_depend_on_the_batch(tiny_student):
    model, processor = tiny_student
    allowed, eos, pad = _args(model, processor)
    clips = make_clips([16000, 16000, 16000], seed=9)
    keys = torch.tensor([11, -22, 33])
    together = generate(model, processor(clips), allowed, eos, pad, 8, do_sample=True, sample_keys_B=keys)
    for i, clip in enumerate(clips):
        alone = generate(model, processor([clip]), allowed, eos, pad, 8, do_sample=True, sample_keys_B=keys[i:i + 1])
        n = int(alone.lengths_B[0])
        assert torch.equal(alone.tokens_B_T[0, :n], together.tokens_B_T[i, :n])
        assert int(together.lengths_B[i]) == n
    other = generate(model, processor(clips), allowed, eos, pad, 8, do_sample=True, sample_keys_B=keys + 1)
    assert not torch.equal(other.tokens_B_T, together.tokens_B_T)  # the key is what decides
    greedy = generate(model, processor(clips), allowed, eos, pad, 8)
    assert not torch.equal(greedy.tokens_B_T, together.tokens_B_T)


def test_transcribe_returns_text_per_clip(tiny_student):
    model, processor = tiny_student
    texts = transcribe(model, processor, make_clips([16000, 5000]), languages=["en", "de"], max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert not any("<|" in t for t in texts)


def test_bfloat16_and_lora_students_decode(tokenizer):
    from tests.conftest import tiny_config
    from train.models import build_student

    for change in ({"dtype": "bfloat16"}, {"lora": {"enabled": True, "r": 4}}):
        model, processor = build_student(tiny_config(**change))
        texts = transcribe(model.eval(), processor, make_clips([16000, 4000]), max_new_tokens=4)
        assert len(texts) == 2, change
