"""Copy a trained toy model into checkpoints/toy/<name>/ with MADE_BY.json beside it, which says how it was made.

    python scripts/ship_toy_model.py opd --runs runs/toy --config configs/toy/opd.yaml

Ships RUNS/<name>/final (the rank digests of a multi-process save left out); MADE_BY.json records the command,
config and overrides, commit, the stage's wall time (RUNS/wall_times/<name>), the machine and the average
scores of RUNS/eval/<name>.json (train/evaluate.py), so anyone can re-score the model and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import HelpFormatter  # noqa: E402


def made_by(name: str, runs: Path, config: str, overrides: list[str], command: str, note: str | None = None) -> dict:
    wall = runs / "wall_times" / name
    evaluation = runs / "eval" / f"{name}.json"
    scores = None
    if evaluation.exists():
        scores = {manifest: {"average_primary_metric": result["average_rate"], "average_cer": result["average_cer"]}
                  for manifest, result in json.loads(evaluation.read_text())["manifests"].items()}
    return {"command": command, "config": config, "overrides": overrides,
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
            "wall_seconds": int(wall.read_text()) if wall.exists() else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "eval": str(evaluation) if evaluation.exists() else None, "scores": scores,
            **({"note": note} if note else {})}


def ship(name: str, runs: Path, out: Path, config: str, overrides: list[str], command: str,
         note: str | None = None) -> Path:
    source = runs / name / "final"
    if not (source / "model.safetensors").exists():
        raise FileNotFoundError(f"{source}/model.safetensors is missing: the '{name}' stage has not finished")
    target = out / name
    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("rank_digests.json"))
    (tmp / "MADE_BY.json").write_text(json.dumps(made_by(name, runs, config, overrides, command, note), indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("name", help="the stage whose final model to ship: teacher, base, td, opd or td_opd")
    parser.add_argument("--runs", type=Path, default=Path("runs/toy"), help="the run folder the stage wrote into")
    parser.add_argument("--out", type=Path, default=Path("checkpoints/toy"), help="where shipped models live")
    parser.add_argument("--config", required=True, help="the config the stage trained with")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override the stage passed (repeatable)")
    parser.add_argument("--command", default="bash scripts/reproduce_toy.sh", help="what ran the stage")
    parser.add_argument("--note", help="anything else a reader needs to know of how the model was made")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    target = ship(args.name, args.runs, args.out, args.config, args.override, args.command, args.note)
    print(f"shipped {args.runs / args.name / 'final'} -> {target}")
    return target


if __name__ == "__main__":
    main()
