"""Third-party messages that say something expected here, dropped where they are emitted, one message each.

- DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect
  it.", printed when something first imports deepspeed (accelerate does, unwrapping a model) and torch
  sees no GPU: a run with no GPU runs on the CPU on purpose (`expect_cpu`, from make_accelerator).
- accelerate's "Removed shared tensor {'lm_head.weight'} while saving" at every checkpoint: the student
  ties its lm_head to its input embeddings (decoder.tie_word_embeddings) and loading ties them again
  (`tied_embeddings_saved`, around save_state).
- transformers' "Writing model shards" progress bar of a final save (`no_shard_bar`).

Each is a logging.Filter on the logger that emits the message (or a hook on that one bar): every other
message of those loggers still shows.
"""

from __future__ import annotations

import contextlib
import logging
import re


class DropMessage(logging.Filter):
    """Drops the records of one logger whose message matches `pattern`; lets the others through."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


CPU_NOTICE = DropMessage(r"^Setting accelerator to CPU\. If you have GPU")
# accelerate's logger prefixes "[RANK n] "; a wrapped student (CTC head, LoRA) prefixes the key's path.
TIED_SAVE = DropMessage(r"Removed shared tensor \{'([\w.]+\.)?lm_head\.weight'\} while saving")


def expect_cpu() -> None:
    """No GPU on purpose: DeepSpeed need not say it falls back to the CPU. Stays on for the process
    (deepspeed is imported later, lazily, and says it once)."""
    logger = logging.getLogger("DeepSpeed")  # deepspeed.utils.logging's, the same object once it exists
    if CPU_NOTICE not in logger.filters:
        logger.addFilter(CPU_NOTICE)


@contextlib.contextmanager
def tied_embeddings_saved():
    """While saving a checkpoint: the tied lm_head is left out of the file on purpose."""
    logger = logging.getLogger("accelerate.utils.other")  # clean_state_dict_for_safetensors's
    logger.addFilter(TIED_SAVE)
    try:
        yield
    finally:
        logger.removeFilter(TIED_SAVE)


@contextlib.contextmanager
def no_shard_bar():
    """While saving the final model: no progress bar for writing its shard(s), which takes a moment."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # an older transformers: the bar stays
        yield
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") == "Writing model shards":
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

    previous = set_hook(hook)
    try:
        yield
    finally:
        set_hook(previous)
