"""Dev-set evaluation every N steps during training, sharded over all processes, gathered on rank 0.

Rank 0 writes `eval/step-N.json` (the same report shape as train/evaluate.py), appends the step's
per-language error rates and fidelity to `eval/history.jsonl`, keeps the best step by the average
error rate over languages, and redraws `plots/dev_error_rate.png` (`plot_history`: the average bold,
one faint line per language named at its end). The clips it could not use are in `skipped_clips`
(rank 0), for the run's skipped.jsonl (train/recipe.py). An error on one rank is raised on every rank
(`EvaluationError`), the ranks kept in step (train/recipe.py's run_dev_eval decides what follows).
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from train.data.audio import AudioLimits
from train.data.manifest import Utterance, read_manifest
from train.eval.report import average_rate, score_by_language
from train.eval.timed import Transcriber, timed_transcription


class EvaluationError(RuntimeError):
    """A dev evaluation failed on some rank; every rank raises it. `failures`: [{rank, error, traceback}]."""

    def __init__(self, step: int, failures: list[dict]):
        super().__init__(f"dev evaluation at step {step} failed on "
                         + "; ".join(f"rank {f['rank']}: {f['error']}" for f in failures))
        self.step, self.failures = step, failures


class PeriodicEvaluator:
    def __init__(self, manifests: list[str] | dict[str, list[Utterance]], run_dir: str | Path, every_steps: int,
                 accelerator=None,
                 batch_size: int = 16, limits: AudioLimits = AudioLimits()):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.run_dir, self.every_steps, self.accelerator = Path(run_dir), every_steps, accelerator
        self.batch_size, self.limits = batch_size, limits
        # {spec: utterances}: read here, or already read (train/recipe.py reads a run's before any build)
        self.manifests = dict(manifests) if isinstance(manifests, dict) else {s: read_manifest(s) for s in manifests}
        self.best_step: int | None = None
        self.best_rate: float | None = None
        self.history: list[dict] = []
        self.last_step: int | None = None  # the step evaluated last, on every rank (the history is rank 0's)
        self.listening = None  # a ListeningProbe (train/eval/listening.py), or None
        # the last evaluation's unusable dev clips, [{id, audio, reason, detail}], from every rank (on rank 0)
        self.skipped_clips: list[dict] = []

    @property
    def _rank_world(self) -> tuple[int, int]:
        if self.accelerator is None:
            return 0, 1
        return self.accelerator.process_index, self.accelerator.num_processes

    def _max_over_ranks(self, local: int) -> int:
        """Every rank runs as many batches as the busiest one (ZeRO-3 forwards are collective)."""
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return local
        import torch

        count = torch.tensor(local, device=self.accelerator.device)
        return int(self.accelerator.reduce(count, reduction="max"))

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every_steps == 0

    def _gather(self, rows: list) -> list:
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return rows
        from accelerate.utils import gather_object

        return gather_object(rows)

    def evaluate(self, step: int, transcriber: Transcriber, model=None) -> dict | None:
        """Evaluate this rank's shard of every dev manifest; on rank 0 return the report (others: None).
        With `model` and a listening probe, the own- vs swapped-audio loss gap goes in the report too
        (every rank runs the probe: ZeRO-3 forwards are collective).
        An error on one rank raises EvaluationError on every rank, naming it: that rank still takes its part in
        each collective the others reach (a batch-count reduce per manifest, then the gather), so none is left
        waiting. Not covered: an error inside a forward that is itself collective (ZeRO-3, FSDP), which holds
        the other ranks until the collective timeout (faults.collective_timeout_s)."""
        rank, world = self._rank_world
        reduces = 0

        def equal_batches(local: int) -> int:
            nonlocal reduces
            reduces += 1
            return self._max_over_ranks(local)

        rows, failure, error = [], None, None
        try:
            listening = self.listening(model) if self.listening is not None and model is not None else None
            for spec, utterances in self.manifests.items():
                rows.append(self._evaluate_shard(spec, utterances[rank::world], transcriber, equal_batches))
        except Exception as err:  # noqa: BLE001 - raised below on every rank, once the ranks are in step
            error, failure = err, {"rank": rank, "error": f"{type(err).__name__}: {err}",
                                   "traceback": traceback.format_exc()}
            for _ in range(len(self.manifests) - reduces):  # the reduces the other ranks still make
                self._max_over_ranks(0)
        gathered = self._gather(rows + ([{"failure": failure}] if failure else []))
        failures = [r["failure"] for r in gathered if "failure" in r]
        if failures:
            raise EvaluationError(step, failures) from error
        self.last_step = step
        if rank != 0:
            self.skipped_clips = []
            return None
        self.skipped_clips = [clip for r in gathered for clip in r["skipped_clips"]]
        return self._record(step, gathered, listening)

    def _evaluate_shard(self, spec: str, shard: list[Utterance], transcriber: Transcriber, equal_batches) -> dict:
        """This rank's row of one manifest: references, hypotheses, skips and timing of its `shard`."""
        rank = self._rank_world[0]
        result = timed_transcription(transcriber, shard, batch_size=self.batch_size, limits=self.limits,
                                     warmup_batches=0, equal_batches=equal_batches)
        return {"spec": spec, "rank": rank, "refs": result.references, "hyps": result.hypotheses,
                "languages": result.languages,
                "skipped": {k: dict(v) for k, v in result.skipped_by_language.items()},
                "audio_seconds": result.audio_seconds, "seconds": result.transcription_seconds,
                "skipped_clips": [{"id": c.id, "audio": c.audio, "reason": c.reason, "detail": c.detail}
                                  for c in result.skipped_clips]}

    def _record(self, step: int, rows: list[dict], listening: dict | None = None) -> dict:
        report = {"step": step, "manifests": {}}
        if listening is not None:
            report["listening"] = listening
        for spec in self.manifests:
            parts = [r for r in rows if r["spec"] == spec]
            refs = [x for r in parts for x in r["refs"]]
            hyps = [x for r in parts for x in r["hyps"]]
            langs = [x for r in parts for x in r["languages"]]
            skipped: dict[str, dict] = {}
            for r in parts:
                for lang, reasons in r["skipped"].items():
                    for reason, n in reasons.items():
                        skipped.setdefault(lang, {})[reason] = skipped.get(lang, {}).get(reason, 0) + n
            languages = score_by_language(refs, hyps, langs, skipped)
            audio = sum(r["audio_seconds"] for r in parts)
            slowest = max((r["seconds"] for r in parts), default=0.0)  # ranks run in parallel
            report["manifests"][spec] = {"utterances": len(refs), "audio_seconds": audio,
                                         "rtfx": audio / slowest if slowest else None,
                                         "average_rate": average_rate(languages), "languages": languages}
        rates = [m["average_rate"] for m in report["manifests"].values() if m["average_rate"] is not None]
        report["average_rate"] = sum(rates) / len(rates) if rates else None
        if report["average_rate"] is not None and (self.best_rate is None or report["average_rate"] < self.best_rate):
            self.best_step, self.best_rate = step, report["average_rate"]
        report["best_step"], report["best_average_rate"] = self.best_step, self.best_rate
        self.history.append(self._summary(report))
        self._write(step, report)
        return report

    @staticmethod
    def _summary(report: dict) -> dict:
        per_language: dict[str, dict] = {}
        for m in report["manifests"].values():
            for lang, row in m["languages"].items():
                if "rate" in row:
                    per_language[lang] = {"rate": row["rate"], "fidelity": row.get("fidelity")}
        summary = {"step": report["step"], "average_rate": report["average_rate"], "languages": per_language}
        if "listening" in report:
            summary["listening"] = report["listening"]
        return summary

    def metrics(self, report: dict) -> dict[str, float]:
        """Flat scalars for the step's log line: dev/<lang>/rate, dev/<lang>/fidelity, dev/average_rate."""
        out = {"dev/average_rate": report["average_rate"]}
        out.update({f"dev/{k}": v for k, v in report.get("listening", {}).items()})
        for lang, row in self._summary(report)["languages"].items():
            out[f"dev/{lang}/rate"] = row["rate"]
            if row["fidelity"] is not None:
                out[f"dev/{lang}/fidelity"] = row["fidelity"]
        return out

    def _write(self, step: int, report: dict) -> None:
        eval_dir = self.run_dir / "eval"
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / f"step-{step}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        (eval_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in self.history))
        self.plot(self.run_dir / "plots" / "dev_error_rate.png")

    def plot(self, path: Path) -> Path:
        fig = plot_history(self.history, self.best_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        return path

    def state_dict(self) -> dict:
        return {"best_step": self.best_step, "best_rate": self.best_rate, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.best_step, self.best_rate, self.history = state["best_step"], state["best_rate"], list(state["history"])
        self.last_step = self.history[-1]["step"] if self.history else None


def plot_history(history: list[dict], best_step: int | None = None):
    """The figure of `plots/dev_error_rate.png` (a matplotlib Figure, drawn without pyplot): the average
    over languages bold and black, each language a thin faint line named at its end (no legend, which
    19 languages would crowd), integer steps on x, and the best step marked. A single evaluation (step 0,
    say) is a point centred on its step."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    languages = sorted({lang for h in history for lang in h["languages"]})
    fig = Figure(figsize=(8, 4.5 + 0.1 * max(0, len(languages) - 12)))
    ax = fig.subplots()
    ends = []  # ((step, rate), name, colour, bold) of each line's last point
    highest = 0.0
    for k, lang in enumerate(languages):
        points = [(h["step"], 100 * h["languages"][lang]["rate"]) for h in history
                  if h["languages"].get(lang, {}).get("rate") is not None]
        if not points:
            continue
        colour = PALETTE[k % len(PALETTE)]
        ax.plot(*zip(*points), color=colour, lw=0.9, alpha=0.6, marker="o", ms=2.5, label=lang)
        ends.append((points[-1], lang, colour, False))
        highest = max([highest, *(y for _, y in points)])
    average = [(h["step"], 100 * h["average_rate"]) for h in history if h["average_rate"] is not None]
    if average:
        ax.plot(*zip(*average), color="black", lw=2.4, marker="o", ms=4, label="average", zorder=3)
        ends.append((average[-1], "average", "black", True))
        highest = max([highest, *(y for _, y in average)])

    steps = sorted({h["step"] for h in history})
    if steps:
        lo, hi = steps[0], steps[-1]
        margin = 0.5 if lo == hi else 0.04 * (hi - lo)
        ax.set_xlim(lo - margin, hi + margin)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_ylim(0, highest * 1.08 if highest > 0 else 1.0)
    bottom, top = ax.get_ylim()
    gap = (top - bottom) * (8.5 / 72) / (0.75 * fig.get_figheight())  # one 7-point label's height
    for ((x, _), name, colour, bold), y in zip(ends, _spread([y for (_, y), *_ in ends], gap, bottom)):
        ax.annotate(name, xy=(x, y), xytext=(6, 0), textcoords="offset points", va="center",
                    fontsize=8 if bold else 7, color=colour, fontweight="bold" if bold else "normal",
                    annotation_clip=False)
    if best_step is not None:
        if len(steps) > 1:
            ax.axvline(best_step, color="grey", ls=":", lw=1)
        ax.annotate(f"best: step {best_step}", xy=(best_step, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -2), textcoords="offset points", va="top", fontsize=7, color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel("dev error rate (%)")
    ax.set_title("dev error rate by language (WER; CER for zh/ja/ko)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


# tab10 then the dark half of tab20b: distinct hues, none as dark as the black average
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3", "#8ca252", "#bd9e39",
           "#ad494a", "#a55194"]


def _spread(heights: list[float], gap: float, floor: float = 0.0) -> list[float]:
    """Label heights as near `heights` as they can be while at least `gap` apart (same order as given):
    pushed up where they crowd, then all moved back down by the average push, none below `floor`."""
    order = sorted(range(len(heights)), key=lambda i: heights[i])
    placed: dict[int, float] = {}
    previous = None
    for i in order:
        placed[i] = heights[i] if previous is None else max(heights[i], previous + gap)
        previous = placed[i]
    if not placed:
        return []
    shift = min(sum(placed[i] - heights[i] for i in placed) / len(placed), min(placed.values()) - floor)
    return [placed[i] - shift for i in range(len(heights))]
