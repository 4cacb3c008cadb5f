"""GKD's lambda (Agarwal et al., 2024): which steps learn from the student's own rollouts and which from the
batch's reference transcripts, and the check that a run asking for references has some.

lambda is `opd.on_policy_fraction`; `opd.on_policy_ramp_steps` raises it linearly from 0 over the first
steps, so a run starts off-policy (on transcripts, the teacher's for an unlabelled pool) and ends on-policy.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from train.config import ConfigError, OPDConfig
from train.data.loader import has_transcript


def gkd_lambda(opd: OPDConfig, step: int) -> float:
    """The chance that update `step` (1-based) rolls out the student."""
    if opd.on_policy_ramp_steps and step < opd.on_policy_ramp_steps:
        return opd.on_policy_fraction * step / opd.on_policy_ramp_steps
    return opd.on_policy_fraction


def gkd_coin(opd: OPDConfig, seed: int, step: int) -> bool:
    """Whether update `step` learns from the student's own rollouts. Drawn from the seed and the step
    alone, so every rank takes the same side (under ZeRO-3 every forward is a collective, and ranks that
    ran different numbers of forwards would wait on each other for ever) and a resumed run draws the same."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + 17)
    return torch.rand((), generator=generator).item() < gkd_lambda(opd, step)


def check_reference_use(opd: OPDConfig, paths: Sequence[str], utterances: Sequence, sizes: Sequence[int],
                        weights: Sequence[float], say: Callable[[str], None] = print) -> None:
    """`opd.ce_weight` and off-policy steps (`opd.on_policy_fraction` < 1, or a ramp from 0:
    `opd.on_policy_ramp_steps`) read the batch's transcripts. With
    none among the train sources drawn from (weight > 0) they would do nothing: ConfigError, before any
    compute. With some missing, say how many: a batch holding one clip without a transcript has no
    labels, so its CE term is 0 and an off-policy step rolls it out on-policy (logged as `on_policy`)."""
    wants = [key for key, on in (("opd.ce_weight", opd.ce_weight > 0),
                                 ("opd.on_policy_fraction", opd.on_policy_fraction < 1),
                                 ("opd.on_policy_ramp_steps", opd.on_policy_ramp_steps > 0)) if on]
    if not wants:
        return
    total = labelled = 0
    offset = 0
    for size, weight in zip(sizes, weights):
        if weight > 0:
            total += size
            labelled += sum(has_transcript(u) for u in utterances[offset:offset + size])
        offset += size
    drawn = [p for p, w in zip(paths, weights) if w > 0]
    if not labelled:
        raise ConfigError(f"{' and '.join(wants)}: no clip of data.train ({', '.join(drawn)}) has a transcript, "
                          "so it would have no effect. Point data.train at a manifest with a `text` field (for "
                          "an unlabelled pool, the teacher's transcripts from train/transcribe.py), or leave "
                          f"{' and '.join(wants)} at the default.")
    if labelled < total:
        say(f"{' and '.join(wants)}: {total - labelled} of {total} train clips have no transcript; a batch holding "
            "one has no labels, so it adds no CE term and rolls out on-policy even on an off-policy step")
