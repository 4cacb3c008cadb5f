"""Duration batching: caps, coverage, seeds, sharding, weights, and exact resume."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from train.data.sampler import DurationBatchSampler


def _durations(n=500, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 20.0, n).round(3)


def _indices(batches):
    return [[k.index for k in b] for b in batches]


def test_batches_respect_the_caps_and_cover_every_utterance_once():
    d = _durations()
    sampler = DurationBatchSampler(d, max_batch_seconds=60, max_batch_size=8, seed=1)
    batches = _indices(sampler)
    for b in batches:
        assert len(b) <= 8
        assert len(b) * max(d[b]) <= 60 or len(b) == 1
    flat = list(itertools.chain(*batches))
    assert sorted(flat) == list(range(len(d)))


def test_batches_group_similar_durations():
    d = _durations(2000)
    batches = _indices(DurationBatchSampler(d, max_batch_seconds=80, seed=0))
    padded = sum(len(b) * d[b].max() for b in batches)
    assert d.sum() / padded > 0.9  # little padding
    random_order = np.random.default_rng(0).permutation(len(d))
    naive = [random_order[i:i + 8] for i in range(0, len(d), 8)]
    assert d.sum() / sum(len(b) * d[b].max() for b in naive) < 0.7


def test_same_seed_same_plan_other_seed_or_epoch_differs():
    d = _durations()
    a = _indices(DurationBatchSampler(d, 60, seed=3))
    b = _indices(DurationBatchSampler(d, 60, seed=3))
    c = _indices(DurationBatchSampler(d, 60, seed=4))
    assert a == b and a != c
    s = DurationBatchSampler(d, 60, seed=3)
    first, second = _indices(s), _indices(s)  # the sampler advances its epoch
    assert first == a and second != first and sorted(itertools.chain(*second)) == list(range(len(d)))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_rank_gets_the_same_number_of_batches_and_all_data(world):
    d = _durations(301)
    shards = [_indices(DurationBatchSampler(d, 45, seed=5, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seen = Counter(itertools.chain(*itertools.chain(*shards)))
    assert set(seen) == set(range(len(d)))  # nothing dropped
    total = sum(len(s) for s in shards)
    single = len(_indices(DurationBatchSampler(d, 45, seed=5)))
    assert single <= total < single + world  # only padding repeats


def test_source_weights_up_and_down_sample():
    d = np.ones(300)
    sampler = DurationBatchSampler(d, 10, seed=0, source_sizes=[100, 200], source_weights=[2.0, 0.5])
    seen = Counter(itertools.chain(*_indices(sampler)))
    assert all(seen[i] == 2 for i in range(100))
    assert sum(1 for i in range(100, 300) if seen[i]) == 100 and max(seen[i] for i in range(100, 300)) == 1
    with pytest.raises(ValueError, match="weights"):
        DurationBatchSampler(d, 10, source_sizes=[100, 200], source_weights=[0.0, 0.0])


@pytest.mark.parametrize("stop_after", [0, 1, 7, 19])
def test_resume_continues_with_exactly_the_batches_it_would_have_seen(stop_after):
    d = _durations(400)
    reference = DurationBatchSampler(d, 50, seed=9, num_replicas=2, rank=1)
    expected = _indices(reference) + _indices(reference)  # two epochs uninterrupted

    first = DurationBatchSampler(d, 50, seed=9, num_replicas=2, rank=1)
    it = iter(first)
    got = [next(it) for _ in range(stop_after + 1)]
    last = got[-1][0]
    state = first.state_dict(after=(last.epoch, last.position))

    resumed = DurationBatchSampler(d, 50, seed=9, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    rest = _indices(resumed) + _indices(resumed)
    assert _indices(got) + rest[: len(expected) - len(got)] == expected


def test_resume_at_the_end_of_an_epoch_starts_the_next():
    d = _durations(100)
    s = DurationBatchSampler(d, 50, seed=2)
    epoch0 = list(s)
    last = epoch0[-1][0]
    resumed = DurationBatchSampler(d, 50, seed=2)
    resumed.load_state_dict(s.state_dict(after=(last.epoch, last.position)))
    reference = DurationBatchSampler(d, 50, seed=2)
    list(reference)  # epoch 0
    nxt = list(resumed)
    assert nxt[0][0].epoch == 1 and _indices(nxt) == _indices(list(reference))


def test_state_from_another_setup_is_refused():
    d = _durations(100)
    state = DurationBatchSampler(d, 50, seed=2).state_dict()
    with pytest.raises(ValueError, match="seed=2"):
        DurationBatchSampler(d, 50, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="num_utterances=100"):
        DurationBatchSampler(d[:90], 50, seed=2).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_batch_seconds"):
        DurationBatchSampler([1.0], 0)
    with pytest.raises(ValueError, match="rank 2"):
        DurationBatchSampler([1.0], 10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="no utterances"):
        DurationBatchSampler([], 10)


def test_a_token_budget_caps_what_seconds_alone_would_admit():
    # 240 s admits 120 two-second clips; with 256 new tokens each that is 120 rollouts. A token budget
    # of 16384 (prompt ~45 + 256 new tokens a clip) admits 54.
    d = np.full(400, 2.0)
    tokens = np.full(400, 45 + 256)
    by_seconds = _indices(DurationBatchSampler(d, max_batch_seconds=240, seed=0))
    by_tokens = _indices(DurationBatchSampler(d, max_batch_seconds=240, seed=0, token_lengths=tokens,
                                              max_batch_tokens=16384))
    assert max(map(len, by_seconds)) == 120 and max(map(len, by_tokens)) == 16384 // 301
    # mixed lengths: padded tokens (count x longest) stay within the budget, every utterance once
    d = _durations(300)
    tokens = (d * 12.5).astype(int) + 20 + np.random.default_rng(1).integers(5, 80, len(d))
    sampler = DurationBatchSampler(d, max_batch_seconds=600, seed=2, token_lengths=tokens, max_batch_tokens=2000)
    batches = _indices(sampler)
    assert all(len(b) * tokens[b].max() <= 2000 or len(b) == 1 for b in batches)
    assert sorted(itertools.chain(*batches)) == list(range(len(d)))
    # the budget is part of what a resumed run must share
    other = DurationBatchSampler(d, max_batch_seconds=600, seed=2, token_lengths=tokens, max_batch_tokens=4000)
    with pytest.raises(ValueError, match="max_batch_tokens=2000"):
        other.load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="go together"):
        DurationBatchSampler(d, max_batch_seconds=600, max_batch_tokens=2000)
