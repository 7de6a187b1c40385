"""The generic causal-LM family: any checkpoint transformers can load natively.

It has the lowest priority, so a dedicated family plugin always wins; it exists
so that a plain transformers checkpoint of an architecture without an lmforge
plugin still trains (full or LoRA on all linear layers), and so its
``arch_from_config`` covers the common config key spellings.
"""

from __future__ import annotations

from typing import Any, Mapping

from lmforge import hookimpl
from lmforge.plugins.capabilities import PEFT_KEYS
from lmforge.plugins.descriptors import ArchSpec, ModelFamily, config_value, experimental, supported, unsupported
from lmforge.plugins.templates import PLAIN


def arch_from_config(cfg: Mapping[str, Any]) -> ArchSpec:
    """Architecture numbers from the usual ``config.json`` spellings (LLaMA, GPT-2, Bloom, ...)."""
    hidden = int(config_value(cfg, "hidden_size", "n_embd", "d_model", "dim_model"))
    heads = int(config_value(cfg, "num_attention_heads", "n_head", "num_heads"))
    kv = config_value(cfg, "num_key_value_heads", "multi_query_group_num", "num_kv_heads", default=heads)
    inter = config_value(cfg, "intermediate_size", "ffn_hidden_size", "n_inner", "dim_ff", default=None) or 4 * hidden
    act = str(config_value(cfg, "hidden_act", "activation_function", default="silu"))
    gated = act in ("silu", "swiglu") or bool(cfg.get("gated_mlp", False))
    return ArchSpec(
        vocab_size=int(config_value(cfg, "vocab_size", "padded_vocab_size")),
        hidden_size=hidden,
        num_layers=int(config_value(cfg, "num_hidden_layers", "n_layer", "num_layers")),
        num_attention_heads=heads,
        num_key_value_heads=int(kv),
        head_dim=cfg.get("head_dim"),
        intermediate_size=int(inter),
        mlp_kind="gated" if gated else "plain",
        activation=act,
        norm_kind="rmsnorm" if "rms_norm_eps" in cfg else "layernorm",
        attention_kind="gqa" if int(kv) != heads else "mha",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        max_position_embeddings=int(config_value(cfg, "max_position_embeddings", "n_positions", "seq_length", default=2048)),
    )


CAUSAL_LM = ModelFamily(
    name="causal-lm",
    description="any causal LM transformers loads natively (fallback when no dedicated family plugin claims it)",
    loader="lmforge.modeling.loading:hf_load",
    arch_from_config=arch_from_config,
    match=lambda cfg: True,
    priority=-100,
    model_types=(),
    chat_template=PLAIN,
    capabilities={
        "full": supported("every parameter trains; nothing depends on the architecture"),
        **{m: experimental("a generic peft method on an architecture no family plugin describes (LoRA-style "
                           "methods target all-linear): untested")
           for m in PEFT_KEYS if m != "full"},
        "packing": unsupported("the generic family does not know how this architecture takes per-sample positions"),
        "gradient_checkpointing": experimental("where the model implements it (transformers refuses one that does "
                                               "not)"),
        "flash_attention": experimental("where transformers implements it for the architecture (CUDA only)"),
        # tests/test_long_context.py extends a tiny Qwen2 checkpoint; other RoPE architectures go through the same
        # rope_parameters, and an architecture without RoPE parameters is refused at load
        "long_context": experimental("RoPE scaling through transformers' rope_parameters for architectures that "
                                     "have them (tested on Qwen2); architectures without RoPE are refused"),
    },
    long_context_methods=("linear", "dynamic", "yarn", "llama3", "ntk"),
    extend_context="lmforge.modeling.longctx:rope_scaling",
)


def _claims_native(cfg: Mapping[str, Any]) -> bool:
    mt = cfg.get("model_type")
    if not mt:
        return False
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:
        return False
    return mt in CONFIG_MAPPING_NAMES


class _GenericFamily(ModelFamily):
    def claims(self, config: Mapping[str, Any]) -> bool:
        # any model type transformers knows, or a checkpoint that ships its own code
        # (loaded only with --trust-remote-code; the loader refuses otherwise)
        return _claims_native(config) or bool(config.get("auto_map"))


@hookimpl
def register_model_families(register):
    register(_GenericFamily(**{f: getattr(CAUSAL_LM, f) for f in CAUSAL_LM.__dataclass_fields__}))
