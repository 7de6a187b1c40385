"""Freeze tuning: every weight is frozen except the last (or first) N layers and named modules.

The run saves only the parameters that trained (``trained_weights.safetensors``)
plus ``lmforge_peft.json``; reloading applies them on top of the base model.
"""

from __future__ import annotations

from lmforge.errors import ConfigError
from lmforge.plugins.descriptors import Option

from .common import (decoder_layers, load_trained_tensors, match_module_name, options_of, save_trained_tensors,
                     trained_tensors_method)

OPTIONS = (
    Option("trainable_layers", int, 2, "train the last N transformer blocks (negative: the first |N|; 0: none)"),
    Option("trainable_modules", list, None,
           "inside those blocks, train only these submodules (e.g. [mlp] or [self_attn]); default: whole blocks"),
    Option("extra_modules", list, None, "also train these modules outside the blocks (e.g. [lm_head, norm])"),
)


def check(options, config) -> None:
    """Refuse selections that would train nothing (before the model loads)."""
    if options["trainable_layers"] == 0 and not options["extra_modules"]:
        raise ValueError("peft.trainable_layers: 0 with no extra_modules would train nothing")
    if options["trainable_modules"] is not None and not options["trainable_modules"]:
        raise ValueError("peft.trainable_modules: an empty list would train nothing; leave it unset for whole blocks")


def select_trainable(model, options: dict) -> list[str]:
    """Names of the parameters freeze tuning trains, per ``options``; raises ConfigError on a bad selection."""
    layers_name, layers = decoder_layers(model)
    n = len(layers)
    k = options["trainable_layers"]
    if abs(k) > n:
        raise ConfigError(f"peft.trainable_layers: {k} but the model has {n} layers")
    chosen = list(range(n - k, n)) if k > 0 else list(range(0, -k))
    patterns = options["trainable_modules"]
    names: list[str] = []
    for i in chosen:
        layer = layers[i]
        prefix = f"{layers_name}.{i}." if layers_name else f"{i}."
        if not patterns:
            names.extend(prefix + pn for pn, _ in layer.named_parameters())
            continue
        for pat in patterns:
            hits = [pn for pn, _ in layer.named_parameters()
                    if any(match_module_name(mod, pat) for mod in _owners(pn))]
            if not hits:
                children = sorted({mn for mn, _ in layer.named_modules() if mn})
                raise ConfigError(
                    f"peft.trainable_modules: {pat!r} matches no module of layer {i}; its modules are: "
                    + ", ".join(children[:30])
                )
            names.extend(prefix + h for h in hits)
    for pat in options["extra_modules"] or ():
        hits = [pn for pn, _ in model.named_parameters(remove_duplicate=False)
                if any(match_module_name(mod, pat) for mod in _owners(pn))]
        if not hits:
            top = sorted({mn for mn, _ in model.named_modules() if mn and mn.count(".") <= 1})
            raise ConfigError(f"peft.extra_modules: {pat!r} matches no module; top-level modules are: {', '.join(top)}")
        names.extend(hits)
    if not names:
        raise ConfigError("peft.trainable_layers: nothing would train (trainable_layers is 0 and no extra_modules)")
    return list(dict.fromkeys(names))


def _owners(param_name: str) -> list[str]:
    """Every module path that owns ``param_name``: ``a.b.c.weight`` -> ``a``, ``a.b``, ``a.b.c``."""
    parts = param_name.split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def apply(model, options, ctx):
    names = set(select_trainable(model, options))
    # by identity: a tied weight (lm_head / embed_tokens) trains when either name is selected
    chosen = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name in names}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return model


def save(model, tokenizer, out_dir, ctx):
    save_trained_tensors(model, tokenizer, out_dir, "freeze", options_of(ctx))


def load(base_model, run_dir, options):
    load_trained_tensors(base_model, run_dir, "freeze")
    return base_model


def merge(model):
    """A freeze-tuned model is already a plain model: the trained tensors are its own weights."""
    return model


FREEZE = trained_tensors_method(
    __name__, name="freeze", options=OPTIONS, merge=f"{__name__}:merge",
    description="freeze tuning: only the last (or first) N blocks and named modules train")

METHODS = (FREEZE,)
