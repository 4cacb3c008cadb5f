"""GKD's lambda and its ramp (train/opd/gkd.py): the schedule against its formula, the coin's rate against the
schedule, and the refusal of settings that would read transcripts a run does not have."""

from __future__ import annotations

import pytest

from train.config import ConfigError, OPDConfig
from train.data.manifest import Utterance
from train.opd.gkd import check_reference_use, gkd_coin, gkd_lambda


def test_lambda_rises_linearly_over_the_ramp_then_holds():
    opd = OPDConfig(on_policy_fraction=0.8, on_policy_ramp_steps=4)
    assert [gkd_lambda(opd, s) for s in range(1, 7)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    flat = OPDConfig(on_policy_fraction=0.8)
    assert {gkd_lambda(flat, s) for s in range(1, 7)} == {0.8}


def test_the_coins_rate_follows_lambda():
    """Over many seeds, each step's share of on-policy coins is its lambda (binomial, 4,000 draws: 4 sigma
    is 0.032)."""
    opd = OPDConfig(on_policy_fraction=1.0, on_policy_ramp_steps=10)
    seeds = range(4000)
    for step in (1, 3, 5, 8, 10, 15):
        rate = sum(gkd_coin(opd, seed, step) for seed in seeds) / len(seeds)
        assert rate == pytest.approx(min(step / 10, 1.0), abs=0.032), step
    assert not any(gkd_coin(OPDConfig(on_policy_fraction=0.0), seed, 5) for seed in range(200))


def test_bad_ramps_are_refused_by_name():
    with pytest.raises(ConfigError, match="opd.on_policy_ramp_steps.*>= 0"):
        OPDConfig(on_policy_ramp_steps=-1)
    with pytest.raises(ConfigError, match="opd.on_policy_ramp_steps.*no effect"):
        OPDConfig(on_policy_fraction=0.0, on_policy_ramp_steps=10)


def _utts(texts):
    return [Utterance(id=str(i), audio=f"{i}.wav", duration=1.0, text=t) for i, t in enumerate(texts)]


def test_reading_transcripts_a_run_lacks_is_refused_or_said():
    pool, labelled = _utts([None, None, " "]), _utts(["a b", "c"])
    said = []
    check_reference_use(OPDConfig(), ["pool.jsonl"], pool, [3], [1.0], say=said.append)  # nothing asked
    for opd, key in ((OPDConfig(ce_weight=0.1), "opd.ce_weight"),
                     (OPDConfig(on_policy_fraction=0.5), "opd.on_policy_fraction"),
                     (OPDConfig(on_policy_ramp_steps=10), "opd.on_policy_ramp_steps")):
        with pytest.raises(ConfigError, match=f"{key}: no clip of data.train \\(pool.jsonl\\) has a transcript"):
            check_reference_use(opd, ["pool.jsonl"], pool, [3], [1.0], say=said.append)
        # A labelled source of weight 0 is never drawn from: still refused.
        with pytest.raises(ConfigError, match=key):
            check_reference_use(opd, ["pool.jsonl", "l.jsonl"], pool + labelled, [3, 2], [1.0, 0.0], say=said.append)
        check_reference_use(opd, ["l.jsonl"], labelled, [2], [1.0], say=said.append)  # all labelled: silent
        assert not said
        check_reference_use(opd, ["pool.jsonl", "l.jsonl"], pool + labelled, [3, 2], [1.0, 1.0], say=said.append)
        assert len(said) == 1 and f"{key}: 3 of 5 train clips have no transcript" in said.pop()
