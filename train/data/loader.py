"""From manifests to model batches: the dataset (decode one clip), the collator (a batch), the loader.

A batch (dict):
    input_features, input_features_mask   log-mel feats_B_M_F (zeros past each clip) and mask_B_F
    prompt_ids, prompt_mask               left-padded prompts with placeholders, for generation
    input_ids, attention_mask, labels     right-padded prompt + target, only if every clip has text
                                          (a supervised stage reads only labelled lines: read_labelled_sources)
    ids, languages, texts                 per clip (texts None where unlabelled)
    audio                                 raw 16 kHz clips, only with keep_audio (teachers' own front end)
    size, skipped                         clips in the batch; {reason: count} of clips dropped from it
    skipped_clips                         the dropped clips: [{id, audio, reason, detail}] (the run's skipped.jsonl)
    epoch, position                       where the batch sits in its rank's epoch (for resuming)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from train.config import ConfigError, DataConfig, SourceConfig
from train.data.audio import SAMPLE_RATE, AudioLimits, AudioSkipped, SkipCounter, load_audio
from train.data.manifest import Utterance, audio_name, check_unique_ids, read_manifest
from train.data.sampler import DurationBatchSampler, SampleKey
from train.models.processor import ArkProcessor


class UtteranceDataset(Dataset):
    """Decodes one utterance per key; an unusable clip comes back with its skip reason instead of audio."""

    def __init__(self, utterances: list[Utterance], limits: AudioLimits = AudioLimits()):
        self.utterances, self.limits = utterances, limits

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, key: SampleKey | int) -> dict:
        index = key.index if isinstance(key, SampleKey) else key
        utt = self.utterances[index]
        item = {"id": utt.id, "text": utt.text, "language": utt.language, "audio": None, "skip": None,
                "epoch": getattr(key, "epoch", None), "position": getattr(key, "position", None)}
        try:
            item["audio"] = load_audio(utt, self.limits)
        except AudioSkipped as skipped:
            item["skip"] = skipped.reason
            item["skipped_clip"] = {"id": utt.id, "audio": audio_name(utt.audio), "reason": skipped.reason,
                                    "detail": str(skipped).removeprefix(f"{skipped.reason}: ")}
        return item


@dataclass
class Collator:
    processor: ArkProcessor
    language_prompt: bool = False
    keep_audio: bool = False

    def __call__(self, items: list[dict]) -> dict:
        good = [i for i in items if i["audio"] is not None]
        batch = {"ids": [i["id"] for i in good], "languages": [i["language"] for i in good],
                 "texts": [i["text"] for i in good], "size": len(good),
                 "skipped": dict(SkipCounter(i["skip"] for i in items if i["skip"])),
                 "skipped_clips": [i["skipped_clip"] for i in items if i["skip"]],
                 "epoch": items[0]["epoch"] if items else None, "position": items[0]["position"] if items else None}
        if not good:
            return batch
        audios = [i["audio"] for i in good]
        lengths = [len(a) for a in audios]
        prompt_languages = batch["languages"] if self.language_prompt else [None] * len(good)
        feats_B_M_F, mask_B_F = self.processor.features(audios)
        prompts = self.processor.prompt_ids(lengths, prompt_languages)
        batch.update(input_features=feats_B_M_F, input_features_mask=mask_B_F,
                     prompt_ids=prompts["input_ids"], prompt_mask=prompts["attention_mask"])
        if all(batch["texts"]):
            batch.update(self.processor.prompt_target_ids(lengths, prompt_languages, batch["texts"]))
        if self.keep_audio:
            batch["audio"] = audios
        return batch


def read_sources(sources: list[SourceConfig]) -> tuple[list[Utterance], list[int], list[float]]:
    """All utterances of the sources, in order, with each source's size and weight. An id shared by two
    sources is a ManifestError (check_unique_ids): a run names its clips by id."""
    per_source = [read_manifest(s.path, language=s.language, text_column=s.text_column) for s in sources]
    check_unique_ids(zip([s.path for s in sources], per_source))
    return [u for utts in per_source for u in utts], [len(utts) for utts in per_source], [s.weight for s in sources]


def has_transcript(utt: Utterance) -> bool:
    """Whether a supervised stage can learn from the clip: a transcript with more than whitespace."""
    return bool(utt.text and utt.text.strip())


def read_labelled_sources(sources: list[SourceConfig], key: str = "data.train",
                          warn: Callable[[str], None] = print) -> tuple[list[Utterance], list[int], list[float]]:
    """read_sources for a supervised stage (SFT, TD): each source's lines without a transcript are
    dropped here, when the manifests are read, with one warning per source that had any. A batch
    whose clips do not all have text carries no labels (Collator), so one such line would cost every
    labelled clip of its batch its loss. Dropped before any sampler sees the list, and the same way
    on every read: a resumed run replays the same batches. No labelled line in the mix (sources of
    weight > 0): ConfigError, before anything is built."""
    utterances, sizes, weights = read_sources(sources)
    kept, kept_sizes, offset = [], [], 0
    for source, size in zip(sources, sizes):
        mine = utterances[offset:offset + size]
        offset += size
        labelled = [u for u in mine if has_transcript(u)]
        if len(labelled) < len(mine):
            warn(f"warning: {key}: {source.path}: {len(mine) - len(labelled)} of {len(mine)} lines have no "
                 "transcript: dropped from this supervised stage")
        kept.extend(labelled)
        kept_sizes.append(len(labelled))
    if not any(n and w > 0 for n, w in zip(kept_sizes, weights)):
        mixed = [s.path for s in sources if s.weight > 0]
        raise ConfigError(f"{key}: no line of {', '.join(mixed)} has a transcript"
                          f"{' (sources of weight 0 left out)' if len(mixed) < len(sources) else ''}, and a "
                          "supervised stage trains on transcripts only. For unlabelled audio: pseudo-label it "
                          "with train/transcribe.py and train on the manifest it writes (TD), or distill on it "
                          "with train/distill.py")
    return kept, kept_sizes, weights


def token_lengths(utterances: list[Utterance], processor: ArkProcessor, language_prompt: bool,
                  new_tokens: int | None = None, rows_per_clip: int = 1) -> list[int]:
    """Each clip's tokens in a batch, for `data.max_batch_tokens`: its rows (one, or n samples in OPD)
    x (prompt with its audio placeholders + new tokens). New tokens: `new_tokens` (a rollout's budget),
    or else the transcript's own tokens and EOS."""
    overhead: dict[str | None, int] = {}  # prompt tokens besides the placeholders, by prompt language
    if new_tokens is None:
        texts = [u.text or "" for u in utterances]
        transcript = [len(ids) + 1 for ids in processor.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    out = []
    for i, utt in enumerate(utterances):
        language = utt.language if language_prompt else None
        if language not in overhead:
            overhead[language] = len(processor.encode(processor.prompt(SAMPLE_RATE, language))) - \
                processor.audio_token_count(SAMPLE_RATE)
        prompt = overhead[language] + processor.audio_token_count(int(utt.duration * SAMPLE_RATE))
        out.append(rows_per_clip * (prompt + (new_tokens if new_tokens is not None else transcript[i])))
    return out


def make_loader(sources: list[SourceConfig], processor: ArkProcessor, data: DataConfig, seed: int = 0,
                num_replicas: int = 1, rank: int = 0, shuffle: bool = True, new_tokens: int | None = None,
                rows_per_clip: int = 1,
                read: tuple[list[Utterance], list[int], list[float]] | None = None) -> DataLoader:
    """A DataLoader over the sources: duration-bucketed batches, this rank's shard, clips decoded in
    workers. `new_tokens` and `rows_per_clip` size OPD's rollouts for `data.max_batch_tokens`.
    `read`: the sources' (utterances, sizes, weights) if already read (read_labelled_sources, for a
    supervised stage); else read_sources(sources)."""
    utterances, sizes, weights = read if read is not None else read_sources(sources)
    tokens = None
    if data.max_batch_tokens is not None:
        tokens = token_lengths(utterances, processor, data.language_prompt, new_tokens, rows_per_clip)
    sampler = DurationBatchSampler([u.duration for u in utterances], data.max_batch_seconds, data.max_batch_size,
                                   seed=seed, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                   source_sizes=sizes, source_weights=weights, token_lengths=tokens,
                                   max_batch_tokens=data.max_batch_tokens)
    dataset = UtteranceDataset(utterances, AudioLimits(data.min_seconds, data.max_seconds))
    collator = Collator(processor, language_prompt=data.language_prompt, keep_audio=data.keep_audio)
    # Its own generator: each new iterator (every epoch, and a resumed run's first) draws its workers' base
    # seed from it, not from the global torch RNG, which a checkpoint saves and a resume must find unchanged.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=data.num_workers,
                      generator=torch.Generator().manual_seed(seed))
