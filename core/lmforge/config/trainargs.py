"""Checks of the ``train:`` section before any work: names with a did-you-mean, then the combination.

``transformers.TrainingArguments`` accepts a string for its enum fields (``optim``,
``lr_scheduler_type``, ``save_strategy`` ...) and only complains when the trainer
is built, after tokenization, with a list of every name. :func:`check_values` checks
every enum-typed key against the enum's values with one ``error:`` line and the
closest name; :func:`check_combination` then builds the ``TrainingArguments`` the run
would build (in a temporary output directory), so conflicting keys fail in
``--dry-run`` and at the start of a run, not minutes later.
"""

from __future__ import annotations

import enum
import os
import tempfile
import typing
from typing import Any, Mapping

from lmforge.errors import ConfigError, did_you_mean

# lmforge's defaults for TrainingArguments, applied under the user's train: section.
TRAIN_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "learning_rate": 2.0e-4,
    "num_train_epochs": 1,
    "logging_steps": 10,
    "save_steps": 500,
    "save_total_limit": 3,
    "report_to": ["tensorboard"],
    "seed": 42,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "remove_unused_columns": False,
    "disable_tqdm": False,
}

def train_arguments(cfg: Mapping) -> dict:
    """The keyword arguments for ``TrainingArguments``: lmforge defaults, then ``train:``."""
    args = dict(TRAIN_DEFAULTS)
    args.update(cfg.get("train") or {})
    args["output_dir"] = cfg["output_dir"]  # TensorBoard events land in OUTPUT_DIR/runs/
    return args


def _enum_fields() -> dict[str, type[enum.Enum]]:
    import dataclasses

    from transformers import TrainingArguments

    try:
        hints = typing.get_type_hints(TrainingArguments)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: check nothing rather than fail
        return {}
    out: dict[str, type[enum.Enum]] = {}
    for f in dataclasses.fields(TrainingArguments):
        hint = hints.get(f.name)
        candidates = typing.get_args(hint) or (hint,)
        for c in candidates:
            if isinstance(c, type) and issubclass(c, enum.Enum):
                out[f.name] = c
                break
    return out


def check_values(cfg: Mapping) -> None:
    """Every enum-typed ``train.*`` value is one of the enum's names (``train.optim``, ``train.lr_scheduler_type``...)."""
    fields = _enum_fields()
    for key, value in (cfg.get("train") or {}).items():
        kind = fields.get(key)
        if kind is None or value is None or isinstance(value, enum.Enum):
            continue
        names = [str(m.value) for m in kind]
        if isinstance(value, str) and value in names:
            continue
        if isinstance(value, bool) and ("no" if value is False else "yes") in names:
            raise ConfigError(f"train.{key}: YAML reads an unquoted {'no' if value is False else 'yes'} as "
                              f"{value}; write '{'no' if value is False else 'yes'}' in quotes")
        shown = ", ".join(names) if len(names) <= 8 else ", ".join(names[:8]) + f" ... ({len(names)} in all)"
        raise ConfigError(f"train.{key}: {value!r} is not one of transformers' {kind.__name__}{did_you_mean(value, names)}; "
                          f"known: {shown}")


def run_kwargs(cfg: Mapping) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords ``run_training`` passes, as far as they are known before data is read."""

    kwargs = train_arguments(cfg)
    kwargs.pop("resume_from_checkpoint", None)
    kwargs.setdefault("include_num_input_tokens_seen", "non_padding")
    try:
        import torch

        if not torch.cuda.is_available():
            kwargs.setdefault("dataloader_pin_memory", False)
            kwargs.setdefault("use_cpu", True)
    except ImportError:
        pass
    if (cfg.get("data") or {}).get("valid_file") and "eval_strategy" not in (cfg.get("train") or {}):
        kwargs["eval_strategy"] = "steps"
        kwargs.setdefault("eval_steps", kwargs.get("save_steps", 500))
    if cfg.get("gradient_checkpointing"):
        kwargs["gradient_checkpointing"] = True
    return kwargs


def check_combination(cfg: Mapping) -> None:
    """Build the run's ``TrainingArguments`` in a temporary directory; a conflict is one ``train:`` error."""
    from transformers import TrainingArguments

    kwargs = run_kwargs(cfg)
    kwargs.pop("deepspeed", None)  # the deepspeed launcher writes and checks its own config
    with tempfile.TemporaryDirectory(prefix="lmforge-check-") as tmp:
        kwargs["output_dir"] = os.path.join(tmp, "out")
        try:
            TrainingArguments(**kwargs)
        except (ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"train: {first}") from None


def check(cfg: Mapping) -> None:
    """Names first (with a did-you-mean), then the combination."""
    check_values(cfg)
    check_combination(cfg)
