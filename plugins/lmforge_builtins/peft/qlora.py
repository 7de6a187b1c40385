"""QLoRA: LoRA on a base whose linear layers are quantized to 4-bit (NF4) with bitsandbytes.

A checkpoint directory is quantized while it loads (``model_load_kwargs`` hands
``from_pretrained`` a ``BitsAndBytesConfig``). A preset has no weights on disk to
quantize on load, so :func:`ensure_4bit` writes the freshly built model to a
temporary directory and reloads it through the same ``from_pretrained``
quantization; a run directory's ``base_model/`` reloads through that path too,
so training and ``lmforge.load(run_dir)`` see bit-identical 4-bit weights.

Merging (:func:`merge`) dequantizes every 4-bit layer to a plain ``nn.Linear``
first and adds the LoRA update in full precision, so the merged checkpoint is
exactly base + adapter (re-quantizing the merged weight, as merging in place
would, adds a second rounding error).
"""

from __future__ import annotations

from lmforge.plugins.descriptors import Option

from . import lora
from .common import peft_adapter_method
from .lora import lora_config_kwargs

OPTIONS = lora.OPTIONS + (
    Option("quant_type", str, "nf4", "4-bit data type of the frozen base weights", choices=("nf4", "fp4")),
    Option("double_quant", bool, True, "also quantize the quantization constants (saves ~0.4 bit/param)"),
    Option("compute_dtype", str, "auto", "dtype the 4-bit weights are dequantized to for matmuls "
           "(auto: fp32 on CPU, bf16 on GPUs that support it)", choices=("auto", "fp32", "bf16", "fp16")),
)


def bnb_config(options: dict):
    """The ``transformers.BitsAndBytesConfig`` for these qlora options."""
    import torch
    from transformers import BitsAndBytesConfig

    from lmforge.modeling.loading import torch_dtype

    compute = torch_dtype(options["compute_dtype"])
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options["quant_type"],
        bnb_4bit_use_double_quant=options["double_quant"],
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=torch.uint8,
    )


def model_load_kwargs(options: dict) -> dict:
    """Extra ``from_pretrained`` kwargs: quantize while loading."""
    return {"quantization_config": bnb_config(options)}


def is_4bit(model) -> bool:
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def keep_weights_unpacked(model) -> None:
    """Turn off bitsandbytes' CPU inference repacking on every 4-bit layer.

    On CPUs with AVX512-BF16, a 4-bit layer in eval mode rewrites its weight in
    place into a kernel-specific layout on the first no-grad forward; that layout
    needs output widths divisible by 32 (tiny presets have 688) and is not what
    the dequantize/merge path reads. The generic kernel computes the same values.
    """
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


def ensure_4bit(model, options: dict):
    """Return ``model`` with its linear layers in 4-bit; quantizes through ``from_pretrained`` when needed."""
    if is_4bit(model):
        keep_weights_unpacked(model)
        return model
    import tempfile

    import torch

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    with tempfile.TemporaryDirectory(prefix="lmforge-qlora-") as tmp:
        model.save_pretrained(tmp)
        quantized = type(model).from_pretrained(tmp, quantization_config=bnb_config(options), dtype=dtype)
    if not is_4bit(quantized):
        from lmforge.errors import LmforgeError

        raise LmforgeError(f"qlora: quantizing {type(model).__name__} left no 4-bit linear layer")
    quantized.generation_config = model.generation_config
    # keep the original name, not the deleted temporary directory (peft records it in adapter_config.json)
    quantized.config._name_or_path = model.config._name_or_path
    quantized.name_or_path = getattr(model, "name_or_path", model.config._name_or_path)
    keep_weights_unpacked(quantized)
    return quantized


def apply(model, options, ctx):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = ensure_4bit(model, options)
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=bool(ctx.config.get("gradient_checkpointing"))
    )
    return get_peft_model(model, LoraConfig(**lora_config_kwargs(options, ctx)))


def load(base_model, run_dir, options):
    from peft import PeftModel

    return PeftModel.from_pretrained(ensure_4bit(base_model, options), run_dir, is_trainable=False)


# --------------------------------------------------------------------------
# merge


def _plain_linear(layer, dtype):
    """An ``nn.Linear`` holding ``layer``'s weight (dequantized when it is 4-bit) and bias."""
    import bitsandbytes as bnb
    import torch
    import torch.nn as nn

    w = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        w = bnb.functional.dequantize_4bit(w.data, w.quant_state)
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=w.device, dtype=dtype)
    with torch.no_grad():
        out.weight.copy_(w.to(dtype))
        if layer.bias is not None:
            out.bias.copy_(layer.bias.to(dtype))
    return out


def merge(model):
    """Dequantize the base, add the LoRA updates in full precision, return a plain transformers model."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    base = model.get_base_model()
    dtype = next((p.dtype for p in base.parameters() if p.is_floating_point()), torch.float32)
    with torch.no_grad():
        for name, module in list(base.named_modules()):
            if isinstance(module, LoraLayer):
                linear = _plain_linear(module.get_base_layer(), dtype)
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        linear.weight += module.get_delta_weight(adapter).to(dtype)
                base.set_submodule(name, linear)
        for name, module in list(base.named_modules()):
            if isinstance(module, bnb.nn.Linear4bit):
                base.set_submodule(name, _plain_linear(module, dtype))
            elif isinstance(module, ModulesToSaveWrapper):
                base.set_submodule(name, module.modules_to_save[module.active_adapter])
    quantizer = getattr(base, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(base)
    elif hasattr(base.config, "quantization_config"):
        del base.config.quantization_config
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(base, attr, False):
            setattr(base, attr, False)
    return base


QLORA = peft_adapter_method(
    __name__, name="qlora", options=OPTIONS, load=f"{__name__}:load", merge=f"{__name__}:merge",
    model_load_kwargs=f"{__name__}:model_load_kwargs", requires=("peft", "bitsandbytes"),
    check=f"{lora.__name__}:check",
    description="QLoRA: base linear layers quantized to 4-bit NF4 (bitsandbytes) + LoRA (peft)")

METHODS = (QLORA,)
