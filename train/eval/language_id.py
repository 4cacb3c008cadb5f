"""Which language a transcript is in, and the share of outputs in the expected language (language fidelity).

Korean, Japanese and Chinese are told apart by script (Hangul; kana; Han without kana), which is
exact even for one-word outputs; every other language by `lingua` (offline models, all 19 dev
languages), restricted to the candidate languages so short texts are not assigned to an unrelated one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import regex

from train.config import DEV_LANGUAGES
_HANGUL = regex.compile(r"\p{Hangul}")
_KANA = regex.compile(r"[\p{Hiragana}\p{Katakana}]")
_HAN = regex.compile(r"\p{Han}")
_LETTER = regex.compile(r"\p{L}")


@lru_cache(maxsize=8)
def _detector(candidates: tuple[str, ...]):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in candidates]
    return LanguageDetectorBuilder.from_languages(*languages).build()


def detect_language(text: str, candidates: Sequence[str] = DEV_LANGUAGES) -> str | None:
    """ISO 639-1 code of `text`'s language among `candidates`, or None for text with no letters."""
    if not _LETTER.search(text or ""):
        return None
    if _HANGUL.search(text):
        return "ko"
    if _KANA.search(text):
        return "ja"
    latin_or_other = [c for c in candidates if c not in ("zh", "ja", "ko")]
    if _HAN.search(text) and not regex.search(r"\p{Latin}", text):
        return "zh"
    if not latin_or_other:
        return None
    found = _detector(tuple(sorted(latin_or_other))).detect_language_of(text)
    return found.iso_code_639_1.name.lower() if found is not None else None


def language_fidelity(hyps: Sequence[str], expected: str, candidates: Sequence[str] = DEV_LANGUAGES) -> dict:
    """{"fidelity": share of non-empty outputs detected as `expected`, "counted", "empty", "detected": {code: n}}."""
    detected: dict[str, int] = {}
    empty = 0
    for hyp in hyps:
        code = detect_language(hyp, candidates)
        if code is None:
            empty += 1
            continue
        detected[code] = detected.get(code, 0) + 1
    counted = sum(detected.values())
    return {"fidelity": detected.get(expected, 0) / counted if counted else 0.0, "counted": counted,
            "empty": empty, "detected": dict(sorted(detected.items(), key=lambda kv: -kv[1]))}
