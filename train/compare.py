"""Compare reports of train/evaluate.py: the first (e.g. the base model) against each later one (e.g. adapted).

    python train/compare.py runs/base/report.json runs/adapted/report.json [--label base --label adapted]
        [--markdown runs/compare.md]

Prints one row per (manifest file name, language) found in any report, with the primary metric (CER
for zh/ja/ko/yue/th, WER elsewhere) of each report in %, and for each later report its change from the
first in percentage points and relative to the first (negative = fewer errors). The averages rows take
each row once, over the rows that every report has: the primary metric's mean, and the mean CER where
the reports have it. Rows a report lacks (evaluated on other manifests or languages) are listed under
the table, never dropped silently. Columns are labelled with each report's model path, or --label.
`eval/step-N.json` files of a training run have the same shape and compare too (labelled by their path).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import HelpFormatter  # noqa: E402


class NotAReport(ValueError):
    """The file is not a report written by train/evaluate.py; the message names it."""


def load_report(path: str | Path) -> dict:
    """The report in `path`, checked for the shape train/evaluate.py writes, or NotAReport naming the file."""
    hint = "expected a report.json written by train/evaluate.py --out"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise NotAReport(f"{path}: cannot be read ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NotAReport(f"{path}: not JSON ({err}); {hint}") from None
    manifests = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(manifests, dict) or not manifests:
        raise NotAReport(f"{path}: no \"manifests\" in it; {hint}")
    for spec, m in manifests.items():
        if not isinstance(m, dict) or not isinstance(m.get("languages"), dict):
            raise NotAReport(f"{path}: manifest {spec} has no per-language rows; {hint}")
        for lang, row in m["languages"].items():
            if not isinstance(row, dict) or ("rate" in row and "metric" not in row):
                raise NotAReport(f"{path}: manifest {spec}, language {lang}: not a scored row; {hint}")
    return data


def rows_of(report: dict) -> dict[tuple[str, str], dict]:
    """{(manifest, language): row}; the manifest by its file name, so that reports made from other folders
    match, unless two manifests of the report share a file name (then by the path as given)."""
    names = [Path(spec).name for spec in report["manifests"]]
    out = {}
    for spec, name in zip(report["manifests"], names):
        key = name if names.count(name) == 1 else spec
        for lang, row in report["manifests"][spec]["languages"].items():
            out[(key, lang)] = row
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _change(first: float | None, later: float | None) -> tuple[float | None, float | None]:
    """(later - first, (later - first) / first); None where either is missing or first is 0."""
    if first is None or later is None:
        return None, None
    return later - first, (later - first) / first if first else None


def compare(reports: list[dict], labels: list[str]) -> dict:
    """{"labels", "rows": [{manifest, language, metric, present, rates, changes}], "missing": {label:
    [[manifest, language], ...]}, "metric_differs": [...], "average": {rates, changes, rows}, "average_cer":
    {...}}. `present` and `rates` hold one value per report (rate None: absent, or no labelled clip);
    `changes` one (absolute, relative) pair per later report, against the first."""
    tables = [rows_of(r) for r in reports]
    keys = list(dict.fromkeys(key for t in tables for key in t))
    rows, differs = [], []
    for key in keys:
        present = [t[key] for t in tables if key in t]
        metrics = {row["metric"] for row in present if "metric" in row}
        rates = [t[key].get("rate") if key in t else None for t in tables]
        if len(metrics) > 1:
            differs.append(list(key))
        changes = [(None, None) if len(metrics) > 1 else _change(rates[0], r) for r in rates[1:]]
        rows.append({"manifest": key[0], "language": key[1], "metric": "/".join(sorted(metrics)) or None,
                     "present": [key in t for t in tables], "rates": rates, "changes": changes})
    missing = {label: [list(key) for key in keys if key not in t] for label, t in zip(labels, tables)}
    common = [key for key in keys if all(key in t and "rate" in t[key] for t in tables) and list(key) not in differs]

    def averaged(field: str) -> dict:
        if not all(field in t[key] for t in tables for key in common):
            return {"rates": [None] * len(tables), "changes": [(None, None)] * (len(tables) - 1), "rows": 0}
        means = [_mean([t[key][field] for key in common]) for t in tables]
        return {"rates": means, "changes": [_change(means[0], m) for m in means[1:]], "rows": len(common)}

    return {"labels": labels, "rows": rows, "missing": {k: v for k, v in missing.items() if v},
            "metric_differs": differs, "average": averaged("rate"), "average_cer": averaged("cer")}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _cells(rates: list, changes: list, present: list[bool]) -> list[str]:
    """The first report's rate, then rate, change and relative change of each later one ("missing" where the
    report has no such row; "—" where there is nothing to show)."""
    cells = [_pct(rates[0]) if present[0] else "missing"]
    for rate, (absolute, relative), here in zip(rates[1:], changes, present[1:]):
        cells += [_pct(rate) if here else "missing", "—" if absolute is None else f"{100 * absolute:+.2f}",
                  "—" if relative is None else f"{100 * relative:+.1f} %"]
    return cells


def markdown(result: dict) -> str:
    labels = result["labels"]
    header = ["manifest", "language", "metric", labels[0]]
    for label in labels[1:]:
        header += [label, "change (points)", "relative"]
    lines = [f"Error rates in % (primary metric: CER for zh/ja/ko/yue/th, WER elsewhere) of {len(labels)} "
             f"reports; change = each later report minus the first, {labels[0]}. Lower is better.", "",
             "| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    for row in result["rows"]:
        lines.append(f"| {row['manifest']} | {row['language']} | {(row['metric'] or '—').upper()} | "
                     + " | ".join(_cells(row["rates"], row["changes"], row["present"])) + " |")
    for name, what, metric in (("average", "**average**", "primary"), ("average_cer", "average CER", "CER")):
        avg = result[name]
        lines.append(f"| {what} of the {avg['rows']} rows every report has | | {metric} | "
                     + " | ".join(_cells(avg["rates"], avg["changes"], [True] * len(labels))) + " |")
    if result["missing"]:
        lines += ["", "Rows missing from a report (its manifests or languages differ; the averages leave them out):"]
        lines += [f"- {label}: " + ", ".join(f"{m} / {lang}" for m, lang in keys)
                  for label, keys in result["missing"].items()]
    if result["metric_differs"]:
        lines += ["", "Rows scored with different metrics in different reports (no change given): "
                  + ", ".join(f"{m} / {lang}" for m, lang in result["metric_differs"])]
    return "\n".join(lines) + "\n"


def default_labels(paths: list[str], reports: list[dict]) -> list[str]:
    """Each report's model path (a training run's step report has none: its file path); a label shared by
    several reports gets its file path too."""
    labels = [str(r.get("model") or p) for p, r in zip(paths, reports)]
    return [f"{label} ({p})" if labels.count(label) > 1 and label != p else label for label, p in zip(labels, paths)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("reports", nargs="+", help="report.json files of train/evaluate.py; the first is the "
                                                   "reference the others are compared with")
    parser.add_argument("--label", action="append", default=None,
                        help="column name of a report, once per report in order (default: each report's model "
                             "path)")
    parser.add_argument("--markdown", default=None, help="also write the table to this file (default: only print it)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.label is not None and len(args.label) != len(args.reports):
        parser.error(f"--label given {len(args.label)} times for {len(args.reports)} reports: give one per report")
    try:
        reports = [load_report(p) for p in args.reports]
    except NotAReport as err:
        raise SystemExit(f"error: {err}") from None
    result = compare(reports, args.label or default_labels(args.reports, reports))
    text = markdown(result)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text, encoding="utf-8")
    print(text)
    for label, keys in result["missing"].items():
        print(f"warning: {label} has no row for " + ", ".join(f"{m} / {lang}" for m, lang in keys), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
