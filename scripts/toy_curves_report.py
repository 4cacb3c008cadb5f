"""How much OPD closes of the gap to the teacher, against its budget and against where the student starts.

    python scripts/toy_curves_report.py --curves runs/toy/curves --start-updates 1200

Reads CURVES/eval/<name>.hyps.jsonl (scripts/toy_curves.sh fills it): `teacher`, each start (`base`,
`td`, `base_<SFT updates>`) and each OPD run from a start, `<start>+opd_<updates>`. Each run's share of
the gap is measured against its own start: (start - after) / (start - teacher), on the average CER over
all 19 languages and the average WER over the 16 scored by WER. Writes CURVES/curves.md, curves.json and
curves.png (gap closed against OPD updates from the base; gap closed against the start's CER).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.toy_report import _pct, _rows, gap_closed, mean, score  # noqa: E402
from train.cli import HelpFormatter  # noqa: E402

RUN_NAME = re.compile(r"^(?P<start>.+)\+opd_(?P<updates>\d+)$")
START_LABELS = {"base": "base (shipped, 3,000 SFT updates)", "td": "Base+TD (shipped)"}


def start_label(start: str) -> str:
    match = re.fullmatch(r"base_(\d+)", start)
    return START_LABELS.get(start) or (f"base at {int(match[1]):,} SFT updates" if match else start)


def averages(hyps: Path) -> dict[str, float]:
    """{cer, wer} averaged over languages, of a hypotheses file holding one manifest."""
    by_manifest = _rows(hyps)
    if len(by_manifest) != 1:
        raise ValueError(f"{hyps}: expected one evaluation manifest, found {list(by_manifest)}")
    scores = score(next(iter(by_manifest.values())))
    return {k: mean(s[k] for s in scores.values()) for k in ("cer", "wer")}


def collect(curves: Path) -> dict:
    """{"teacher": rates, "starts": {start: rates}, "runs": [{start, updates, rates, gap_closed}]}."""
    folder = curves / "eval"
    rates = {p.name[: -len(".hyps.jsonl")]: averages(p) for p in sorted(folder.glob("*.hyps.jsonl"))}
    if "teacher" not in rates:
        raise FileNotFoundError(f"{folder}/teacher.hyps.jsonl is missing: every gap is measured to the teacher")
    runs, starts = [], {}
    for name, after in rates.items():
        match = RUN_NAME.match(name)
        if not match:
            continue
        start = match["start"]
        if start not in rates:
            raise FileNotFoundError(f"{folder}/{start}.hyps.jsonl is missing: {name} is measured from it")
        starts[start] = rates[start]
        runs.append({"start": start, "updates": int(match["updates"]), "rates": after,
                     "gap_closed": {k: gap_closed(rates[start][k], after[k], rates["teacher"][k]) for k in ("cer", "wer")}})
    runs.sort(key=lambda r: (rates[r["start"]]["cer"], r["updates"]))
    return {"teacher": rates["teacher"], "starts": starts, "runs": runs}


def render(data: dict) -> str:
    teacher = data["teacher"]
    lines = ["OPD from each start, scored on the toy test split (scripts/toy_curves.sh). Gap closed = (start − after) / "
             f"(start − teacher); the teacher's average CER is {_pct(teacher['cer'])} %, its average WER "
             f"{_pct(teacher['wer'])} %.", "",
             "| start | OPD updates | start CER / WER | after CER / WER | CER gap closed | WER gap closed |",
             "|---|---:|---|---|---:|---:|"]
    for run in data["runs"]:
        start, after, gap = data["starts"][run["start"]], run["rates"], run["gap_closed"]
        lines.append(f"| {start_label(run['start'])} | {run['updates']:,} | {_pct(start['cer'])} / {_pct(start['wer'])} | "
                     f"{_pct(after['cer'])} / {_pct(after['wer'])} | {_pct(gap['cer'])} % | {_pct(gap['wer'])} % |")
    return "\n".join(lines) + "\n"


def plot(data: dict, start_updates: int, path: Path) -> bool:
    budget = sorted((r for r in data["runs"] if r["start"] == "base"), key=lambda r: r["updates"])
    by_start = sorted((r for r in data["runs"] if r["updates"] == start_updates),
                      key=lambda r: data["starts"][r["start"]]["cer"])
    if not budget and not by_start:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for metric, marker in (("cer", "o"), ("wer", "s")):
        left.plot([r["updates"] for r in budget], [100 * r["gap_closed"][metric] for r in budget], marker=marker,
                  label=f"{metric.upper()} gap closed")
        right.plot([100 * data["starts"][r["start"]]["cer"] for r in by_start],
                   [100 * r["gap_closed"][metric] for r in by_start], marker=marker, label=f"{metric.upper()} gap closed")
    for r in by_start:
        right.annotate(r["start"], (100 * data["starts"][r["start"]]["cer"], 100 * r["gap_closed"]["cer"]),
                       textcoords="offset points", xytext=(4, 4), fontsize=8)
    left.set_xscale("log", base=2)
    left.set_xticks([r["updates"] for r in budget], [f"{r['updates']:,}" for r in budget])  # the budgets run
    left.minorticks_off()
    left.set_xlabel("OPD student updates from the base (each its own cosine schedule)")
    left.set_title("OPD budget")
    right.set_xlabel(f"start's average test CER (%); OPD for {start_updates:,} updates")
    right.set_title("Student's starting point")
    right.invert_xaxis()
    for ax in (left, right):
        ax.set_ylabel("share of the start's gap to the teacher closed (%)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--curves", type=Path, default=Path("runs/toy/curves"),
                        help="the folder scripts/toy_curves.sh filled")
    parser.add_argument("--start-updates", type=int, default=1200,
                        help="the OPD updates every start got (the right-hand plot)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    data = collect(args.curves)
    text = render(data)
    if plot(data, args.start_updates, args.curves / "curves.png"):
        text += "\n![gap closed against OPD budget and against the start](curves.png)\n"
    (args.curves / "curves.md").write_text(text, encoding="utf-8")
    (args.curves / "curves.json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)
    return data


if __name__ == "__main__":
    main()
