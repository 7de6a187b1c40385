"""Helpers shared by the built-in PEFT methods.

- peft-format runs: :func:`load_peft_adapter`, :func:`merge_peft`;
- methods peft does not know (freeze, bitfit, unipelt) save only the tensors
  they trained plus a small JSON config: :func:`save_trained_tensors`,
  :func:`load_trained_tensors`;
- finding a model's stack of decoder layers without knowing its family:
  :func:`decoder_layers`;
- the two kinds of descriptor most methods are: :func:`peft_adapter_method`
  (the run is a peft adapter) and :func:`trained_tensors_method`.

Imports torch/peft inside functions only (this module is referenced by
``"module:attr"`` strings from the registrations).
"""

from __future__ import annotations

import json
import os
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.plugins.descriptors import PeftMethod

TRAINED_WEIGHTS = "trained_weights.safetensors"
TRAINED_CONFIG = "lmforge_peft.json"



# --------------------------------------------------------------------------
# descriptors


def peft_adapter_method(module: str, **fields: Any) -> PeftMethod:
    """The :class:`PeftMethod` of a method whose run directory is a peft adapter.

    Defaults, which ``fields`` override: ``apply`` and ``check`` are the functions of
    those names in ``module``; peft loads (:func:`load_peft_adapter`) and merges
    (:func:`merge_peft`) the adapter (``merge=None`` for methods that cannot merge);
    ``peft`` is required.
    """
    return PeftMethod(**{"apply": f"{module}:apply", "check": f"{module}:check",
                         "load": f"{__name__}:load_peft_adapter", "merge": f"{__name__}:merge_peft",
                         "saves": "peft-adapter", "requires": ("peft",), **fields})


def trained_tensors_method(module: str, **fields: Any) -> PeftMethod:
    """The :class:`PeftMethod` of a method that saves only the tensors it trained (:func:`save_trained_tensors`).

    Defaults, which ``fields`` override: ``apply``, ``save``, ``load`` and ``check``
    are the functions of those names in ``module``.
    """
    return PeftMethod(**{"apply": f"{module}:apply", "save": f"{module}:save", "load": f"{module}:load",
                         "check": f"{module}:check", "saves": "trained-tensors", **fields})


# --------------------------------------------------------------------------
# peft's own format


def load_peft_adapter(base_model, run_dir: str, options: dict):
    """Rebuild a trained peft model from ``run_dir`` (``adapter_config.json`` + safetensors)."""
    from peft import PeftModel

    from lmforge.modeling.hfcompat import peft_prompt_learning_compat

    return peft_prompt_learning_compat(PeftModel.from_pretrained(base_model, run_dir, is_trainable=False))


def merge_peft(model):
    """Fold the adapter into the base weights and return the plain transformers model."""
    return model.merge_and_unload()


# --------------------------------------------------------------------------
# trained tensors only (freeze, bitfit, unipelt)


def trainable_state(model) -> dict[str, Any]:
    """``{name: tensor}`` of every parameter that requires grad (copied, contiguous, on CPU)."""
    out = {}
    seen: dict[int, str] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen[id(p)] = name
        out[name] = p.detach().to("cpu").contiguous().clone()
    return out


def save_trained_tensors(model, tokenizer, out_dir: str, method: str, options: dict) -> None:
    """Write ``trained_weights.safetensors`` (the parameters that trained) and ``lmforge_peft.json``.

    Called by ``save`` of the methods that do not use peft's format, at the end of
    training. The base weights are not written: the run reloads them from its base
    model (``OUTPUT_DIR/base_model`` for presets).
    """
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = trainable_state(model)
    if not tensors:
        raise LmforgeError(f"peft.method {method!r}: nothing was trainable, so there is nothing to save")
    save_file(tensors, os.path.join(out_dir, TRAINED_WEIGHTS), metadata={"format": "pt", "lmforge_method": method})
    meta = {
        "method": method,
        "options": options,
        "tensors": {name: list(t.shape) for name, t in tensors.items()},
        "trained_params": int(sum(t.numel() for t in tensors.values())),
    }
    with open(os.path.join(out_dir, TRAINED_CONFIG), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def load_trained_tensors(model, run_dir: str, method: str) -> None:
    """Copy the tensors saved by :func:`save_trained_tensors` into ``model`` (same names, same shapes).

    Raises :class:`LmforgeError` when the file is missing or a tensor has no
    counterpart in the model (the run was trained with other options or another base).
    """
    import torch
    from safetensors.torch import load_file

    path = os.path.join(run_dir, TRAINED_WEIGHTS)
    if not os.path.isfile(path):
        raise LmforgeError(f"{run_dir}: no {TRAINED_WEIGHTS}; not a finished {method!r} run")
    tensors = load_file(path)
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise LmforgeError(
            f"{path}: {len(missing)} saved tensors have no parameter in the model (first: {missing[0]!r}); "
            "was the run trained on another base model or with other options?"
        )
    with torch.no_grad():
        for name, t in tensors.items():
            p = params[name]
            if tuple(p.shape) != tuple(t.shape):
                raise LmforgeError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the model {tuple(p.shape)}")
            p.copy_(t.to(dtype=p.dtype, device=p.device))


def inputs_require_grads(model, ctx) -> None:
    """With gradient checkpointing, make the embeddings' output require grad.

    A method that freezes the embeddings leaves checkpointed blocks an input that
    does not require grad, so nothing inside them would get gradients.
    """
    if ctx.config.get("gradient_checkpointing") and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def options_of(ctx) -> dict:
    """The validated method options from a :class:`~lmforge.plugins.descriptors.PeftContext`."""
    return {k: v for k, v in (ctx.config.get("peft") or {}).items() if k != "method"}


# --------------------------------------------------------------------------
# model structure


def num_layers_of(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def decoder_layers(model) -> tuple[str, Any]:
    """``(qualified_name, ModuleList)`` of the model's transformer blocks.

    Family-agnostic: the ``ModuleList`` whose length is the config's layer count
    (``num_hidden_layers`` / ``n_layer`` / ``num_layers``), the largest such list
    when several match. Raises :class:`LmforgeError` when there is none.
    """
    import torch.nn as nn

    n = num_layers_of(getattr(model, "config", None))
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if n is not None and len(module) != n:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[2]:
            best = (name, module, size)
    if best is None:
        raise LmforgeError(
            f"cannot find the transformer layers of {type(model).__name__} (a ModuleList of {n} blocks)"
        )
    return best[0], best[1]


def match_module_name(name: str, pattern: str) -> bool:
    """True when ``name`` (dotted) is ``pattern`` or ends with ``.pattern``; ``*`` globs are allowed."""
    import fnmatch

    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], pattern)
    return name == pattern or name.endswith("." + pattern)
