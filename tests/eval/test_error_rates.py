"""Normalisers and corpus error rates: hand-computed cases in several languages, and a brute-force reference."""

from __future__ import annotations

import random

import pytest

from train.eval import error_rates, normalize


def _edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Plain Levenshtein distance by dynamic programming (the independent reference)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize("text, language, expected", [
    ("Hello, World! It's raining.", "en", "hello world it is raining"),
    ("Mr. Smith colour", "en", "mister smith color"),
    ("Grüße aus Köln – schön!", "de", "grüße aus köln schön"),
    ("Ça va? Très bien.", "fr", "ça va très bien"),
    ("Żółć, gęślą jaźń [noise] (laughs)", "pl", "żółć gęślą jaźń"),
    ("你好，世界！", "zh", "你好 世界"),
    ("안녕하세요, 세계!", "ko", "안녕하세요 세계"),
])
def test_normalisers(text, language, expected):
    assert normalize(text, language) == expected


def test_english_wer_by_hand():
    # One insertion at the start, one deletion in the middle, one substitution at the end: the only
    # alignment of cost 3 (shifting words instead would cost more).
    out = error_rates(["Alpha bravo charlie delta echo foxtrot golf hotel."],
                      ["xray alpha bravo charlie echo foxtrot golf yankee"], "en")
    assert out == {"metric": "wer", "rate": 3 / 8, "errors": 3, "ref_len": 8, "substitutions": 1,
                   "deletions": 1, "insertions": 1, "dropped_empty_refs": 0}


def test_numbers_and_punctuation_do_not_count_in_english():
    out = error_rates(["Twenty five dollars."], ["$25"], "en")
    assert out["errors"] == 0


def test_diacritics_count_outside_english():
    out = error_rates(["Grüße aus Köln"], ["grusse aus koln"], "de")
    assert (out["substitutions"], out["ref_len"]) == (2, 3)


def test_cjk_is_scored_in_characters_without_spaces():
    out = error_rates(["我 爱 北京 天安门。"], ["我爱北京天安们"], "zh")
    assert out["metric"] == "cer" and (out["errors"], out["ref_len"]) == (1, 7)
    ja = error_rates(["こんにちは、世界"], ["こんばんは世界"], "ja")
    assert (ja["metric"], ja["errors"], ja["ref_len"]) == ("cer", 2, 7)
    ko = error_rates(["안녕하세요 세계"], ["안녕하세요 세게"], "ko")
    assert (ko["metric"], ko["errors"], ko["ref_len"]) == ("cer", 1, 7)
    ko_words = error_rates(["안녕하세요 세계"], ["안녕하세요 세게"], "ko", metric="wer")
    assert (ko_words["errors"], ko_words["ref_len"]) == (1, 2)


def test_corpus_rate_is_errors_over_reference_length_not_mean_of_rates():
    out = error_rates(["a b c d e f g h i j", "x"], ["a b c d e f g h i j", "y"], "en")
    assert out["rate"] == pytest.approx(1 / 11)  # a mean of per-utterance rates would give 0.5


def test_empty_references_are_dropped_and_counted():
    out = error_rates(["", "[noise]", "hello"], ["something", "x", "hello"], "en")
    assert out["dropped_empty_refs"] == 2 and out["ref_len"] == 1 and out["errors"] == 0
    none_left = error_rates([""], ["x"], "en")
    assert none_left["rate"] == 0.0 and none_left["dropped_empty_refs"] == 1


def test_empty_hypothesis_is_all_deletions():
    out = error_rates(["eins zwei drei"], [""], "de")
    assert (out["deletions"], out["errors"], out["rate"]) == (3, 3, 1.0)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"], "en")


@pytest.mark.parametrize("language, metric", [("de", "wer"), ("zh", "cer"), ("pl", "cer")])
def test_random_pairs_against_brute_force(language, metric):
    rng = random.Random(7)
    alphabet = {"de": ["haus", "maus", "baum", "raum", "tür"], "pl": ["żółw", "koń", "łąka", "ćma"],
                "zh": ["你", "好", "世", "界", "我"]}[language]
    refs, hyps = [], []
    for _ in range(200):
        ref = [rng.choice(alphabet) for _ in range(rng.randint(1, 8))]
        hyp = [w for w in ref if rng.random() > 0.2]
        hyp = [rng.choice(alphabet) if rng.random() < 0.2 else w for w in hyp]
        hyp += [rng.choice(alphabet) for _ in range(rng.randint(0, 2))]
        sep = "" if language == "zh" else " "
        refs.append(sep.join(ref))
        hyps.append(sep.join(hyp))
    out = error_rates(refs, hyps, language, metric=metric)
    split = (lambda s: list(s.replace(" ", ""))) if metric == "cer" else str.split
    errors = sum(_edit_distance(split(r), split(h)) for r, h in zip(refs, hyps))
    ref_len = sum(len(split(r)) for r in refs)
    assert (out["errors"], out["ref_len"]) == (errors, ref_len)
    assert out["rate"] == pytest.approx(errors / ref_len)
    assert out["substitutions"] + out["deletions"] + out["insertions"] == errors
