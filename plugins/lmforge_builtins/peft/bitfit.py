"""BitFit: train the bias terms only (Ben Zaken et al., 2022).

A model without biases (LLaMA has none in attention and MLP) is refused with
the reason, not silently trained on nothing. ``add_biases: true`` opts in to a
variant for such models: zero-initialised biases are added to every linear layer
of the transformer blocks (the model computes exactly what it did) and trained.

Saves only the biases (``trained_weights.safetensors``) plus ``lmforge_peft.json``.
"""

from __future__ import annotations

from lmforge.errors import ConfigError
from lmforge.plugins.descriptors import Option

from .common import (decoder_layers, inputs_require_grads, load_trained_tensors, match_module_name, options_of,
                     save_trained_tensors, trained_tensors_method)

OPTIONS = (
    Option("add_biases", bool, False, "for models without biases (LLaMA): add zero-initialised biases to the "
           "linear layers of every block and train those"),
    Option("modules", list, None, "train only the biases of these modules (default: every bias)"),
)


def _module_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def add_zero_biases(model) -> int:
    """Give every bias-less ``nn.Linear`` inside the transformer blocks a zero bias; returns how many."""
    import torch
    import torch.nn as nn

    _, layers = decoder_layers(model)
    added = 0
    for module in layers.modules():
        if isinstance(module, nn.Linear) and module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype,
                                                   device=module.weight.device))
            added += 1
    return added


def bias_names(model, options: dict) -> list[str]:
    names = [n for n, _ in model.named_parameters() if n == "bias" or n.endswith(".bias")]
    patterns = options["modules"]
    if patterns:
        picked = [n for n in names if any(match_module_name(_module_of(n), pat) for pat in patterns)]
        if not picked:
            raise ConfigError(f"peft.modules: {patterns} match no module that has a bias "
                              f"(modules with biases: {sorted({_module_of(n) for n in names})[:20]})")
        names = picked
    return names


def apply(model, options, ctx):
    if options["add_biases"]:
        add_zero_biases(model)
    names = set(bias_names(model, options))
    if not names:
        raise ConfigError(
            f"peft.method: bitfit trains bias terms only, and {type(model).__name__} has no bias parameters "
            "(LLaMA-style models have none in attention and MLP). Choose another method (lora, ia3 ...), "
            "or set peft.add_biases: true to add zero-initialised biases to the linear layers and train those"
        )
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    inputs_require_grads(model, ctx)
    return model


def save(model, tokenizer, out_dir, ctx):
    save_trained_tensors(model, tokenizer, out_dir, "bitfit", options_of(ctx))


def load(base_model, run_dir, options):
    if options.get("add_biases"):
        add_zero_biases(base_model)
    load_trained_tensors(base_model, run_dir, "bitfit")
    return base_model


BITFIT = trained_tensors_method(
    __name__, name="bitfit", options=OPTIONS, check=None,
    description="BitFit: only bias terms train (refused on models without biases unless add_biases)")

METHODS = (BITFIT,)
