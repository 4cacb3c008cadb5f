"""Per-language lexicons and real sentences for the toy TTS corpus, from offline sources only.

Words: the most frequent words of `wordfreq` (18 languages; Croatian comes from its
Serbo-Croatian list; for Japanese only the words wordfreq already writes in kana), and for
Estonian, which wordfreq lacks, the words of Django's Estonian locale catalogs ranked by how
often they occur there (English words removed), topped up with CLDR month and day names from
`babel`.
Sentences: the translated strings of Django's locale catalogs (the English source strings for en;
for ja only the strings written purely in kana).
Both are checked against espeak-ng itself (see `espeak_rejects`), so each text is read as words
of its language.

Every entry is a pair (text, spoken): `text` is the transcript stored in the manifest (NFC,
lower-case, the native script: Hanzi for zh, kana for ja, Hangul for ko), `spoken` is what
espeak-ng is given (the same, except that zh/ja keep spaces between words there).
"""

from __future__ import annotations

import ast
import functools
import glob
import hashlib
import os
import re
import subprocess
import unicodedata
from collections import Counter
from dataclasses import dataclass

# ISO 639-1 code -> espeak-ng voice. Order is the canonical language order of the corpus.
VOICES: dict[str, str] = {
    "zh": "cmn-latn-pinyin",  # reads Hanzi; plain `cmn` reads tone digits in English
    "en": "en-us",
    "de": "de",
    "ja": "ja",  # reads kana only: only words and sentences already written in kana are used
    "fr": "fr-fr",
    "ko": "ko",
    "es": "es",
    "pl": "pl",
    "it": "it",
    "ro": "ro",
    "hu": "hu",
    "cs": "cs",
    "nl": "nl",
    "fi": "fi",
    "hr": "hr",
    "sk": "sk",
    "sl": "sl",
    "et": "et",
    "lt": "lt",
}
LANGUAGES: tuple[str, ...] = tuple(VOICES)

_LATIN = "abcdefghijklmnopqrstuvwxyz"
# Letters (lower-case) a word may be made of, beyond a-z, per Latin-script language.
EXTRA_LETTERS: dict[str, str] = {
    "en": "",
    "de": "äöüß",
    "fr": "àâæçéèêëîïôœùûüÿ",
    "es": "áéíóúüñ",
    "it": "àèéìíîòóùú",
    "pl": "ąćęłńóśźż",
    "ro": "ăâîșț",
    "hu": "áéíóöőúüű",
    "cs": "áčďéěíňóřšťúůýž",
    "nl": "áäéëèïíóöü",
    "fi": "åäöšž",
    "hr": "čćđšž",
    "sk": "áäčďéíĺľňóôŕšťúýž",
    "sl": "čćđšž",
    "et": "äöõüšž",
    "lt": "ąčęėįšųūž",
}
_VOWELS = set("aeiouyáàâäæéèêëěėęíìîïįóòôöõőœúùûüűůųūýÿåă")
# Languages whose real sentences keep word-internal apostrophes (don't, l'utente, l'adresse).
APOSTROPHE_LANGUAGES = {"en", "fr", "it"}
# zh and ja are written without spaces between words; all other languages with spaces.
UNSPACED = {"zh", "ja"}

_HANZI = re.compile(r"^[\u4e00-\u9fff]+$")
# Kana espeak-ng's ja voice reads. Left out: the small vowels ぁぃぅぇぉ/ァィゥェォ and ゎヮヵヶ,
# which it calls "Japanese letter" in English (and then spells the whole word character by character).
_KANA_CHARS = "".join(
    chr(c) for c in list(range(0x3041, 0x3095)) + list(range(0x30A1, 0x30F5)) if chr(c) not in "ぁぃぅぇぉァィゥェォゎヮヵヶ"
) + "ー"
_KANA = re.compile(f"^[{_KANA_CHARS}]+$")
_KANA_NO_START = "ーっッゃゅょャュョんン"  # cannot begin a word
_HANGUL = re.compile(r"^[\uac00-\ud7a3]+$")
_ROMAN = re.compile(r"^(?=[mdclxvi]+$)m{0,3}(cm|cd|d?c{0,3})(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})$")
# Characters a sentence may contain besides letters and spaces; anything else drops it
# (digits, placeholders like %(name)s or {0}, markup, slashes, hyphens, underscores).
_SENTENCE_PUNCT = set(".,:;!?\"'«»“”„‘’‚()–—…。、，：；！？「」『』（）・")

LEXICON_SIZE = 300  # words per language: small enough for a tiny model to learn the vocabulary
SENTENCE_WORDS = (3, 12)  # words per sentence, languages written with spaces
SENTENCE_CHARS = (4, 30)  # characters per sentence, zh (Hanzi) and ja (kana)
JA_DEPTH = 1_000_000  # ja: wordfreq words scanned for kana-only ones, i.e. its whole list (214,936)


@dataclass(frozen=True)
class Entry:
    text: str  # stored transcript
    spoken: str  # what espeak-ng reads


def nfc(s: str) -> str:
    s = unicodedata.normalize("NFC", s)
    # Romanian: the comma-below letters are the correct ones; the cedilla forms are legacy.
    return s.replace("ş", "ș").replace("ţ", "ț").replace("Ş", "Ș").replace("Ţ", "Ț")


def is_word(lang: str, word: str, *, in_sentence: bool = False) -> bool:
    """True when `word` (already normalised) is made of letters of `lang` and espeak reads it as a word.

    Latin scripts: letters of the language only, at least one vowel (no abbreviations such as
    "st"), not a Roman numeral ("vi", "xi" are read as numbers), at least 2 letters (espeak
    spells lone letters) unless inside a real sentence. zh: Hanzi; ja: kana;
    ko: Hangul syllables, at least 2 (wordfreq's Korean list is split into morphemes).
    """
    if not word:
        return False
    if lang == "zh":
        return bool(_HANZI.match(word))
    if lang == "ja":
        if not _KANA.match(word) or word[0] in _KANA_NO_START:
            return False
        # wordfreq's Japanese list is split into morphemes: drop one-kana particles and
        # fragments cut before a geminate (だっ, やっ from だった, やった)
        return in_sentence or (len(word) >= 2 and word[-1] not in "っッ")
    if lang == "ko":
        return bool(_HANGUL.match(word)) and (in_sentence or len(word) >= 2)
    letters = _LATIN + EXTRA_LETTERS[lang]
    parts = word.split("'") if (in_sentence and lang in APOSTROPHE_LANGUAGES) else [word]
    for part in parts:
        if not part or any(c not in letters for c in part):
            return False
    if len(word) == 1:
        return in_sentence
    if re.search(r"(.)\1\1", word):  # "uuuuuu", "aaaa": date-format codes in Django's catalogs
        return False
    if not any(c in _VOWELS for c in word):
        return False
    return not any(len(p) >= 2 and _ROMAN.match(p) for p in parts)


# ---------------------------------------------------------------- espeak-ng dictionary checks


def _espeak(lang: str, items: list[str], flag: str) -> str:
    proc = subprocess.run(
        ["espeak-ng", "-q", flag, "-b", "1", "-v", VOICES[lang]],
        input="\n".join(items).encode("utf-8"),
        capture_output=True,
        check=True,
    )
    return proc.stdout.decode("utf-8", "replace")


def espeak_phonemes(lang: str, items: list[str]) -> list[str]:
    """espeak-ng's phoneme string (-x) for each item. Items go in batches, one per line, and espeak
    answers one line per clause; a batch whose line count does not match is split in halves."""
    if not items:
        return []
    lines = _espeak(lang, items, "-x").splitlines()
    if len(lines) == len(items):
        return [line.strip() for line in lines]
    if len(items) == 1:
        return [" ".join(line.strip() for line in lines)]
    half = len(items) // 2
    return espeak_phonemes(lang, items[:half]) + espeak_phonemes(lang, items[half:])


_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)?\)")


def espeak_rejects(lang: str, items: list[str]) -> set[str]:
    """Items espeak-ng would not read as plain words of `lang`: those where it switches language
    (English-looking words such as French "l'authentification"; characters it does not know, which
    it calls e.g. "Japanese letter" in English), and, for the Latin-script languages, words its
    dictionary marks as abbreviations and spells letter by letter (Czech "usa": "ú es á")."""
    rejected = {item for item, ph in zip(items, espeak_phonemes(lang, items)) if _SWITCH.search(ph) or not ph}
    if lang not in UNSPACED and lang != "ko":
        abbrev = set()
        for line in _espeak(lang, sorted({w for item in items for w in item.split()}), "-X").splitlines():
            m = re.match(r"^Flags:\s+(\S+)\s+(.*)$", line)
            if m and "$abbrev" in m.group(2):
                abbrev.add(nfc(m.group(1)).lower())
        rejected |= {item for item in items if abbrev.intersection(item.split())}
    return rejected


# ---------------------------------------------------------------- Django catalogs


def _django_dir() -> str:
    import django

    return os.path.dirname(django.__file__)


def _django_locale(lang: str) -> str:
    return {"zh": "zh_Hans"}.get(lang, lang)


def read_po(path: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) of the singular, non-fuzzy entries of a gettext .po file."""
    entries: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        blocks = f.read().split("\n\n")
    for block in blocks:
        fields: dict[str, str] = {}
        key = None
        fuzzy = False
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            if line.startswith("#") or not line:
                continue
            m = re.match(r'^(msgid|msgid_plural|msgstr(?:\[\d+\])?|msgctxt)\s+(".*")$', line)
            if m:
                key = m.group(1)
                fields[key] = ast.literal_eval(m.group(2))
            elif line.startswith('"') and key is not None:
                fields[key] += ast.literal_eval(line)
        if fuzzy or "msgid_plural" in fields or "msgid" not in fields:
            continue
        entries.append((fields["msgid"], fields.get("msgstr", "")))
    return entries


@functools.lru_cache(maxsize=None)
def django_strings(lang: str) -> tuple[str, ...]:
    """The translated (for en: the English source) singular strings of every Django catalog,
    sorted and de-duplicated so the result does not depend on file order."""
    pattern = os.path.join(_django_dir(), "**", "locale", _django_locale(lang), "LC_MESSAGES", "django.po")
    strings: set[str] = set()
    for path in sorted(glob.glob(pattern, recursive=True)):
        for msgid, msgstr in read_po(path):
            s = msgid if lang == "en" else msgstr
            if msgid and s.strip():
                strings.add(s.strip())
    return tuple(sorted(strings))


# ---------------------------------------------------------------- sentences


_PLACEHOLDER = re.compile(r"%\(\w+\)[a-z]|%[a-z]|\{[^}]*\}|<[^>]+>|&\w+;")


@functools.lru_cache(maxsize=None)
def django_word_counts(lang: str) -> Counter:
    """How often each lower-cased word occurs in `lang`'s Django strings (placeholders and markup removed)."""
    counts: Counter[str] = Counter()
    for s in django_strings(lang):
        counts.update(re.findall(r"\w+", nfc(_PLACEHOLDER.sub(" ", s)).lower()))
    return counts


def looks_english(lang: str, word: str) -> bool:
    """True for an English word in another language's data ("the" in Spanish wordfreq, "true" or
    "none" in Croatian Django strings): more frequent in English than in `lang` by > 0.5 Zipf
    (wordfreq); for Estonian, which wordfreq lacks, at least half as frequent in Django's English
    source strings as in its Estonian translations ("json", "debug"; "on" and "see" stay)."""
    if lang == "en" or lang in UNSPACED or lang == "ko":
        return False
    if lang == "et":
        return 2 * django_word_counts("en")[word] >= django_word_counts("et")[word] > 0 or (
            django_word_counts("en")[word] > 0 and django_word_counts("et")[word] == 0
        )
    import wordfreq

    source = "sh" if lang == "hr" else lang
    return wordfreq.zipf_frequency(word, "en") - wordfreq.zipf_frequency(word, source) > 0.5




def _sentence_words(lang: str, raw: str) -> list[str] | None:
    s = nfc(raw).replace("’", "'").replace("‘", "'")
    if any(not (c.isalpha() or c.isspace() or c in _SENTENCE_PUNCT) for c in s):
        return None
    s = s.lower()
    if lang in APOSTROPHE_LANGUAGES:
        # keep apostrophes between letters (l'adresse, don't); drop quoting apostrophes
        s = re.sub(r"(?<!\w)'|'(?!\w)", " ", s)
        s = "".join(c if (c.isalpha() or c == "'") else " " for c in s)
    else:
        s = "".join(c if c.isalpha() else " " for c in s)
    return s.split()


def normalise_sentence(lang: str, raw: str) -> Entry | None:
    """(text, spoken) of a real sentence, or None when it has characters that are not letters of
    the language, markup, placeholders, digits, or a length outside the limits."""
    if lang == "ja":
        # Kana as written, nothing converted: espeak-ng's ja voice reads no kanji, and the recipe
        # uses no kanji -> kana converter (the usual Python ones are GPL, the project is
        # Apache-2.0), so a string with any kanji (most of Django's Japanese) is left out.
        # Chunks split at spaces and punctuation; espeak-ng is given them with spaces between.
        chunks = _sentence_words(lang, raw)
        if not chunks or not all(_KANA.match(c) for c in chunks):
            return None
        text = "".join(chunks)
        if not SENTENCE_CHARS[0] <= len(text) <= SENTENCE_CHARS[1]:
            return None
        return Entry(text, " ".join(chunks))
    words = _sentence_words(lang, raw)
    if not words or not all(is_word(lang, w, in_sentence=True) for w in words):
        return None
    if any(len(w) >= 2 and looks_english(lang, w) for w in words):
        return None
    if lang == "zh":
        text = "".join(words)
        if not SENTENCE_CHARS[0] <= len(text) <= SENTENCE_CHARS[1]:
            return None
        return Entry(text, " ".join(words))
    if not SENTENCE_WORDS[0] <= len(words) <= SENTENCE_WORDS[1]:
        return None
    text = " ".join(words)
    return Entry(text, text)


@functools.lru_cache(maxsize=None)
def sentences(lang: str) -> tuple[Entry, ...]:
    """Real sentences of `lang` (Django catalogs), normalised, de-duplicated by text, sorted; those
    with a word espeak-ng would spell as an abbreviation are left out."""
    by_text: dict[str, Entry] = {}
    for raw in django_strings(lang):
        entry = normalise_sentence(lang, raw)
        if entry is not None and entry.text not in by_text:
            by_text[entry.text] = entry
    rejected = espeak_rejects(lang, sorted({e.spoken for e in by_text.values()}))
    return tuple(by_text[t] for t in sorted(by_text) if by_text[t].spoken not in rejected)


def is_eval_sentence(lang: str, text: str) -> bool:
    """A fixed, seed-independent fifth of each language's sentences is reserved for dev/test, so
    no seed ever puts a dev/test sentence into train (word sequences are fresh draws anyway)."""
    digest = hashlib.sha1(f"{lang}\t{text}".encode("utf-8")).digest()
    return digest[0] % 5 == 0


# ---------------------------------------------------------------- word lexicons


def _estonian_candidates() -> list[str]:
    """Estonian words ranked by how often they occur in Django's Estonian catalogs (placeholders
    removed; English leftovers are dropped later by `looks_english`), then CLDR month and day
    names from babel."""
    counts = django_word_counts("et")
    ranked = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    from babel import Locale

    loc = Locale("et")
    cldr = []
    for names in (loc.months["format"]["wide"], loc.days["format"]["wide"]):
        cldr += [nfc(v).lower() for _, v in sorted(names.items())]
    return ranked + [w for w in cldr if w not in counts]


@functools.lru_cache(maxsize=None)
def lexicon(lang: str, size: int = LEXICON_SIZE) -> tuple[Entry, ...]:
    """The `size` most frequent words of `lang` that pass `is_word` and that espeak-ng does not
    spell as abbreviations; most frequent first. Fewer when the candidates run out.

    ja: only words wordfreq already writes in kana (hiragana or katakana, as written; nothing is
    converted, see `normalise_sentence`). About one in four of its most frequent words is, so its
    whole list is scanned: with wordfreq 3.1.1 the 300th kana word is at rank 1,177 of 214,936."""
    if lang == "et":
        candidates = _estonian_candidates()
    else:
        import wordfreq

        source = "sh" if lang == "hr" else lang  # wordfreq's Croatian is its Serbo-Croatian list
        candidates = wordfreq.top_n_list(source, JA_DEPTH if lang == "ja" else 5000)
    entries: list[Entry] = []
    seen: set[str] = set()
    for raw in candidates:
        if len(entries) >= 2 * size:  # only these are checked below
            break
        word = nfc(raw).lower()
        if word in seen or not is_word(lang, word) or looks_english(lang, word):
            continue
        seen.add(word)
        entries.append(Entry(word, word))
    checked = entries[: 2 * size]
    rejected = espeak_rejects(lang, [e.spoken for e in checked])
    return tuple([e for e in checked if e.spoken not in rejected][:size])
