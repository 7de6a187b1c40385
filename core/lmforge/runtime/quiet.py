"""Quiet by default: no library noise the user cannot act on; ``--verbose`` (or ``LMFORGE_VERBOSE=1``) shows it.

What is hidden unless verbose:

* ``FutureWarning`` / ``DeprecationWarning`` raised inside torch, transformers, peft,
  accelerate and deepspeed (e.g. peft calling transformers' deprecated
  ``is_gradient_checkpointing``): they concern those libraries' own calls;
* DeepSpeed's "Setting accelerator to CPU" line: accelerate imports deepspeed whenever it
  is installed, even for runs that do not use it; on a machine without CUDA lmforge sets
  ``DS_ACCELERATOR=cpu`` (what DeepSpeed would pick anyway), which DeepSpeed takes
  silently. A value already in the environment is kept.

lmforge's own warnings (``[lmforge] warning: ...``) are always shown.
"""

from __future__ import annotations

import os
import warnings

ENV = "LMFORGE_VERBOSE"
LIBRARIES = r"(torch|transformers|peft|accelerate|deepspeed|tensorboard|torch\.utils\.tensorboard)(\.|$)"


def verbose() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_verbose(on: bool) -> None:
    """Record ``--verbose`` for this process and the processes it starts (launchers, workers)."""
    if on:
        os.environ[ENV] = "1"
        for category in (FutureWarning, DeprecationWarning):  # undo configure_warnings() of this process
            warnings.filterwarnings("default", category=category, module=LIBRARIES)


def configure_warnings() -> None:
    """Hide the libraries' deprecation warnings unless verbose (no torch import)."""
    if verbose():
        return
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)


def configure_for_training(cuda_available: bool) -> None:
    """Before the trainer is built: the warning filters, and DeepSpeed's accelerator on CPU-only machines."""
    configure_warnings()
    if not verbose() and not cuda_available:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
