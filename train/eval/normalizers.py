"""Text normalisation before scoring, as the field does it (the open_asr_leaderboard's convention).

English: Whisper's EnglishTextNormalizer (spelling, numbers, contractions, punctuation). Every other
language: Whisper's BasicTextNormalizer (lower-case, bracketed spans and punctuation removed,
diacritics kept). Both come from the `whisper-normalizer` package, a copy of OpenAI's code without
openai-whisper's dependencies. Chinese, Japanese and Korean are scored in characters, so their
spaces are removed after normalisation.
"""

from __future__ import annotations

from functools import lru_cache

CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko", "yue", "th"})


@lru_cache(maxsize=None)
def _english():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@lru_cache(maxsize=None)
def _basic():
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize(text: str, language: str | None) -> str:
    """The text as it is scored: words separated by single spaces, no leading/trailing space."""
    if language == "en":
        return " ".join(_english()(text).split())
    return " ".join(_basic()(text).split())


def scoring_units(text: str, language: str | None, metric: str) -> str:
    """Normalised text laid out for jiwer: words for WER; characters (spaces dropped) for CER."""
    text = normalize(text, language)
    if metric == "cer":
        return "".join(text.split())
    return text


def default_metric(language: str | None) -> str:
    """CER where the script has no word spaces (zh, ja) or scoring convention is characters (ko); WER elsewhere."""
    return "cer" if language in CHARACTER_LANGUAGES else "wer"
