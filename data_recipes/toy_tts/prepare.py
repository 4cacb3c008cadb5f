"""Synthesise the bundled toy speech corpus offline with espeak-ng: 19 languages, random word sequences.

    python data_recipes/toy_tts/prepare.py --out data/toy_tts --seed 0
    python data_recipes/toy_tts/prepare.py --out DIR --seed N [--languages zh,en,...] \
        [--train-per-language 600] [--unlabelled-per-language 100] [--dev-per-language 25] \
        [--test-per-language 25] [--train-scale zh=4,ja=4] [--labelled-share 0.5] [--pool-only] \
        [--workers 2] [--check]

Most utterances are random sequences of 2-6 words drawn from a small per-language lexicon (the
300 most frequent words), so a model cannot pass by memorising text; ~10% are real sentences
(Django's translated UI strings). Chinese and Japanese get more training utterances than the
rest (--train-scale, default x4 each; see TRAIN_SCALE). Each utterance gets its own espeak-ng
voice variant, speaking rate and pitch. Writes DIR/{train,unlabelled,dev,test}.jsonl, audio under
DIR/audio/<split>/<lang>/<id>.flac (16 kHz mono FLAC) and DIR/BUILD.json, whose done marker is
written last: a second run with the same arguments returns at once, a killed build is redone.
Same seed and arguments -> byte-identical manifests and identical audio. See README.md.

For the paper's table, the training audio is also split by position within each language (the
plan is already in random order): DIR/train_labelled.jsonl holds the first --labelled-share of
each language's training utterances, as in train.jsonl; DIR/train_pool.jsonl holds the rest and
all of unlabelled.jsonl, with their transcripts under `reference_text` (as unlabelled.jsonl has
them), so OPD and pseudo-labelling read no labels and a report can still score them.
--pool-only synthesises no audio for the labelled share (OPD from the shipped base student reads
none: `make demo`) and writes neither train.jsonl nor train_labelled.jsonl; a later build without
it synthesises only the labelled share, reusing the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `data_recipes` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.toy_tts import lexicon as lx  # noqa: E402
from data_recipes.toy_tts import synth  # noqa: E402
from train.cli import HelpFormatter  # noqa: E402

RECIPE = "toy_tts"
RECIPE_VERSION = 3  # bump when a change here changes the corpus for the same arguments
SPLITS = ("train", "unlabelled", "dev", "test")
POOL = ("unlabelled", "dev", "test", "train_pool")  # the manifests a --pool-only build writes
MANIFESTS = SPLITS + ("train_labelled", "train_pool")
LABELLED_SHARE = 0.5  # of each language's training utterances: train_labelled.jsonl
EVAL_SPLITS = ("dev", "test")  # drawn from the reserved sentence fifth (lexicon.is_eval_sentence)
DRAW_ORDER = ("test", "dev", "train", "unlabelled")  # test first: it does not depend on the other sizes
DEFAULT_SIZES = {"train": 600, "unlabelled": 100, "dev": 25, "test": 25}  # utterances per language
# Training utterances per language = train size x this factor. With 600 clips (432 distinct
# characters, ~5 clips each) the toy teacher was at 72% dev CER in Chinese after 4,000 updates,
# its errors acoustic (5 of 115 substituted characters share the reference's syllable), while
# every alphabetic language and Korean were at 3-23%; Japanese (kana) was at 38%, and still at
# 35% with x2. It was short of updates, not of information in the audio: 400 more updates on
# Japanese alone took that teacher's ja dev CER from 35% to 18%. So both get x4 (with x4 and
# 5,200 updates the teacher is at 20% test CER in Japanese); nothing else changes.
TRAIN_SCALE = {"zh": 4, "ja": 4}
SENTENCE_SHARE = 0.1  # share of real sentences in each split; the rest are random word sequences
WORDS_PER_UTTERANCE = (2, 6)
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")  # "" = the voice's own
RATE_WPM = (130, 200)
PITCH = (30, 70)
PACKAGES = ("wordfreq", "babel", "django", "soxr", "soundfile", "numpy")


@dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    language: str
    text: str
    spoken: str
    kind: str  # "words" | "sentence"
    voice: str
    rate: int
    pitch: int

    @property
    def audio(self) -> str:  # relative to the manifest's folder
        return f"audio/{self.split}/{self.language}/{self.id}.flac"


# ---------------------------------------------------------------- drawing the texts


def plan(
    languages: list[str],
    sizes: dict[str, int],
    seed: int,
    lexicon_size: int = lx.LEXICON_SIZE,
    train_scale: dict[str, int] | None = None,
) -> list[Utterance]:
    """Every utterance of the build, in manifest order (split, then language, then index).
    A language's training size is sizes["train"] x train_scale.get(language, 1).

    Each (language, split) has its own RNG seeded from (seed, language, split), and the splits are
    drawn test, dev, train, unlabelled: the test set depends only on the seed and
    --test-per-language (not on the other sizes or languages), dev only on those and its own size.
    Texts never repeat within a language (a repeat is redrawn), so no dev/test text occurs in
    train or unlabelled."""
    seen: set[tuple[str, str]] = set()
    by_split: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for lang in languages:
        words = lx.lexicon(lang, lexicon_size)
        if len(words) < WORDS_PER_UTTERANCE[1]:
            raise RuntimeError(f"{lang}: lexicon has only {len(words)} words")
        sentences = lx.sentences(lang)
        pools = {
            True: [e for e in sentences if lx.is_eval_sentence(lang, e.text)],
            False: [e for e in sentences if not lx.is_eval_sentence(lang, e.text)],
        }
        pool_rng = random.Random(f"{RECIPE}/{seed}/{lang}/sentences")
        for pool in pools.values():
            pool_rng.shuffle(pool)
        joiner = "" if lang in lx.UNSPACED else " "
        for split in DRAW_ORDER:
            rng = random.Random(f"{RECIPE}/{seed}/{lang}/{split}")
            n = sizes[split] * ((train_scale or {}).get(lang, 1) if split == "train" else 1)
            pool = pools[split in EVAL_SPLITS]
            n_sent = min(round(SENTENCE_SHARE * n), len(pool))
            kinds = ["sentence"] * n_sent + ["words"] * (n - n_sent)
            rng.shuffle(kinds)
            for i, kind in enumerate(kinds):
                if kind == "sentence":
                    while pool and (lang, pool[-1].text) in seen:  # a word sequence may equal a sentence
                        pool.pop()
                    if not pool:
                        kind = "words"
                if kind == "sentence":
                    entry = pool.pop()
                    text, spoken = entry.text, entry.spoken
                else:
                    for _ in range(10_000):
                        k = rng.randint(*WORDS_PER_UTTERANCE)
                        picked = rng.sample(words, k)
                        text = joiner.join(w.text for w in picked)
                        spoken = " ".join(w.spoken for w in picked)
                        if (lang, text) not in seen:
                            break
                    else:
                        raise RuntimeError(f"{lang}: cannot draw a new word sequence; lexicon too small")
                seen.add((lang, text))
                variant = rng.choice(VARIANTS)
                by_split[split].append(
                    Utterance(
                        id=f"toy-{lang}-{split}-{i:06d}",
                        split=split,
                        language=lang,
                        text=text,
                        spoken=spoken,
                        kind=kind,
                        voice=lx.VOICES[lang] + (f"+{variant}" if variant else ""),
                        rate=rng.randint(*RATE_WPM),
                        pitch=rng.randint(*PITCH),
                    )
                )
    return [u for s in SPLITS for u in by_split[s]]


def load_texts(languages: list[str], lexicon_size: int, workers: int) -> None:
    """Build the (cached) lexicons and sentence pools, several languages at a time: most of the
    time goes to the espeak-ng checks, which run as subprocesses. The results do not depend on
    the order, so `plan` stays deterministic."""
    from concurrent.futures import ThreadPoolExecutor

    def one(lang: str) -> None:
        lx.lexicon(lang, lexicon_size)
        lx.sentences(lang)

    lx.django_word_counts("en")  # shared by several languages: compute it once, up front
    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, languages))


def labelled_ids(utterances: list[Utterance], share: float) -> set[str]:
    """The first `share` of each language's training utterances (rounded): train_labelled.jsonl."""
    by_language: dict[str, list[str]] = {}
    for u in utterances:
        if u.split == "train":
            by_language.setdefault(u.language, []).append(u.id)
    return {i for ids in by_language.values() for i in ids[: round(len(ids) * share)]}


def manifest_row(u: Utterance, duration: float, labelled: bool = True) -> dict:
    """One manifest line. The unlabelled split, and the training pool (labelled=False), carry their
    transcript as `reference_text`, for analysis only: they are used without labels."""
    hidden = u.split == "unlabelled" or not labelled
    row: dict = {"id": u.id, "audio": u.audio}
    if not hidden:
        row["text"] = u.text
    row.update(language=u.language, duration=round(duration, 3), task="asr")
    if hidden:
        row["reference_text"] = u.text
    row.update(kind=u.kind, voice=u.voice, rate=u.rate, pitch=u.pitch)
    return row


def manifests(utterances: list[Utterance], durations: dict[str, float], labelled: set[str],
              pool_only: bool) -> dict[str, list[dict]]:
    """Every manifest's lines, in plan order; without train and train_labelled for --pool-only."""
    rows: dict[str, list[dict]] = {name: [] for name in (POOL if pool_only else MANIFESTS)}
    for u in utterances:
        if u.split != "train":
            rows[u.split].append(manifest_row(u, durations[u.id]))
        elif u.id not in labelled:
            rows["train_pool"].append(manifest_row(u, durations[u.id], labelled=False))
        if u.split == "train" and not pool_only:
            rows["train"].append(manifest_row(u, durations[u.id]))
            if u.id in labelled:
                rows["train_labelled"].append(rows["train"][-1])
    rows["train_pool"] += rows["unlabelled"]
    return rows


# ---------------------------------------------------------------- build bookkeeping


def recipe_digest() -> str:
    """sha256 of this recipe's code, so an edit to it invalidates a cached build."""
    h = hashlib.sha256()
    for module in (lx, synth, sys.modules[__name__]):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    found = {"espeak-ng": synth.espeak_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _finished_build(out: Path, config: dict) -> dict | None:
    """out/BUILD.json if it marks a complete build with these arguments, else None."""
    try:
        done = json.loads((out / "BUILD.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if done.get("complete") is not True or any(done.get(k) != v for k, v in config.items()):
        return None
    return done


def _is_up_to_date(out: Path, config: dict, pool_only: bool) -> bool:
    """A complete build with these arguments, with the labelled share's audio unless pool_only, and
    every manifest it needs on disk with all its audio."""
    done = _finished_build(out, config)
    if done is None or not (pool_only or done.get("labelled_audio") is True):
        return False
    for name in POOL if pool_only else MANIFESTS:
        manifest = out / f"{name}.jsonl"
        if not manifest.is_file():
            return False
        with manifest.open(encoding="utf-8") as f:
            if not all((out / json.loads(line)["audio"]).is_file() for line in f):
                return False
    return True


def _reusable_durations(out: Path, config: dict) -> dict[str, float]:
    """Utterance id -> duration for the audio of a complete earlier build with these arguments (a
    --pool-only one, when the labelled share is now asked for); empty when there is none."""
    if _finished_build(out, config) is None:
        return {}
    found = {}
    for name in MANIFESTS:
        if (out / f"{name}.jsonl").is_file():
            for row in _read_rows(out, [name])[name]:
                if (out / row["audio"]).is_file():
                    found[row["id"]] = row["duration"]
    return found


def _summary(rows: dict[str, list[dict]], languages: list[str]) -> str:
    lines = [f"{'lang':<6}" + "".join(f"{s:>22}" for s in rows)]
    for lang in languages + ["all"]:
        cells = []
        for name in rows:
            sel = [r for r in rows[name] if lang in ("all", r["language"])]
            hours = sum(r["duration"] for r in sel) / 3600
            cells.append(f"{len(sel):>9} utt {hours:>7.3f} h")
        lines.append(f"{lang:<6}" + "".join(cells))
    return "\n".join(lines)


def _read_rows(out: Path, names: tuple[str, ...] | list[str]) -> dict[str, list[dict]]:
    rows = {}
    for name in names:
        with (out / f"{name}.jsonl").open(encoding="utf-8") as f:
            rows[name] = [json.loads(line) for line in f]
    return rows


def _synthesise_all(jobs: list[synth.Job], workers: int) -> list[float]:
    durations: list[float] = []
    step = max(1, len(jobs) // 10)
    start = time.time()

    def progress() -> None:
        if len(durations) % step == 0 or len(durations) == len(jobs):
            rate = len(durations) / max(time.time() - start, 1e-9)
            print(f"  {len(durations)}/{len(jobs)} utterances ({rate:.0f}/s)", flush=True)

    if workers <= 1:
        for job in jobs:
            durations.append(synth.synthesise(job))
            progress()
        return durations
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: workers start clean (no copy of a parent that may hold torch threads); they get
    # Job dataclasses and return floats only.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=synth.die_with_parent) as pool:
        for duration in pool.map(synth.synthesise, jobs, chunksize=16):
            durations.append(duration)
            progress()
    return durations


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="corpus folder to write")
    p.add_argument("--seed", type=int, default=0, help="draws texts and voices; a new seed gives a fresh sample")
    p.add_argument("--languages", default=",".join(lx.LANGUAGES), help="comma-separated ISO 639-1 codes")
    for split in SPLITS:
        p.add_argument(f"--{split}-per-language", type=int, default=DEFAULT_SIZES[split], metavar="K",
                       help=f"utterances per language in {split}.jsonl")
    p.add_argument(
        "--train-scale",
        default=",".join(f"{k}={v}" for k, v in TRAIN_SCALE.items()),
        metavar="LANG=K,...",
        help="multiply --train-per-language for these languages ('' for none)",
    )
    p.add_argument("--labelled-share", type=float, default=LABELLED_SHARE, metavar="S",
                   help="share of each language's training utterances in train_labelled.jsonl, in (0, 1)")
    p.add_argument("--pool-only", action="store_true",
                   help="no audio for the labelled share: write unlabelled, dev, test and train_pool only")
    p.add_argument("--lexicon-size", type=int, default=lx.LEXICON_SIZE, help="words per language lexicon")
    p.add_argument("--workers", type=int, default=2, help="synthesis processes (does not change the output)")
    p.add_argument("--check", action="store_true",
                   help="build nothing: exit 0 if --out holds this exact build, complete, else 1")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def parse_train_scale(spec: str) -> dict[str, int]:
    """"zh=4,ja=2" -> {"zh": 4, "ja": 2}; "" -> {}. Names the bad entry otherwise."""
    scale: dict[str, int] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        lang, sep, factor = (part.strip() for part in item.partition("="))
        if not sep or lang not in lx.LANGUAGES or not factor.isdigit() or int(factor) < 1:
            raise SystemExit(f"--train-scale: bad entry {item!r}; expected LANG=K with LANG in "
                             f"{','.join(lx.LANGUAGES)} and K a whole number >= 1")
        scale[lang] = int(factor)
    return scale


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    requested = [c.strip() for c in args.languages.split(",") if c.strip()]
    unknown = sorted(set(requested) - set(lx.LANGUAGES))
    if unknown or not requested:
        raise SystemExit(f"unknown languages {unknown}; choose from {','.join(lx.LANGUAGES)}")
    languages = [c for c in lx.LANGUAGES if c in requested]  # canonical order: zh,en vs en,zh is one corpus
    sizes = {s: getattr(args, f"{s}_per_language") for s in SPLITS}
    if any(k < 0 for k in sizes.values()):
        raise SystemExit("sizes must be >= 0")
    train_scale = parse_train_scale(args.train_scale)
    if not 0 < args.labelled_share < 1:
        raise SystemExit(f"--labelled-share must be in (0, 1), got {args.labelled_share}")
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install -y espeak-ng")

    out = Path(args.out)
    config = {
        "recipe": RECIPE,
        "recipe_version": RECIPE_VERSION,
        "recipe_sha256": recipe_digest(),
        "seed": args.seed,
        "languages": languages,
        "per_language": sizes,
        "train_scale": {k: v for k, v in train_scale.items() if k in languages},
        "lexicon_size": args.lexicon_size,
        "labelled_share": args.labelled_share,
        "versions": versions(),
    }
    wanted = POOL if args.pool_only else MANIFESTS
    if args.check:
        current = _is_up_to_date(out, config, args.pool_only)
        print(f"{out}: {'up to date' if current else 'missing, incomplete or made with other arguments or recipe'}")
        raise SystemExit(0 if current else 1)
    if _is_up_to_date(out, config, args.pool_only):
        print(f"{out}: corpus is up to date (seed {args.seed}); nothing to do")
        print(_summary(_read_rows(out, wanted), languages))
        return out

    out.mkdir(parents=True, exist_ok=True)
    if (out / "audio").exists() and not (out / "BUILD.json").exists():
        raise SystemExit(f"{out}/audio exists but {out} holds no {RECIPE} build (no BUILD.json); use another --out")
    reused = _reusable_durations(out, config)
    if not reused:
        # Mark the folder as an unfinished build before touching anything, then clear the old one. (A build
        # that adds the labelled share to a --pool-only one leaves that one, still valid, until it is done.)
        _write_atomic(out / "BUILD.json", json.dumps({**config, "complete": False}, indent=2, ensure_ascii=False) + "\n")
        shutil.rmtree(out / "audio", ignore_errors=True)
        for name in MANIFESTS:
            (out / f"{name}.jsonl").unlink(missing_ok=True)

    start = time.time()
    load_texts(languages, args.lexicon_size, args.workers)
    utterances = plan(languages, sizes, args.seed, args.lexicon_size, train_scale)
    labelled = labelled_ids(utterances, args.labelled_share)
    todo = [u for u in utterances if u.id not in reused and not (args.pool_only and u.id in labelled)]
    print(f"synthesising {len(todo)} utterances ({len(languages)} languages) with {args.workers} worker(s)"
          + (f"; {len(reused)} reused from the earlier build" if reused else ""))
    jobs = [synth.Job(u.spoken, u.voice, u.rate, u.pitch, str(out / u.audio)) for u in todo]
    durations = {**reused, **dict(zip((u.id for u in todo), _synthesise_all(jobs, args.workers)))}

    rows = manifests(utterances, durations, labelled, args.pool_only)
    for name in wanted:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[name])
        _write_atomic(out / f"{name}.jsonl", text)
    elapsed = time.time() - start
    totals = {
        n: {"utterances": len(rows[n]), "hours": round(sum(r["duration"] for r in rows[n]) / 3600, 4)} for n in wanted
    }
    done = {**config, "labelled_audio": not args.pool_only, "totals": totals, "build_seconds": round(elapsed, 1),
            "complete": True}  # done marker last
    _write_atomic(out / "BUILD.json", json.dumps(done, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out} in {elapsed:.1f} s (seed {args.seed})")
    print(_summary(rows, languages))
    return out


if __name__ == "__main__":
    main()
