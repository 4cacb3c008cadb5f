"""The paper's table at toy scale, from a run folder that scripts/reproduce_toy.sh (or `make demo`) filled.

    python scripts/toy_report.py --runs runs/toy

Reads RUNS/eval/<model>.hyps.jsonl (train/evaluate.py --hyps) for teacher, base, td, opd, td_opd
(whichever exist; each may hold several manifests), RUNS/<stage>/eval/history.jsonl for the dev curves
and RUNS/wall_times/. Writes RUNS/report.md (for each manifest: error rates per language and on
average, CER for zh/ja/ko, WER and CER elsewhere; the share of the Base->Teacher gap each method
closes; word error kinds; language fidelity; then wall time per stage), RUNS/report.json (the same
numbers, under "manifests") and RUNS/dev_curves.png (dev error rate over student updates).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import HelpFormatter  # noqa: E402
from train.eval.error_rates import error_rates  # noqa: E402
from train.eval.language_id import language_fidelity  # noqa: E402
from train.eval.normalizers import CHARACTER_LANGUAGES  # noqa: E402

MODELS = {"teacher": "Teacher", "base": "Base", "td": "Base+TD", "opd": "Base+OPD", "td_opd": "Base+TD+OPD"}
CURVES = {"td": "Base+TD", "opd": "Base+OPD", "td_opd": "Base+TD+OPD (updates after TD's)"}


def _rows(path: Path) -> dict[str, dict[str, list[dict]]]:
    """{manifest: {language: rows}} of a hypotheses file, manifests in the order they first appear."""
    by_manifest: dict[str, dict[str, list[dict]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_manifest.setdefault(row.get("manifest", "the evaluation manifest"), defaultdict(list))[
            row["language"]].append(row)
    return {manifest: dict(by_language) for manifest, by_language in by_manifest.items()}


WORD_COUNTS = ("substitutions", "deletions", "insertions", "ref_len")


def score(by_language: dict[str, list[dict]]) -> dict[str, dict]:
    """{language: {primary, wer, cer, fidelity, words}} of one manifest's rows: primary is CER for zh/ja/ko,
    WER elsewhere; words holds the word-level substitutions, deletions, insertions and reference length (WER
    languages)."""
    out = {}
    for language, rows in sorted(by_language.items()):
        refs, hyps = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]
        cer = error_rates(refs, hyps, language, metric="cer")["rate"]
        words = None if language in CHARACTER_LANGUAGES else error_rates(refs, hyps, language, metric="wer")
        wer = None if words is None else words["rate"]
        out[language] = {"primary": cer if wer is None else wer, "wer": wer, "cer": cer,
                         "fidelity": language_fidelity(hyps, language)["fidelity"],
                         "words": None if words is None else {k: words[k] for k in WORD_COUNTS}}
    return out


def word_error_kinds(scores: dict[str, dict]) -> dict[str, int]:
    """Word errors summed over the WER languages, and the words written: hits + substitutions +
    insertions = reference words - deletions + insertions."""
    total = {k: sum(r["words"][k] for r in scores.values() if r["words"]) for k in WORD_COUNTS}
    total["hyp_len"] = total["ref_len"] - total["deletions"] + total["insertions"]
    return total


def mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def gap_closed(base: float, method: float, teacher: float) -> float | None:
    """(base - method) / (base - teacher): 1 = as good as the teacher, 0 = no better than base."""
    return (base - method) / (base - teacher) if base != teacher else None


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def build_report(runs: Path) -> tuple[str, dict]:
    """The report's text and data: one section per evaluation manifest (a model's hypotheses file may hold
    several, as `make demo` evaluates on dev and test at once), then the diagnostics, wall times and curves."""
    hyps = {m: _rows(runs / "eval" / f"{m}.hyps.jsonl") for m in MODELS if (runs / "eval" / f"{m}.hyps.jsonl").exists()}
    if not hyps:
        raise FileNotFoundError(f"{runs}/eval: no <model>.hyps.jsonl from train/evaluate.py --hyps")
    manifests = list(dict.fromkeys(manifest for by_manifest in hyps.values() for manifest in by_manifest))
    lines, data = [], {"manifests": {}}
    for manifest in manifests:
        scores = {m: score(by_manifest[manifest]) for m, by_manifest in hyps.items() if manifest in by_manifest}
        section, data["manifests"][manifest] = manifest_section(manifest, scores)
        lines += section + [""]
    diagnostics = {m: json.loads((runs / "diagnostics" / f"{m}.json").read_text()) for m in MODELS
                   if (runs / "diagnostics" / f"{m}.json").exists()}
    if diagnostics:
        lines += ["The teacher's view of each student's own greedy transcripts of dev clips "
                  "(scripts/opd_diagnostics.py), which is what OPD learns from:", "",
                  "| student | teacher log-prob of the student's tokens | teacher's argmax = student's token | "
                  "teacher's argmax is to end where the student ends | characters per clip: student / teacher / "
                  "reference | spaces per clip: teacher expects / student expects / student writes / reference | "
                  "next-token entropy, student / teacher (nats) |", "|---|---:|---:|---:|---|---|---|"]
        for m, d in diagnostics.items():
            chars, spaces, entropy = d["chars_per_clip"], d.get("spaces_per_clip"), d.get("entropy_nats")
            space_cell = "–" if not spaces else " / ".join(f"{spaces[k]:.2f}" for k in (
                "teacher_expected", "student_expected", "student_written", "reference"))
            lines.append(f"| {MODELS[m]} | {d['teacher_logp_of_student_tokens']:.2f} | "
                         f"{_pct(d['teacher_argmax_is_student_token'])} % | "
                         f"{_pct(d['teacher_argmax_is_end_where_student_ends'])} % | "
                         f"{chars['student']:.1f} / {chars['teacher']:.1f} / {chars['reference']:.1f} | {space_cell} | "
                         + ("–" if not entropy else f"{entropy['student']:.2f} / {entropy['teacher']:.2f}") + " |")
        lines.append("")
    times = wall_times(runs)
    if times:
        total = times.pop("this_invocation", None)
        lines += ["Wall time per stage:", "", "| stage | wall time |", "|---|---:|"]
        lines += [f"| {stage} | {seconds / 60:.1f} min |" for stage, seconds in times.items()]
        if total is not None:
            lines.append(f"| whole script, start to end | {total / 60:.1f} min |")
        lines.append("")
    if plot_dev_curves(runs, runs / "dev_curves.png"):
        lines += ["![dev error rate over student updates](dev_curves.png)", ""]
    curves = runs / "curves" / "curves.md"  # scripts/toy_curves.sh: OPD against its budget and its start
    if curves.exists():
        lines += [curves.read_text(encoding="utf-8").replace("](curves.png)", "](curves/curves.png)"), ""]
    return "\n".join(lines).rstrip("\n") + "\n", data


def manifest_section(manifest: str, scores: dict[str, dict]) -> tuple[list[str], dict]:
    """The tables of one evaluation manifest: error rates per language and on average, the share of the
    Base->Teacher gap each method closes, word error kinds; and their data."""
    names = list(scores)
    languages = sorted({lang for s in scores.values() for lang in s})
    summary = {m: {"primary": mean(s[lang]["primary"] for lang in s), "cer": mean(s[lang]["cer"] for lang in s),
                   "wer": mean(s[lang]["wer"] for lang in s), "fidelity": mean(s[lang]["fidelity"] for lang in s)}
               for m, s in scores.items()}
    lines = [f"Error rates in % on `{manifest}` (CER for zh/ja/ko; WER / CER elsewhere). Lower is better.", "",
             "| language | " + " | ".join(MODELS[m] for m in names) + " |",
             "|---|" + "---:|" * len(names)]
    for lang in languages:
        cells = []
        for m in names:
            r = scores[m].get(lang)
            cells.append("–" if r is None else _pct(r["cer"]) if r["wer"] is None else f"{_pct(r['wer'])} / {_pct(r['cer'])}")
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines.append("| **average** (primary metric) | " + " | ".join(f"**{_pct(summary[m]['primary'])}**" for m in names)
                 + " |")
    lines.append("| average CER, all languages | " + " | ".join(_pct(summary[m]["cer"]) for m in names) + " |")
    lines.append("| language fidelity | " + " | ".join(_pct(summary[m]["fidelity"]) for m in names) + " |")
    gaps = {}
    if "base" in summary and "teacher" in summary:
        lines += ["", f"Share of the Base→Teacher gap closed on `{manifest}`, (base − method) / (base − teacher):",
                  "", "| method | average primary metric | average CER | average WER |", "|---|---:|---:|---:|"]
        for m in names:
            if m in ("base", "teacher"):
                continue
            gaps[m] = {k: gap_closed(summary["base"][k], summary[m][k], summary["teacher"][k])
                       for k in ("primary", "cer", "wer")}
            lines.append(f"| {MODELS[m]} | {_pct(gaps[m]['primary'])} % | {_pct(gaps[m]['cer'])} % | {_pct(gaps[m]['wer'])} % |")
    kinds = {m: word_error_kinds(scores[m]) for m in names}
    n_wer = sum(r["words"] is not None for r in scores[names[0]].values())
    lines += ["", f"Word errors on `{manifest}` summed over the languages scored by WER ({n_wer}), which is what "
              "moves the WER:", "",
              "| model | substitutions | deletions | insertions | words written / in the references |",
              "|---|---:|---:|---:|---|"]
    lines += [f"| {MODELS[m]} | {k['substitutions']} | {k['deletions']} | {k['insertions']} | "
              f"{k['hyp_len']} / {k['ref_len']} |" for m, k in kinds.items()]
    return lines, {"summary": summary, "gap_closed": gaps, "word_errors": kinds, "languages": scores}


def wall_times(runs: Path) -> dict[str, int]:
    """{stage: seconds} from RUNS/wall_times/ (scripts/stage.sh writes one file a stage), oldest first."""
    folder = runs / "wall_times"
    if not folder.is_dir():
        return {}
    files = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
    return {p.name: int(p.read_text()) for p in files}


def plot_dev_curves(runs: Path, path: Path) -> bool:
    histories = {}
    for stage, label in CURVES.items():
        f = runs / stage / "eval" / "history.jsonl"
        if f.exists():
            points = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            histories[label] = [(p["step"], 100 * p["average_rate"]) for p in points if p["average_rate"] is not None]
    if not histories:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in histories.items():
        ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("student updates")
    ax.set_ylabel("dev error rate, average over languages (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/toy"),
                        help="the run folder scripts/reproduce_toy.sh filled")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    text, data = build_report(args.runs)
    (args.runs / "report.md").write_text(text, encoding="utf-8")
    (args.runs / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(text)
    return data


if __name__ == "__main__":
    main()
