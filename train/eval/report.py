"""Per-language scores of a set of transcriptions, and their Markdown table and bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from train.eval.error_rates import error_rates
from train.eval.language_id import language_fidelity
from train.eval.normalizers import CHARACTER_LANGUAGES


def score_by_language(references: Sequence[str | None], hypotheses: Sequence[str],
                      languages: Sequence[str | None], skipped: dict[str, dict] | None = None) -> dict[str, dict]:
    """{language: utterances, skipped, error_rates(...), fidelity}; WER beside CER where words exist (Korean).
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
            if language == "ko":
                row["wer"] = error_rates(refs, hyps, language, metric="wer")["rate"]
        if language is not None and idx:
            fid = language_fidelity([hypotheses[i] for i in idx], language)
            row.update(fidelity=fid["fidelity"], detected=fid["detected"], empty_outputs=fid["empty"])
        out[lang] = row
    return out


def average_rate(languages: dict[str, dict]) -> float | None:
    """Unweighted mean of the per-language error rates (each language counts once, as dev sets are compared)."""
    rates = [row["rate"] for row in languages.values() if "rate" in row]
    return sum(rates) / len(rates) if rates else None


def markdown_table(report: dict) -> str:
    lines = ["| manifest | language | utterances | skipped | metric | error rate | S / D / I | "
             "language fidelity | RTFx |", "|---|---|---:|---:|---|---:|---|---:|---:|"]
    for name, m in report["manifests"].items():
        for lang, row in m["languages"].items():
            skipped = sum(row["skipped"].values())
            rate = f"{100 * row['rate']:.2f} %" if "rate" in row else "—"
            parts = f"{row['substitutions']} / {row['deletions']} / {row['insertions']}" if "rate" in row else "—"
            fid = f"{100 * row['fidelity']:.1f} %" if "fidelity" in row else "—"
            metric = row.get("metric", "—").upper() + (f" (WER {100 * row['wer']:.2f} %)" if "wer" in row else "")
            lines.append(f"| {Path(name).name} | {lang} | {row['utterances']} | {skipped} | {metric} | {rate} | "
                         f"{parts} | {fid} | {m['rtfx']:.1f} |")
    lines.append("")
    lines.append("Error rates are corpus-level fractions shown as percentages: total edits / total reference "
                 "units after normalisation (Whisper's English normaliser for en, its basic normaliser "
                 f"elsewhere); CER in characters without spaces for {', '.join(sorted(CHARACTER_LANGUAGES))}, "
                 "WER elsewhere. Empty references are dropped. RTFx = audio seconds / transcription seconds.")
    return "\n".join(lines) + "\n"


def plot_error_rates(report: dict, path: str | Path, title: str = "Error rate by language") -> Path:
    """Grouped bar chart: one group per language, one bar per manifest, labelled with the metric."""
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
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    if len(manifests) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
