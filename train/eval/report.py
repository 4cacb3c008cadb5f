"""Per-language scores of a set of transcriptions, each utterance's errors and alignment, and the
Markdown table and bar chart of a report."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Sequence

import jiwer

from train.eval.error_rates import error_rates
from train.eval.language_id import language_fidelity
from train.eval.normalizers import CHARACTER_LANGUAGES, default_metric, normalize, scoring_units


def score_by_language(references: Sequence[str | None], hypotheses: Sequence[str],
                      languages: Sequence[str | None], skipped: dict[str, dict] | None = None) -> dict[str, dict]:
    """{language: utterances, skipped, error_rates(...), cer, fidelity}: the primary metric's rate and parts,
    CER beside it for every language, and WER beside CER where words exist (Korean).
    `skipped` is {language: {reason: count}} of the clips that could not be used."""
    skipped = skipped or {}
    groups: dict[str, list[int]] = {lang: [] for lang in skipped}
    for i, lang in enumerate(languages):
        groups.setdefault(lang or "unknown", []).append(i)
    out = {}
    for lang, idx in sorted(groups.items()):
        language = None if lang == "unknown" else lang
        labelled = [i for i in idx if references[i]]
        row = {"utterances": len(idx), "labelled": len(labelled), "skipped": dict(skipped.get(lang, {}))}
        if labelled:
            refs, hyps = [references[i] for i in labelled], [hypotheses[i] for i in labelled]
            row.update(error_rates(refs, hyps, language))
            row["cer"] = row["rate"] if row["metric"] == "cer" else error_rates(refs, hyps, language, "cer")["rate"]
            if language == "ko":
                row["wer"] = error_rates(refs, hyps, language, metric="wer")["rate"]
        if language is not None and idx:
            fid = language_fidelity([hypotheses[i] for i in idx], language)
            row.update(fidelity=fid["fidelity"], detected=fid["detected"], empty_outputs=fid["empty"])
        out[lang] = row
    return out


def _width(text: str) -> int:
    """Columns `text` takes in a terminal: CJK ideographs and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def alignment_text(ref: list[str], hyp: list[str], chunks) -> str:
    """sclite's three lines from jiwer's alignment chunks: REF and HYP in columns, `*` where a unit is
    missing, and S / D / I under each error (blank under a hit)."""
    cols = []
    for chunk in chunks:
        r, h = ref[chunk.ref_start_idx:chunk.ref_end_idx], hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]
        if chunk.type == "equal":
            cols += [(a, b, "") for a, b in zip(r, h)]
        elif chunk.type == "substitute":
            cols += [(a, b, "S") for a, b in zip(r, h)]
        elif chunk.type == "delete":
            cols += [(a, "", "D") for a in r]
        else:
            cols += [("", b, "I") for b in h]
    widths = [max(_width(a), _width(b), 1) for a, b, _ in cols]
    lines = [" ".join(_pad(a or "*" * w, w) for (a, _, _), w in zip(cols, widths)),
             " ".join(_pad(b or "*" * w, w) for (_, b, _), w in zip(cols, widths)),
             " ".join(_pad(op, w) for (_, _, op), w in zip(cols, widths))]
    return "\n".join(f"{name} {line}".rstrip() for name, line in zip(("REF: ", "HYP: ", "EVAL:"), lines))


def utterance_errors(reference: str | None, hypothesis: str, language: str | None, metric: str | None = None
                     ) -> dict:
    """One utterance scored as `error_rates` scores the corpus (same normalisation, same units, same jiwer
    call), so the counts of the utterances add up to the corpus counts: {metric, reference_normalised,
    hypothesis_normalised, scored, ref_units, substitutions, deletions, insertions, hits, alignment}.
    Not scored (all counts 0) where the normalised reference is empty, as `error_rates` drops it."""
    metric = metric or default_metric(language)
    ref_units, hyp_units = scoring_units(reference or "", language, metric), scoring_units(hypothesis or "",
                                                                                           language, metric)
    row = {"metric": metric, "reference_normalised": normalize(reference or "", language),
           "hypothesis_normalised": normalize(hypothesis or "", language), "scored": bool(ref_units),
           "ref_units": 0, "substitutions": 0, "deletions": 0, "insertions": 0, "hits": 0, "alignment": ""}
    if not ref_units:
        return row
    out = (jiwer.process_characters if metric == "cer" else jiwer.process_words)(ref_units, hyp_units)
    row.update(ref_units=out.substitutions + out.deletions + out.hits, substitutions=out.substitutions,
               deletions=out.deletions, insertions=out.insertions, hits=out.hits,
               alignment=alignment_text(out.references[0], out.hypotheses[0], out.alignments[0]))
    return row


def average_rate(languages: dict[str, dict]) -> float | None:
    """Unweighted mean of the per-language error rates (each language counts once, as dev sets are compared)."""
    rates = [row["rate"] for row in languages.values() if "rate" in row]
    return sum(rates) / len(rates) if rates else None


def average_cer(languages: dict[str, dict]) -> float | None:
    """Unweighted mean of the per-language CERs: one metric for every language, where the primary mixes two."""
    rates = [row["cer"] for row in languages.values() if "cer" in row]
    return sum(rates) / len(rates) if rates else None


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f} %"


def markdown_table(report: dict) -> str:
    lines = ["| manifest | language | utterances | skipped | metric | error rate | WER | CER | S / D / I | "
             "language fidelity | RTFx |", "|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|"]
    for name, m in report["manifests"].items():
        for lang, row in m["languages"].items():
            skipped = sum(row["skipped"].values())
            scored = "rate" in row
            wer = row["rate"] if scored and row["metric"] == "wer" else row.get("wer")
            parts = f"{row['substitutions']} / {row['deletions']} / {row['insertions']}" if scored else "—"
            lines.append(f"| {Path(name).name} | {lang} | {row['utterances']} | {skipped} | "
                         f"{row.get('metric', '—').upper()} | {_pct(row.get('rate'))} | {_pct(wer)} | "
                         f"{_pct(row.get('cer'))} | {parts} | {_pct(row.get('fidelity'), 1)} | {m['rtfx']:.1f} |")
        if len(m["languages"]) > 1:
            cer = m.get("average_cer", average_cer(m["languages"]))
            lines.append(f"| {Path(name).name} | average of the languages | {m['utterances']} | "
                         f"{sum(m['skipped'].values()) if 'skipped' in m else '—'} | primary | "
                         f"{_pct(m['average_rate'])} | — | {_pct(cer)} | — | — | {m['rtfx']:.1f} |")
    lines.append("")
    lines.append("Error rates are corpus-level fractions shown as percentages: total edits / total reference "
                 "units after normalisation (Whisper's English normaliser for en, its basic normaliser "
                 "elsewhere). The error rate column is the primary metric, CER in characters without spaces for "
                 f"{', '.join(sorted(CHARACTER_LANGUAGES))}, WER elsewhere; CER is shown for every language, "
                 "WER wherever words are written apart (ko too). S / D / I are the primary metric's "
                 "substitutions, deletions and insertions. Averages count each language once. Empty references "
                 "are dropped. RTFx = audio seconds / transcription seconds.")
    return "\n".join(lines) + "\n"


def shorten_middle(text: str, width: int) -> str:
    """`text` cut to `width` characters by replacing its middle with "…" (a path keeps its root and its end)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[:keep // 2] + "…" + text[len(text) - (keep - keep // 2):]


def plot_title(report: dict, width: int = 70) -> str:
    """The model path on one line and the manifest(s) on the next, each shortened in the middle when long."""
    manifests = ", ".join(shorten_middle(str(name), width) for name in report["manifests"])
    return f"{shorten_middle(str(report.get('model', 'model')), width)}\non {shorten_middle(manifests, width)}"


def plot_error_rates(report: dict, path: str | Path, title: str | None = None) -> Path:
    """Grouped bar chart: one group per language, one bar per manifest, labelled with the metric; titled by
    default with the model and the manifests (`plot_title`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifests = list(report["manifests"].items())
    languages = sorted({lang for _, m in manifests for lang, row in m["languages"].items() if "rate" in row})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(languages) * max(1, len(manifests)) + 2), 4.2))
    width = 0.8 / max(1, len(manifests))
    for k, (name, m) in enumerate(manifests):
        xs = [i + (k - (len(manifests) - 1) / 2) * width for i in range(len(languages))]
        ys = [100 * m["languages"].get(lang, {}).get("rate", float("nan")) for lang in languages]
        bars = ax.bar(xs, ys, width, label=Path(name).name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    metric = {lang: next((m["languages"][lang]["metric"] for _, m in manifests
                          if "metric" in m["languages"].get(lang, {})), "") for lang in languages}
    ax.set_xticks(range(len(languages)), [f"{lang}\n{metric[lang].upper()}" for lang in languages])
    ax.set_ylabel("error rate (%)")
    ax.set_title(plot_title(report) if title is None else title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    if len(manifests) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
