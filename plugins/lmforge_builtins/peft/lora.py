"""LoRA and DoRA through peft: their options, checks and registrations."""

from __future__ import annotations

from lmforge.plugins.descriptors import Option

from .checks import fraction, positive
from .common import peft_adapter_method

TARGETS_HELP = "module names to adapt: 'default' (the family's choice), 'all-linear', or a list"

OPTIONS = (
    Option("r", int, 8, "rank of the update matrices"),
    Option("alpha", float, 16.0, "scaling numerator: the update is scaled by alpha / r"),
    Option("dropout", float, 0.05, "dropout on the LoRA input"),
    Option("target_modules", (str, list), "default", TARGETS_HELP),
    Option("bias", str, "none", "which biases train", choices=("none", "all", "lora_only")),
    Option("modules_to_save", list, None, "extra modules trained fully and saved with the adapter"),
    Option("use_rslora", bool, False, "rank-stabilised scaling alpha / sqrt(r)"),
)


def check(options, config) -> None:
    """Rules across the LoRA options (shared by dora and qlora)."""
    positive(options, "r")
    fraction(options, "dropout")


def lora_config_kwargs(options: dict, ctx) -> dict:
    """The ``LoraConfig`` keyword arguments shared by lora and its variants."""
    return dict(
        r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=ctx.lora_targets(options["target_modules"]),
        bias=options["bias"],
        modules_to_save=options["modules_to_save"],
        use_rslora=options["use_rslora"],
        task_type="CAUSAL_LM",
    )


def apply(model, options, ctx):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**lora_config_kwargs(options, ctx)))


def apply_dora(model, options, ctx):
    """DoRA: LoRA whose update is split into a trained magnitude vector and a direction."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(use_dora=True, **lora_config_kwargs(options, ctx)))


LORA = peft_adapter_method(
    __name__, name="lora", description="LoRA (peft): low-rank updates on the target linear layers", options=OPTIONS)

DORA = peft_adapter_method(
    __name__, name="dora", description="DoRA (peft): LoRA with a separately trained magnitude per output feature",
    options=OPTIONS, apply=f"{__name__}:apply_dora")

METHODS = (LORA, DORA)
