"""What lands in a run directory, and where: TensorBoard events, adapter references, no strays.

* TensorBoard: transformers' ``TensorBoardCallback`` learns its directory in
  ``on_train_begin``; an ``evaluate()`` before training logs earlier, opens a writer with
  ``log_dir=None`` (``./runs/<date>_<host>`` in the *current* directory) and keeps it for the
  whole run. :func:`pin_tensorboard_dir` gives the callback ``OUTPUT_DIR/runs/<date>_<host>``
  before anything logs (``$TENSORBOARD_LOGGING_DIR``, transformers' own override, still wins).
* Adapters: peft resolves ``adapter_config.json``'s ``base_model_name_or_path`` as given; lmforge
  writes the run's own ``base_model/`` relative to the run (:func:`relative_base_reference`).
* peft writes an empty model-card ``README.md`` beside every adapter; :func:`remove_peft_cards`
  removes it (lmforge's own files and the model's are what a run directory holds).
"""

from __future__ import annotations

import json
import os

RUNS_DIR = "runs"


def pin_tensorboard_dir(trainer, out_dir: str) -> str | None:
    """Point the trainer's TensorBoard callback at ``OUTPUT_DIR/runs/<date>_<host>``; return the directory."""
    from transformers.integrations import TensorBoardCallback
    from transformers.integrations.integration_utils import default_logdir

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            if cb.logging_dir is None:
                # default_logdir() is "runs/<date>_<host>": the same name transformers picks in on_train_begin
                cb.logging_dir = os.path.join(out_dir, default_logdir())
            return cb.logging_dir
    return None


def relative_base_reference(adapter_dir: str, base_dir: str) -> None:
    """Rewrite ``adapter_config.json`` so ``base_model_name_or_path`` is ``base_dir`` relative to the run."""
    path = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        acfg = json.load(f)
    acfg["base_model_name_or_path"] = os.path.relpath(base_dir, adapter_dir)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(acfg, f, indent=2)
    os.replace(tmp, path)


def is_peft_card(path: str) -> bool:
    """True for the model card peft's ``save_pretrained`` writes (front matter naming ``library_name: peft``)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    front = head.split("---", 2)
    return head.startswith("---") and len(front) == 3 and "library_name: peft" in front[1]


def remove_peft_cards(run_dir: str) -> None:
    """Remove peft's model cards from the run directory and its checkpoints (never a user's own README)."""
    dirs = [run_dir] + [os.path.join(run_dir, d) for d in _listdir(run_dir) if d.startswith("checkpoint-")]
    for d in dirs:
        card = os.path.join(d, "README.md")
        if os.path.isfile(card) and is_peft_card(card):
            os.remove(card)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def callback():
    """A ``TrainerCallback`` that removes peft's model card from each checkpoint as it is saved."""
    from transformers import TrainerCallback

    class RunFilesCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                remove_peft_cards(args.output_dir)

    return RunFilesCallback()
