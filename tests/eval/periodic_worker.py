"""Run by test_periodic.py under a 2-process CPU launch: evaluate twice, rank 0 prints the reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from tests.conftest import sharpen, tiny_config  # noqa: E402
from train.eval.periodic import PeriodicEvaluator  # noqa: E402
from train.eval.timed import StudentTranscriber  # noqa: E402
from train.models import build_student  # noqa: E402


def main(manifest: str, run_dir: str, out: str) -> None:
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model, processor = build_student(tiny_config())
    model = sharpen(model).eval()
    evaluator = PeriodicEvaluator([manifest], run_dir, every_steps=2, accelerator=accelerator, batch_size=2)
    transcriber = StudentTranscriber(model, processor, max_new_tokens=6)
    reports = [evaluator.evaluate(step, transcriber) for step in (2, 4)]
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps({"world": accelerator.num_processes, "reports": reports}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
