"""Corpus-level WER / CER with their parts, after normalisation; empty references dropped and counted."""

from __future__ import annotations

from typing import Sequence

import jiwer

from train.eval.normalizers import default_metric, scoring_units


def error_rates(refs: Sequence[str], hyps: Sequence[str], language: str | None, metric: str | None = None) -> dict:
    """{"metric", "rate", "errors", "ref_len", "substitutions", "deletions", "insertions", "dropped_empty_refs"}.

    `rate` is a fraction (0.05 = 5 %), summed over the corpus: total errors / total reference units.
    `metric` defaults to CER for zh/ja/ko and WER elsewhere; pass "wer" to get words where a
    character language writes spaces (Korean).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    metric = metric or default_metric(language)
    if metric not in ("wer", "cer"):
        raise ValueError(f"metric must be 'wer' or 'cer', got {metric!r}")
    kept_refs, kept_hyps, dropped = [], [], 0
    for ref, hyp in zip(refs, hyps):
        ref_units = scoring_units(ref or "", language, metric)
        if not ref_units:
            dropped += 1  # nothing to score against, as the open_asr_leaderboard does
            continue
        kept_refs.append(ref_units)
        kept_hyps.append(scoring_units(hyp or "", language, metric))
    result = {"metric": metric, "rate": 0.0, "errors": 0, "ref_len": 0, "substitutions": 0, "deletions": 0,
              "insertions": 0, "dropped_empty_refs": dropped}
    if not kept_refs:
        return result
    out = (jiwer.process_characters if metric == "cer" else jiwer.process_words)(kept_refs, kept_hyps)
    errors = out.substitutions + out.deletions + out.insertions
    ref_len = out.substitutions + out.deletions + out.hits
    result.update(rate=errors / ref_len, errors=errors, ref_len=ref_len, substitutions=out.substitutions,
                  deletions=out.deletions, insertions=out.insertions)
    return result
