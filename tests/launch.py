"""Multi-process launches for the tests: accelerate with a free port each, so that two launches on one
machine (two test sessions, or CI beside a developer) never meet on accelerate's default 29500."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# DeepSpeed compiles a shared-memory op on first use (~1 min); keep it between runs.
EXTENSIONS = str(Path.home() / ".cache" / "torch_extensions")


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(backend: str = "ddp", processes: int = 2) -> list[str]:
    """`accelerate launch` for a backend: ddp (2 CPU processes, gloo), or a configs/accelerate/ file name."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())]
    if backend == "ddp":
        return cmd + ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision",
                      "no", "--dynamo_backend", "no"]
    return cmd + ["--config_file", str(ROOT / "configs" / "accelerate" / f"{backend}.yaml")]


def run(cmd: list[str], env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": EXTENSIONS,
           **(env_extra or {})}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
