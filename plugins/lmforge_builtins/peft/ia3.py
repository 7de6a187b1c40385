"""(IA)^3 through peft: learned vectors that rescale keys, values and the feed-forward activations."""

from __future__ import annotations

from lmforge.errors import ConfigError
from lmforge.plugins.descriptors import Option

from .common import peft_adapter_method

OPTIONS = (
    Option("target_modules", (str, list), "default",
           "modules whose activations are rescaled: 'default' (peft's choice for the architecture) or a list"),
    Option("feedforward_modules", (str, list), "default",
           "which target_modules are feed-forward layers (their input is rescaled); 'default' with default targets"),
)


def target_lists(targets, feedforward) -> tuple[list[str], list[str]]:
    """``(target_modules, feedforward_modules)`` as lists; raises ``ValueError`` naming the option.

    ``feedforward_modules`` must be given (not ``default``) and be a subset of the targets.
    """
    if feedforward in (None, "default"):
        raise ValueError("peft.feedforward_modules: with custom target_modules, say which of them are "
                         "feed-forward layers (their input is scaled instead of their output), or [] for none")
    targets = [targets] if isinstance(targets, str) else list(targets)
    feedforward = [feedforward] if isinstance(feedforward, str) else list(feedforward)
    unknown = [m for m in feedforward if m not in targets]
    if unknown:
        raise ValueError(f"peft.feedforward_modules: {unknown} must also be in target_modules {targets}")
    return targets, feedforward


def check(options, config) -> None:
    """Custom targets need their feed-forward subset (peft's defaults are checked when the model loads)."""
    if options["target_modules"] not in (None, "default"):
        target_lists(options["target_modules"], options["feedforward_modules"])


def ia3_config(model, options: dict):
    from peft import IA3Config
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF_DEFAULTS,
    )
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGET_DEFAULTS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = options["target_modules"]
    feedforward = options["feedforward_modules"]
    if targets in (None, "default"):
        targets = TARGET_DEFAULTS.get(model_type)
        if targets is None:
            raise ConfigError(
                f"peft.target_modules: peft has no default (IA)^3 targets for model_type {model_type!r}; "
                "list the key/value and feed-forward output projections, e.g. [k_proj, v_proj, down_proj]"
            )
        if feedforward in (None, "default"):
            feedforward = FF_DEFAULTS.get(model_type, [])
    try:
        targets, feedforward = target_lists(targets, feedforward)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")


def apply(model, options, ctx):
    from peft import get_peft_model

    return get_peft_model(model, ia3_config(model, options))


IA3 = peft_adapter_method(
    __name__, name="ia3", options=OPTIONS,
    description="(IA)^3 (peft): learned rescaling of keys, values and feed-forward activations")

METHODS = (IA3,)
