"""Manifests, audio decoding, duration-bucketed sharded batching, collation."""

from train.data.audio import SKIP_REASONS, AudioLimits, AudioSkipped, SkipCounter, load_audio
from train.data.loader import Collator, UtteranceDataset, make_loader, read_sources
from train.data.manifest import ManifestError, Utterance, read_dataset, read_jsonl, read_manifest, write_jsonl
from train.data.sampler import DurationBatchSampler, SampleKey

__all__ = ["SKIP_REASONS", "AudioLimits", "AudioSkipped", "Collator", "DurationBatchSampler", "ManifestError",
           "SampleKey", "SkipCounter", "Utterance", "UtteranceDataset", "load_audio", "make_loader", "read_dataset",
           "read_jsonl", "read_manifest", "read_sources", "write_jsonl"]
