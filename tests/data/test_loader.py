"""Dataset + collator + DataLoader: batches as the model needs them, skips counted, exact resume."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from tests.data.audio_files import broken_files, sine, write
from train.config import DataConfig, SourceConfig
from train.data import SKIP_REASONS, make_loader
from train.models.processor import ArkProcessor, make_feature_extractor


@pytest.fixture(scope="module")
def processor(tokenizer):
    return ArkProcessor(tokenizer, make_feature_extractor(80))


@pytest.fixture()
def corpus(tmp_path):
    """20 good labelled clips (0.5-4 s), one broken file per skip reason, and an unlabelled manifest."""
    rows = []
    for i in range(20):
        seconds = 0.5 + (i % 8) * 0.5
        write(tmp_path / "a" / f"{i}.flac", sine(150 + 40 * i, seconds))
        rows.append({"id": f"good{i}", "audio": f"a/{i}.flac", "text": f"wort {i}", "language": "de",
                     "duration": seconds})
    for reason, path in broken_files(tmp_path / "bad").items():
        rows.append({"id": f"bad-{reason}", "audio": str(path), "text": "x", "language": "de", "duration": 1.0})
    labelled = tmp_path / "train.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    unlabelled = tmp_path / "unlabelled.jsonl"
    # The same clips again, unlabelled, under their own ids (ids are unique across a run's sources).
    unlabelled.write_text("".join(json.dumps({**{k: v for k, v in r.items() if k != "text"}, "id": f"pool-{r['id']}"})
                                  + "\n" for r in rows[:6]))
    return labelled, unlabelled


def _data(**kw):
    return DataConfig(**{"max_batch_seconds": 8.0, "max_seconds": 30.0, "num_workers": 2, **kw})


def test_batches_with_workers_count_every_skip(corpus, processor):
    labelled, _ = corpus
    loader = make_loader([SourceConfig(path=str(labelled))], processor, _data(), seed=0)
    batches = list(loader)
    skipped = {}
    for b in batches:
        for reason, n in b["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert skipped == {reason: 1 for reason in SKIP_REASONS}
    ids = list(itertools.chain(*(b["ids"] for b in batches)))
    assert sorted(ids) == sorted(f"good{i}" for i in range(20))
    for b in batches:
        if not b["size"]:
            continue
        assert b["input_features"].shape[:2] == (b["size"], 80)
        frames = b["input_features_mask"].sum(-1)
        for row, n_frames in zip(b["prompt_ids"], frames):
            n = processor.audio_token_count(int(n_frames) * 160)
            assert int((row == processor.audio_token_id).sum()) == n
        assert b["labels"].shape == b["input_ids"].shape
        decoded = [processor.tokenizer.decode(lab[lab != -100]) for lab in b["labels"]]
        assert decoded == [t + "<|im_end|>" for t in b["texts"]]
        assert "audio" not in b


def test_unlabelled_batches_have_prompts_but_no_targets(corpus, processor):
    _, unlabelled = corpus
    loader = make_loader([SourceConfig(path=str(unlabelled))], processor, _data(num_workers=0, keep_audio=True,
                                                                                language_prompt=True))
    for b in loader:
        assert "labels" not in b and b["texts"] == [None] * b["size"]
        assert all(isinstance(a, type(b["audio"][0])) and a.ndim == 1 for a in b["audio"])
        text = processor.tokenizer.decode(b["prompt_ids"][0])
        assert "Please transcribe this audio in German." in text


def test_mixed_sources_with_weights(corpus, processor):
    labelled, unlabelled = corpus
    loader = make_loader([SourceConfig(path=str(labelled), weight=1.0), SourceConfig(path=str(unlabelled), weight=2.0)],
                         processor, _data(num_workers=0))
    ids = list(itertools.chain(*(b["ids"] for b in loader)))
    assert ids.count("good0") == 1 and ids.count("pool-good0") == 2  # the unlabelled source weighs 2
    assert ids.count("good10") == 1


def test_resume_mid_epoch_through_the_loader(corpus, processor):
    labelled, _ = corpus
    cfg = _data(max_batch_seconds=4.0)
    full = make_loader([SourceConfig(path=str(labelled))], processor, cfg, seed=7, num_replicas=2, rank=0)
    expected = [b["ids"] for b in full] + [b["ids"] for b in full]

    first = make_loader([SourceConfig(path=str(labelled))], processor, cfg, seed=7, num_replicas=2, rank=0)
    seen = []
    for b in first:
        seen.append(b["ids"])
        if len(seen) == 3:
            state = first.batch_sampler.state_dict(after=(b["epoch"], b["position"]))
            break
    resumed = make_loader([SourceConfig(path=str(labelled))], processor, cfg, seed=7, num_replicas=2, rank=0)
    resumed.batch_sampler.load_state_dict(state)
    rest = [b["ids"] for b in resumed] + [b["ids"] for b in resumed]
    assert seen + rest[: len(expected) - 3] == expected


def test_batch_features_match_the_clips_alone(corpus, processor):
    labelled, _ = corpus
    loader = make_loader([SourceConfig(path=str(labelled))], processor, _data(num_workers=0))
    b = next(iter(b for b in loader if b["size"] > 1))
    from train.data.manifest import read_manifest
    from train.data.audio import load_audio

    by_id = {u.id: u for u in read_manifest(labelled)}
    for i, uid in enumerate(b["ids"]):
        feats, mask = processor.features([load_audio(by_id[uid])])
        n = int(mask.sum())
        torch.testing.assert_close(b["input_features"][i, :, :n], feats[0, :, :n])
        assert int(b["input_features_mask"][i].sum()) == n


def test_token_lengths_count_the_prompt_and_what_is_generated_or_taught(corpus, processor):
    from train.data.loader import read_sources, token_lengths

    utterances, _, _ = read_sources([SourceConfig(path=str(corpus[0]))])
    utterances = [u for u in utterances if u.id.startswith("good")]
    prompts = [len(processor.encode(processor.prompt(int(u.duration * 16000)))) for u in utterances]
    rollouts = token_lengths(utterances, processor, language_prompt=False, new_tokens=256, rows_per_clip=2)
    assert rollouts == [2 * (p + 256) for p in prompts]
    taught = token_lengths(utterances, processor, language_prompt=False)
    assert taught == [p + len(processor.encode(u.text)) + 1 for p, u in zip(prompts, utterances)]  # + EOS
    tagged = token_lengths(utterances, processor, language_prompt=True)
    assert all(t > u for t, u in zip(tagged, taught))  # "... in German." is longer


def test_a_token_budget_shapes_the_batches(corpus, processor):
    loose = make_loader([SourceConfig(path=str(corpus[0]))], processor, _data(num_workers=0, max_batch_seconds=60.0))
    tight = make_loader([SourceConfig(path=str(corpus[0]))], processor,
                        _data(num_workers=0, max_batch_seconds=60.0, max_batch_tokens=200), new_tokens=64)
    assert max(len(b) for b in loose.batch_sampler) > max(len(b) for b in tight.batch_sampler)
    for batch in tight:
        if batch["size"] > 1:  # count x (longest prompt + 64 new tokens) within 200
            assert batch["size"] * (batch["prompt_ids"].shape[1] + 64) <= 200


def _with_blank_transcripts(path, blanks: dict[str, str]):
    """The manifest's lines plus a copy of its first line for each id in `blanks`, with that text."""
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    extra = [json.dumps({**first, "id": uid, "text": text}) for uid, text in blanks.items()]
    mixed = path.with_name("mixed.jsonl")
    mixed.write_text("\n".join(lines + extra) + "\n")
    return mixed


def test_a_supervised_stage_drops_unlabelled_lines_when_reading_them(corpus, processor, capsys):
    from train.data.loader import read_labelled_sources

    labelled, unlabelled = corpus
    mixed = _with_blank_transcripts(labelled, {"empty": "", "blank": "  "})
    n_lines = len(mixed.read_text().splitlines())
    sources = [SourceConfig(path=str(mixed)), SourceConfig(path=str(unlabelled), weight=2.0)]
    read = read_labelled_sources(sources)
    utterances, sizes, weights = read
    out = capsys.readouterr().out.splitlines()
    dropped = "lines have no transcript: dropped from this supervised stage"
    assert out == [f"warning: data.train: {mixed}: 2 of {n_lines} {dropped}",
                   f"warning: data.train: {unlabelled}: 6 of 6 {dropped}"]
    assert sizes == [n_lines - 2, 0] and weights == [1.0, 2.0] and len(utterances) == n_lines - 2
    assert all(u.text and u.text.strip() for u in utterances)
    assert read_labelled_sources(sources) == read  # the same lines on every read: a resumed run's batches
    loader = make_loader(sources, processor, _data(num_workers=0), read=read)
    batches = [b for b in loader if b["size"]]
    assert batches and all("labels" in b for b in batches)
    assert not {"empty", "blank"} & set(itertools.chain(*(b["ids"] for b in batches)))


def test_a_supervised_stage_without_transcripts_fails_naming_the_manifests(corpus):
    from train.config import ConfigError
    from train.data.loader import read_labelled_sources

    labelled, unlabelled = corpus
    with pytest.raises(ConfigError, match=f"data.train: no line of {unlabelled} has a transcript.*transcribe.py"):
        read_labelled_sources([SourceConfig(path=str(unlabelled))], warn=lambda _: None)
    with pytest.raises(ConfigError, match="distill.py"):  # the labelled source is weighted out of the mix
        read_labelled_sources([SourceConfig(path=str(labelled), weight=0.0), SourceConfig(path=str(unlabelled))],
                              warn=lambda _: None)
