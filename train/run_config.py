"""Which settings a resumed run may change, and the check of a resume against the saved settings.

A checkpoint's state (weights, optimizer moments, the schedule's position, the sampler's position, RNG)
means something only under the settings that made it: resuming it with another learning rate, model,
batch budget or seed silently trains a run that is neither the old one nor a new one. So a resume is
compared with the config.yaml saved with its checkpoint, and only the keys in RESUMABLE may differ.
The list is of the harmless keys, not of the dangerous ones: a key added to the config later is
refused on resume until someone decides it is harmless and lists it here.
"""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from train.config import ConfigError

# Keys a resume may change: where the run goes and how long, what is measured and logged, and how
# (not what) it computes. "section.*" is every key of a section.
RESUMABLE = (
    "output_dir",  # resume=DIR into a new folder
    "resume",
    "max_steps",  # extending a run (under a cosine schedule the curve follows the new length: said in the log)
    "max_nonfinite_in_a_row",  # when to give up, not what a step does
    "checkpoint.*",  # when checkpoints are written, how many are kept, what a failed write does
    "data.num_workers",  # loader processes; the sampler alone decides the batches
    "data.keep_audio",  # raw audio in the batches or not (the recipe turns it on where a teacher needs it)
    "eval.*",  # cadence and settings of the dev evaluation
    "log.*",
    "decode.*",  # which decoding engine runs the rollouts and the dev evaluation
    "faults.*",  # which signals stop the run cleanly, how long a collective waits: how, not what, it computes
    "teacher.rows_per_forward",  # memory only: the teacher's rows per forward, same scores
    "optim.logits_chunk",  # memory only: the scored head's chunking, same loss and gradients
)

ABSENT = object()  # a key one of the two configs does not have (added or removed since)


def resumable(key: str) -> bool:
    """Whether a resume may change `key` (dotted, with [i] for list items)."""
    return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in RESUMABLE)


def flat_settings(config_yaml: str) -> dict[str, object]:
    """A config.yaml as {dotted key: value}; lists of sections (data.train) as key[i].field."""
    flat: dict[str, object] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            for i, item in enumerate(value):
                walk(item, f"{key}[{i}]")
        else:
            flat[key] = value

    walk(OmegaConf.to_container(OmegaConf.create(config_yaml)), "")
    return flat


Change = tuple[str, object, object]  # (key, saved value, new value)


def compare_settings(saved_yaml: str, new_yaml: str) -> tuple[list[Change], list[Change]]:
    """(refused, allowed) changes from the saved config to the new one, each sorted by key."""
    saved, new = flat_settings(saved_yaml), flat_settings(new_yaml)
    changes = [(key, saved.get(key, ABSENT), new.get(key, ABSENT)) for key in sorted(saved.keys() | new.keys())
               if saved.get(key, ABSENT) != new.get(key, ABSENT)]
    return [c for c in changes if not resumable(c[0])], [c for c in changes if resumable(c[0])]


def _show(value) -> str:
    if value is ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value)


def resume_changes(saved_yaml: str, new_yaml: str, source: str) -> str | None:
    """Check a resume's settings against the ones saved in `source`: raise a ConfigError with the diff
    and the ways out if any refused key changed; else the log line naming the allowed changes (or None)."""
    refused, allowed = compare_settings(saved_yaml, new_yaml)
    if refused:
        diff = "\n".join(f"  {key}: {_show(old)} → {_show(new)}" for key, old, new in refused)
        raise ConfigError(
            f"resume: these settings differ from the ones saved in {source}, and the saved state (weights, "
            f"optimizer, schedule, data position) means something only under those:\n{diff}\n"
            "The ways out: keep the saved values to continue this run; or start a new run under the new "
            "settings with another output_dir=DIR; or resume=never to train from step 0 in this folder "
            "(remove its checkpoints/ first: a later resume=auto would pick the newest of them). "
            f"A resume may change only: {', '.join(RESUMABLE)}")
    if not allowed:
        return None
    line = "resuming with changed settings: " + ", ".join(f"{k} {_show(old)} → {_show(new)}"
                                                          for k, old, new in allowed)
    if any(k == "max_steps" for k, _, _ in allowed) and flat_settings(new_yaml).get("optim.schedule") == "cosine":
        line += " (optim.schedule=cosine: the learning rate follows the new max_steps from here)"
    return line
