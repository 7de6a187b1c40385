"""lmforge: a plugin-based fine-tuning framework for large language models.

Importing ``lmforge`` is cheap (no torch): the training API (:class:`FineTune`,
:class:`Completion`, :func:`load`) is imported on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import logging

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("lmforge")
"""Decorator marking a plugin function as an implementation of a hook in :mod:`lmforge.plugins.hookspecs`."""


def _quiet_optional_kernel_warning(record: logging.LogRecord) -> bool:
    # bitsandbytes warns at import that an optional hub-downloaded CPU kernel is missing;
    # its built-in fallback is what we use (no hub access here), so the warning is noise.
    return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_quiet_optional_kernel_warning)

_LAZY = {
    "FineTune": "lmforge.api:FineTune",
    "Completion": "lmforge.inference.generation:Completion",
    "GenerationResult": "lmforge.inference.generation:GenerationResult",
    "SamplingParams": "lmforge.inference.generation:SamplingParams",
    "RemoteCompletion": "lmforge.inference.remote:RemoteCompletion",
    "load": "lmforge.modeling.loading:load",
}

if TYPE_CHECKING:  # pragma: no cover
    from lmforge.api import FineTune
    from lmforge.inference.generation import Completion, GenerationResult, SamplingParams
    from lmforge.inference.remote import RemoteCompletion
    from lmforge.modeling.loading import load


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
    from lmforge.plugins.descriptors import resolve_ref

    value = resolve_ref(target)
    globals()[name] = value
    return value


__all__ = ["hookimpl", "__version__", *_LAZY]
