"""Per-step metrics: a JSONL file in the run folder, a tqdm bar, and accelerate's trackers (wandb, TensorBoard).

wandb is quiet: an offline run says one line (where its files are and how to upload them) instead of
wandb's banner and closing summary; an online one keeps wandb's link to the run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm.auto import tqdm


class RunLog:
    def __init__(self, accelerator, run_dir: Path, total_steps: int, first_step: int, log_cfg, config: dict,
                 desc: str = "distill"):
        self.accelerator, self.main = accelerator, accelerator.is_main_process
        self.path = run_dir / "metrics.jsonl"
        if accelerator.log_with:
            init = {"wandb": _wandb_kwargs(log_cfg, run_dir)} if log_cfg.wandb_mode != "disabled" else {}
            accelerator.init_trackers(log_cfg.project, config=_flat(config), init_kwargs=init)
            if self.main and log_cfg.wandb_mode == "offline":
                files = Path(accelerator.get_tracker("wandb", unwrap=True).dir).parent
                print(f"wandb: offline run in {files}; upload it with `wandb sync {files}`")
        self.bar = tqdm(total=total_steps, initial=first_step, disable=not self.main, dynamic_ncols=True,
                        desc=desc)

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                 for k, v in metrics.items() if v is not None}
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **clean}) + "\n")
            shown = {k: f"{v:.4g}" for k, v in clean.items() if k in ("loss", "kl", "agreement", "lr")
                     and isinstance(v, float) and math.isfinite(v)}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        if self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in clean.items() if isinstance(v, float)}, step=step)

    def close(self) -> None:
        self.bar.close()
        if self.accelerator.log_with:
            self.accelerator.end_training()


def _wandb_kwargs(log_cfg, run_dir: Path) -> dict:
    import wandb

    # silent: no banner, no closing summary (the offline line above says what matters); quiet online keeps the link.
    settings = wandb.Settings(silent=True) if log_cfg.wandb_mode == "offline" else wandb.Settings(quiet=True)
    return {"mode": log_cfg.wandb_mode, "dir": str(run_dir), "settings": settings}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
