"""Registers the BLOOM family (pure Python: no torch at import)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lmforge import hookimpl
from lmforge.plugins.descriptors import ArchSpec, ModelFamily, Preset, config_value, experimental, supported, unsupported
from lmforge.plugins.templates import PLAIN

TINY_VOCAB = 1152  # the shipped tiny tokenizer has 1,116 tokens; rounded up to a multiple of 64


def arch_from_config(cfg: Mapping[str, Any]) -> ArchSpec:
    """Architecture numbers of a BLOOM ``config.json`` (released configs spell sizes several ways)."""
    hidden = int(config_value(cfg, "hidden_size", "n_embed", "n_embd"))
    heads = int(config_value(cfg, "n_head", "num_attention_heads"))
    return ArchSpec(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(config_value(cfg, "n_layer", "num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=4 * hidden,
        mlp_kind="plain",
        activation="gelu",
        norm_kind="layernorm",
        position_kind="alibi",
        attention_kind="mha",
        tied_embeddings=True,  # BLOOM's lm_head is always the word embedding matrix
        attention_bias=True,
        mlp_bias=True,
        max_position_embeddings=int(config_value(cfg, "seq_length", "n_positions", default=2048)),
    )


def _bloom(hidden: int, layers: int, heads: int, vocab: int = 250880, tp: int = 1, **extra) -> dict:
    cfg = {
        "model_type": "bloom", "architectures": ["BloomForCausalLM"], "vocab_size": vocab,
        "hidden_size": hidden, "n_layer": layers, "n_head": heads,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "apply_residual_connection_post_layernorm": False,
        "hidden_dropout": 0.0, "attention_dropout": 0.0,
        "pretraining_tp": tp, "slow_but_exact": False, "seq_length": 2048, "use_cache": True,
        "unk_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
    }
    cfg.update(extra)
    return cfg


_SIZES = {
    # name: (hidden, layers, heads, pretraining_tp) from the published config.json files
    "560m": (1024, 24, 16, 1),
    "1b1": (1536, 24, 16, 1),
    "1b7": (2048, 24, 16, 1),
    "3b": (2560, 30, 32, 1),
    "7b1": (4096, 30, 32, 1),
    "176b": (14336, 70, 112, 4),
}

PRESETS = (
    Preset(
        "tiny-bloom",
        _bloom(64, 2, 4, vocab=TINY_VOCAB, seq_length=1024),
        description="2-layer random BLOOM (64 hidden, 4 heads, ALiBi) with a 1.1k-token byte-level BPE; offline, for tests",
        tiny=True,
        tokenizer="llm_plugins_bloom.loader:tiny_tokenizer",
        seed=0,
    ),
    *(Preset(f"bloom-{size}", _bloom(h, n, a, tp=tp), f"BLOOM {size.upper()}") for size, (h, n, a, tp) in _SIZES.items()),
    *(Preset(f"bloomz-{size}", _bloom(h, n, a, tp=tp), f"BLOOMZ {size.upper()} (BLOOM fine-tuned on xP3; same architecture)")
      for size, (h, n, a, tp) in _SIZES.items()),
)

# BLOOMZ was tuned on prompts continued directly by the answer, with no role tokens; BLOOM's
# tokenizer adds no BOS. EOS (</s>) closes each answer.
BLOOM_TEMPLATE = dataclasses.replace(PLAIN, name="bloom", add_bos=False)

PACKING_NOTE = (
    "ALiBi restarts per sample: given per-sample position_ids and no attention_mask, the plugin's "
    "BloomForCausalLM builds the bias from each sample's own positions and a block-diagonal causal mask"
)

UNTESTED = experimental("expected to work (generic peft/lmforge method); not exercised by this plugin's tests")

CAPABILITIES = {
    **{m: UNTESTED for m in ("dora", "adalora", "ia3", "freeze", "bitfit", "prompt", "ptuning")},
    "unipelt": unsupported("UniPELT's gated prefix needs attention routed through transformers' attention "
                           "interface; BLOOM's ALiBi attention computes its scores inline"),
    "full": supported(),
    "lora": supported("default targets: query_key_value"),
    "prefix": supported("peft prefix tuning; Bloom's cache now uses the standard (batch, heads, tokens, head_dim) layout"),
    "qlora": experimental("LoRA on 4-bit bitsandbytes weights; not exercised by this plugin's tests"),
    "packing": supported(PACKING_NOTE),
    "long_context": supported(
        "method: family only, a no-op on the weights: ALiBi's linear distance bias has no table and extrapolates, "
        "so the extension raises seq_length to factor x the trained length (quality beyond the trained length "
        "comes from ALiBi's extrapolation and any fine-tune at the longer length)"
    ),
    "flash_attention": unsupported(
        "transformers' Bloom attention is eager only (the ALiBi bias is added to the raw scores); "
        "use the default attention implementation"
    ),
    "gradient_checkpointing": supported(),
}

BLOOM = ModelFamily(
    name="bloom",
    description="BLOOM and BLOOMZ (transformers' BloomForCausalLM; ALiBi positions)",
    aliases=("bloomz",),
    model_types=("bloom",),
    architectures=("BloomForCausalLM",),
    loader="llm_plugins_bloom.loader:load",
    arch_from_config=arch_from_config,
    presets=PRESETS,
    estimator_profile="llm_plugins_bloom.estimate:profile",
    default_lora_targets=("query_key_value",),
    chat_template=BLOOM_TEMPLATE,
    special_tokens={"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"},
    capabilities=CAPABILITIES,
    long_context_methods=("family",),
    extend_context="llm_plugins_bloom.loader:extend",
)


@hookimpl
def register_model_families(register):
    register(BLOOM)
