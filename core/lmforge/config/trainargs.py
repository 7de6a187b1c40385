"""The ``train:`` section: lmforge's defaults, and its checks before any work.

:func:`check_names` checks every key against the ``transformers.TrainingArguments``
fields (with a did-you-mean) and simple value types. ``TrainingArguments`` accepts a
string for its enum fields (``optim``, ``lr_scheduler_type``, ``save_strategy`` ...)
and only complains when the trainer is built, after tokenization, with a list of
every name; :func:`check_values` checks every enum-typed key against the enum's values
with one ``error:`` line and the closest name. :func:`check_combination` then builds
the ``TrainingArguments`` the run will build (in a temporary output directory), so
conflicting keys fail in ``--dry-run`` and at the start of a run, not minutes later.
:func:`lmforge.config.spec.build_spec` runs the three, once per job.
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

def with_train_defaults(train: Mapping | None) -> dict:
    """lmforge's defaults, then the user's ``train:`` keys (the base of
    :func:`lmforge.config.spec.training_arguments`; also how two runs' ``train:`` sections are compared)."""
    args = dict(TRAIN_DEFAULTS)
    args.update(train or {})
    return args


def check_names(train: Mapping) -> None:
    """Every ``train:`` key is a ``TrainingArguments`` field (with a did-you-mean), and simple values have its type."""
    import dataclasses

    from transformers import TrainingArguments

    from lmforge.plugins.descriptors import Option

    fields = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    for key, value in train.items():
        if key not in fields:
            raise ConfigError(
                f"train.{key}: not a transformers.TrainingArguments field{did_you_mean(key, fields)}"
            )
        hint = fields[key].type
        if isinstance(hint, str):
            simple = {"int": int, "float": float, "bool": bool, "str": str}.get(hint.strip())
        else:
            simple = hint if hint in (int, float, bool, str) else None
            if simple is None and typing.get_origin(hint) is typing.Union:
                args = [a for a in typing.get_args(hint) if a is not type(None)]
                simple = args[0] if len(args) == 1 and args[0] in (int, float, bool, str) else None
        if simple is not None and value is not None:
            try:
                Option(key, simple).coerce(value, f"train.{key}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


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


def check_values(train: Mapping) -> None:
    """Every enum-typed ``train.*`` value is one of the enum's names (``train.optim``, ``train.lr_scheduler_type``...)."""
    fields = _enum_fields()
    for key, value in train.items():
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


def check_combination(arguments: Mapping[str, Any]) -> None:
    """Build the job's ``TrainingArguments`` in a temporary directory; a conflict is one ``train:`` error.

    ``arguments`` are the keywords :func:`lmforge.config.spec.training_arguments` made (not changed here).
    """
    from transformers import TrainingArguments

    kwargs = dict(arguments)
    kwargs.pop("deepspeed", None)  # the deepspeed launcher writes and checks its own config
    with tempfile.TemporaryDirectory(prefix="lmforge-check-") as tmp:
        kwargs["output_dir"] = os.path.join(tmp, "out")
        try:
            TrainingArguments(**kwargs)
        except (ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"train: {first}") from None
