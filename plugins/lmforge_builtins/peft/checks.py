"""Option rules shared by the built-in methods' ``check`` functions.

Each method's own ``check(options, config)`` lives in the method's module (e.g.
:func:`lmforge_builtins.peft.adalora.check`) and is run by config validation
before any model loads. Pure Python (``lmforge train --dry-run`` and
``validate`` never import torch). The helpers raise ``ValueError`` whose message
starts with ``peft.OPTION``; types, choices and unknown names are already checked
by the options schema.
"""

from __future__ import annotations

from typing import Any, Mapping


def positive(options: Mapping[str, Any], *names: str) -> None:
    """Each of ``names`` that is set must be > 0."""
    for name in names:
        value = options.get(name)
        if value is not None and value <= 0:
            raise ValueError(f"peft.{name}: must be positive, got {value}")


def fraction(options: Mapping[str, Any], *names: str) -> None:
    """Each of ``names`` that is set must be in [0, 1) (dropout rates)."""
    for name in names:
        value = options.get(name)
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"peft.{name}: must be in [0, 1), got {value}")


def recheck(check, options: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Run a method's ``check`` when it is applied, raising :class:`~lmforge.errors.ConfigError`.

    ``apply``/``load`` may be called without config validation (the Python API,
    a run directory's saved options), so they enforce the same rules.
    """
    from lmforge.errors import ConfigError

    try:
        check(options, config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def max_steps(config: Mapping[str, Any]) -> int | None:
    """``train.max_steps`` when the config sets a positive one, else None."""
    steps = (config.get("train") or {}).get("max_steps")
    try:
        steps = int(steps)
    except (TypeError, ValueError):
        return None
    return steps if steps > 0 else None
