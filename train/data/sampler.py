"""Duration-bucketed, seeded, sharded, resumable batching.

Each epoch's plan is a pure function of (seed, epoch, durations, settings):
  1. the epoch's utterances: each source's utterances `weight` times (2 = twice, 0.5 = a random half);
  2. shuffled, cut into pools of `pool_batches` batches' worth, each pool sorted by duration, and cut
     into batches whose padded size (count x longest clip) stays within `max_batch_seconds`, whose
     padded tokens (count x longest token length, when `token_lengths` are given) stay within
     `max_batch_tokens`, and with at most `max_batch_size` clips: similar lengths, little padding;
  3. batches shuffled, padded to a multiple of the number of ranks by repeating the first ones
     (nothing dropped), and dealt round-robin: every rank gets the same number of batches.
A batch is a list of `SampleKey(index, epoch, position)`; the position lets a run checkpoint
exactly where it is even while the loader prefetches ahead. Resuming rebuilds the epoch's plan
from the seed (arithmetic on the durations, no audio touched) and starts at that position: the
cost does not grow with how far into the epoch the run was.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np


class SampleKey(NamedTuple):
    index: int  # into the dataset's utterance list
    epoch: int
    position: int  # this batch's position in the rank's epoch


class DurationBatchSampler:
    def __init__(self, durations: Sequence[float], max_batch_seconds: float, max_batch_size: int | None = None,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 source_sizes: Sequence[int] | None = None, source_weights: Sequence[float] | None = None,
                 pool_batches: int = 50, token_lengths: Sequence[int] | None = None,
                 max_batch_tokens: int | None = None):
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.durations = np.asarray(durations, dtype=np.float64)
        if len(self.durations) == 0:
            raise ValueError("no utterances to batch")
        if (max_batch_tokens is None) != (token_lengths is None):
            raise ValueError("max_batch_tokens and token_lengths go together")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.tokens = np.asarray(token_lengths, dtype=np.int64) if token_lengths is not None else None
        if self.tokens is not None and len(self.tokens) != len(self.durations):
            raise ValueError(f"{len(self.tokens)} token lengths for {len(self.durations)} utterances")
        self.max_batch_tokens = max_batch_tokens
        self.source_sizes = list(source_sizes) if source_sizes is not None else [len(self.durations)]
        self.source_weights = list(source_weights) if source_weights is not None else [1.0] * len(self.source_sizes)
        if sum(self.source_sizes) != len(self.durations) or len(self.source_weights) != len(self.source_sizes):
            raise ValueError("source_sizes must add up to len(durations), with one weight per source")
        if any(w < 0 for w in self.source_weights) or not any(w > 0 for w in self.source_weights):
            raise ValueError(f"source weights must be >= 0 and not all 0, got {self.source_weights}")
        self.max_batch_seconds, self.max_batch_size = float(max_batch_seconds), max_batch_size
        self.seed, self.num_replicas, self.rank, self.shuffle = seed, num_replicas, rank, shuffle
        self.pool_batches = pool_batches
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    # ---- the plan ------------------------------------------------------------------------
    def _rng(self, epoch: int, stage: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, stage])

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The epoch's utterance indices with source weights applied, shuffled."""
        rng = self._rng(epoch, 0)
        parts, offset = [], 0
        for size, weight in zip(self.source_sizes, self.source_weights):
            idx = np.arange(offset, offset + size)
            whole, frac = divmod(weight, 1.0)
            chosen = [idx] * int(whole)
            extra = int(round(frac * size))
            if extra:
                chosen.append(rng.choice(idx, size=extra, replace=False))
            parts.extend(chosen)
            offset += size
        indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return rng.permutation(indices) if self.shuffle else np.sort(indices, kind="stable")

    def _batches(self, indices: np.ndarray) -> list[list[int]]:
        """Cut duration-sorted pools into padding-aware batches."""
        mean = max(float(self.durations[indices].mean()), 1e-3) if len(indices) else 1.0
        per_batch = max(1, int(self.max_batch_seconds // mean))
        if self.max_batch_size:
            per_batch = min(per_batch, self.max_batch_size)
        if self.tokens is not None and len(indices):
            per_batch = min(per_batch, max(1, int(self.max_batch_tokens // max(float(self.tokens[indices].mean()), 1))))
        pool = max(1, self.pool_batches * per_batch)
        tokens = self.tokens if self.tokens is not None else np.zeros(len(self.durations), dtype=np.int64)
        token_cap = self.max_batch_tokens if self.max_batch_tokens is not None else float("inf")
        batches = []
        for start in range(0, len(indices), pool):
            chunk = indices[start:start + pool]
            chunk = chunk[np.argsort(self.durations[chunk], kind="stable")]
            current, longest, longest_tokens = [], 0.0, 0
            for i in chunk.tolist():
                d, t = self.durations[i], int(tokens[i])
                full = self.max_batch_size is not None and len(current) >= self.max_batch_size
                grown = len(current) + 1
                if current and (full or grown * max(longest, d) > self.max_batch_seconds
                                or grown * max(longest_tokens, t) > token_cap):
                    batches.append(current)
                    current, longest, longest_tokens = [], 0.0, 0
                current.append(i)
                longest, longest_tokens = max(longest, d), max(longest_tokens, t)
            if current:
                batches.append(current)
        return batches

    def plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches (utterance indices) for `epoch`."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self._batches(self.epoch_indices(epoch))
        if self.shuffle:
            order = self._rng(epoch, 1).permutation(len(batches))
            batches = [batches[i] for i in order]
        short = (-len(batches)) % self.num_replicas
        batches = batches + [batches[i % len(batches)] for i in range(short)]
        mine = batches[self.rank::self.num_replicas]
        self._cache = (epoch, mine)
        return mine

    # ---- iteration and state -------------------------------------------------------------
    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (from the resume position on)."""
        return len(self.plan(self.epoch)) - self.start

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch, start = self.epoch, self.start
        batches = self.plan(epoch)
        # Advance before yielding: the loader may run ahead; the batches carry their own position.
        self.epoch, self.start = epoch + 1, 0
        for position in range(start, len(batches)):
            yield [SampleKey(i, epoch, position) for i in batches[position]]

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def state_dict(self, after: tuple[int, int] | None = None) -> dict:
        """Where to resume: after the batch at (epoch, position), the last one the run finished
        (a batch carries both); without it, where the sampler itself stands."""
        epoch, start = (after[0], after[1] + 1) if after is not None else (self.epoch, self.start)
        return {"epoch": epoch, "start": start, "seed": self.seed, "num_replicas": self.num_replicas,
                "num_utterances": len(self.durations), "max_batch_seconds": self.max_batch_seconds,
                "max_batch_size": self.max_batch_size, "max_batch_tokens": self.max_batch_tokens}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_replicas", "num_utterances", "max_batch_seconds", "max_batch_size",
                    "max_batch_tokens"):
            mine = len(self.durations) if key == "num_utterances" else getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(f"sampler state was saved with {key}={state.get(key)}, this run has {mine}: "
                                 "the same batches cannot be replayed")
        self.epoch, self.start = state["epoch"], state["start"]
        if self.start >= len(self.plan(self.epoch)):
            self.epoch, self.start = self.epoch + 1, 0
