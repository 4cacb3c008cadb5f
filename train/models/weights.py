"""Reading checkpoint weights from a directory, and loading a subset of them strictly.

Only safetensors or `torch.load(weights_only=True)`: a checkpoint can never run code on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open


def read_weights(path: str | Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint dir (model.safetensors, a sharded safetensors index, or pytorch_model.bin);
    with `keep`, only the keys it accepts are read (safetensors reads no other bytes)."""
    path = Path(path)
    wanted = keep or (lambda key: True)
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({shard for key, shard in weight_map.items() if wanted(key)})
    elif (path / "pytorch_model.bin").exists():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v for k, v in state.items() if wanted(k)}
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    out: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(path / name, framework="pt") as f:
            out.update({key: f.get_tensor(key) for key in f.keys() if wanted(key)})
    return out


def read_config_json(path: str | Path) -> dict:
    file = Path(path) / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{file}: not found; a checkpoint directory needs its config.json")
    return json.loads(file.read_text())


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_weights(expected: dict[str, torch.Size], found: dict[str, torch.Size], where: str,
                  may_be_missing: set[str] = frozenset()) -> None:
    """Raise naming every missing, unexpected or wrongly shaped weight: never load half-random."""
    missing = set(expected) - set(found) - set(may_be_missing)
    unexpected = set(found) - set(expected)
    mismatched = [f"{k} {tuple(found[k])} != {tuple(expected[k])}" for k in sorted(set(found) & set(expected))
                  if tuple(found[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing weights: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected weights: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes (checkpoint != model): {_listing(mismatched)}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def raise_on_loading_info(info: dict, where: str, file_name=None) -> None:
    """transformers' `from_pretrained(..., output_loading_info=True)` fills missing weights with random
    values and only logs it; turn any missing, unexpected or mismatched weight into an error.
    `file_name` maps a model key to its name in the checkpoint file, where the two differ."""
    problems = []
    if info.get("missing_keys"):
        named = (f"{file_name(k)} (model: {k})" if file_name else k for k in info["missing_keys"])
        problems.append(f"missing weights: {_listing(named)}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected weights: {_listing(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        problems.append(f"wrong shapes: {_listing(str(m) for m in info['mismatched_keys'])}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def load_subset(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...],
                where: str, may_be_missing: set[str] = frozenset()) -> None:
    """Copy `state_dict` into the model's weights under `prefixes`, which it must match exactly."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    check_weights({k: v.shape for k, v in own.items()}, {k: v.shape for k, v in state_dict.items()}, where,
                  may_be_missing)
    with torch.no_grad():
        for key, value in state_dict.items():
            own[key].copy_(value)
