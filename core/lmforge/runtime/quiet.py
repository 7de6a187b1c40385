"""Quiet by default: no library noise the user cannot act on; ``--verbose`` (or ``LMFORGE_VERBOSE=1``) shows it.

What is hidden unless verbose:

* ``FutureWarning`` / ``DeprecationWarning`` raised inside torch, transformers, peft,
  accelerate and deepspeed (e.g. peft calling transformers' deprecated
  ``is_gradient_checkpointing``): they concern those libraries' own calls;
* DeepSpeed's "Setting accelerator to CPU" line: accelerate imports deepspeed whenever it
  is installed, even for runs that do not use it; on a machine without CUDA lmforge sets
  ``DS_ACCELERATOR=cpu`` (what DeepSpeed would pick anyway), which DeepSpeed takes
  silently. A value already in the environment is kept;
* the evaluation progress bar during training: transformers' ``ProgressCallback`` opens
  a second bar for every evaluation inside ``train()``, whose updates interleave with
  the training bar on stderr (:func:`quiet_progress` keeps the training bar and the bar
  of an evaluation outside training, e.g. the eval before it).

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


def quiet_progress(trainer) -> None:
    """Unless verbose: the trainer's ``ProgressCallback`` shows no evaluation bar while the training bar is open.

    Swaps transformers' ``ProgressCallback`` (present unless ``disable_tqdm``) for a subclass
    whose ``on_prediction_step`` only draws while no training bar exists; the training bar,
    its log lines and the bar of ``evaluate()`` before or after ``train()`` are unchanged.
    """
    if verbose():
        return
    from transformers.trainer_callback import ProgressCallback

    class TrainingBarProgress(ProgressCallback):
        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            if self.training_bar is None:
                super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(TrainingBarProgress())
