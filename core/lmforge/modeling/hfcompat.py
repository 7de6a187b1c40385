"""Argument renames inside the declared transformers range, in one place.

transformers 5.24 renamed the KV cache argument of ``generate``'s
``prepare_inputs_for_generation`` and of every model ``forward`` from
``past_key_values`` to ``cache`` (the old name is deprecated until 6.0). Modeling
code that lmforge writes itself (the GLM and CPM families) must read the cache
under either name, and hand it on under the name the installed version uses:
reading only ``past_key_values`` silently decodes every generated token with no
context on 5.24+. ``make test-latest`` runs the generation tests against the
newest allowed release so the next rename breaks CI instead of users.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def cache_kwarg() -> str:
    """The keyword the installed transformers passes the KV cache under: ``"cache"`` (>= 5.24) or ``"past_key_values"``."""
    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def take_cache(past_key_values: Any, kwargs: dict) -> Any:
    """The cache given under either name; removes ``cache`` from ``kwargs``."""
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("got both `cache` and `past_key_values`; pass the KV cache once")
    return past_key_values if past_key_values is not None else cache


def forward_takes_cache(forward) -> bool:
    """Whether a model ``forward`` accepts a KV cache (under either name)."""
    params = inspect.signature(forward).parameters
    return "past_key_values" in params or "cache" in params


def _renaming(prepare, outer: str, inner: str):
    """``prepare`` called with the keyword ``outer`` renamed ``inner``, its output's ``inner`` key renamed back."""

    def call(*args, **kwargs):
        if outer in kwargs:
            kwargs[inner] = kwargs.pop(outer)
        out = prepare(*args, **kwargs)
        if inner in out:
            out[outer] = out.pop(inner)
        return out

    return call


def peft_prompt_learning_compat(peft_model):
    """Make peft's prompt-learning generation (prefix, prompt, p-tuning) see the cache on transformers >= 5.24.

    peft (0.21) reads ``model_kwargs["past_key_values"]`` in its
    ``prepare_inputs_for_generation``; transformers 5.24 hands the cache over as
    ``cache``, so peft no longer notices the cache after the first step, feeds
    the whole sequence again and generates from a duplicated context. This
    renames the key on the way into peft and back out. A no-op on older
    transformers and for other peft methods. Returns ``peft_model``.
    """
    config = getattr(peft_model, "active_peft_config", None)
    if cache_kwarg() != "cache" or config is None or not config.is_prompt_learning:
        return peft_model
    if getattr(peft_model, "_lmforge_cache_compat", False):
        return peft_model
    base = peft_model.base_model
    base_prepare = base.prepare_inputs_for_generation
    peft_prepare = peft_model.prepare_inputs_for_generation
    peft_generate = peft_model.generate

    base_prepare_old_name = _renaming(base_prepare, "past_key_values", "cache")  # peft's name -> the model's
    prepare = _renaming(peft_prepare, "cache", "past_key_values")  # transformers' name -> peft's

    def generate(*args, **kwargs):
        try:
            return peft_generate(*args, **kwargs)
        finally:  # peft re-installs its saved base method; put the model's own back
            base.prepare_inputs_for_generation = base_prepare

    peft_model.base_model_prepare_inputs_for_generation = base_prepare_old_name
    peft_model.prepare_inputs_for_generation = prepare
    peft_model.generate = generate
    peft_model._lmforge_cache_compat = True
    return peft_model
