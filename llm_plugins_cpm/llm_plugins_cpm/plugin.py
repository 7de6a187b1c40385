"""Registers the CPM families: cpmant, minicpm (MiniCPM 1/2 and 9G), minicpm3 (pure Python: no torch)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lmforge import hookimpl
from lmforge.modeling.arch import llama_arch
from lmforge.plugins.descriptors import ArchSpec, ChatTemplate, ModelFamily, Preset, experimental, supported, unsupported
from lmforge.plugins.templates import CHATML, PLAIN

_L = "llm_plugins_cpm.loader"
TINY_BPE_VOCAB = 1152  # the shipped tiny BPE tokenizers have 1,140 tokens; rounded up to a multiple of 64
TINY_CPMANT_VOCAB = 374  # lines of data/tiny_cpmant_vocab.txt (CPM-Ant's prompt ids start right after the vocab)

QLORA_NOTE = "LoRA on 4-bit bitsandbytes weights; not exercised by this plugin's tests"
UNTESTED = experimental("expected to work (generic peft/lmforge method); not exercised by this plugin's tests")
# methods this plugin has not run on these families; each family overrides what it knows better
COMMON = {m: UNTESTED for m in ("dora", "adalora", "ia3", "freeze", "bitfit", "unipelt", "prompt", "ptuning")}
NO_INPUTS_EMBEDS = (
    "peft's prompt-learning methods feed the model inputs_embeds, which CPM-Ant's forward does not accept")
FLASH_NOTE = "CUDA only, through transformers' attention backends; not exercised by this plugin's tests (CPU)"


# --------------------------------------------------------------------------
# CPM-Ant


def cpmant_arch(cfg: Mapping[str, Any]) -> ArchSpec:
    heads = int(cfg.get("num_attention_heads", 32))
    return ArchSpec(
        vocab_size=int(cfg.get("vocab_size", 30720)),
        hidden_size=int(cfg.get("hidden_size", 4096)),
        num_layers=int(cfg.get("num_hidden_layers", 48)),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=int(cfg.get("dim_head", 128)),
        intermediate_size=int(cfg.get("dim_ff", 10240)),
        mlp_kind="gated",
        activation="gelu",
        norm_kind="rmsnorm",
        position_kind="none",  # bucketed relative-position bias, added to the attention scores
        attention_kind="mha",
        tied_embeddings=False,
        max_position_embeddings=int(cfg.get("position_bias_max_distance", 2048)),
        extra={"position_bias_num_buckets": int(cfg.get("position_bias_num_buckets", 512)),
               "prompt_types": int(cfg.get("prompt_types", 32)), "prompt_length": int(cfg.get("prompt_length", 32))},
    )


def _cpmant(**over) -> dict:
    cfg = {
        "model_type": "cpmant", "architectures": ["CpmAntForCausalLM"], "vocab_size": 30720, "hidden_size": 4096,
        "num_attention_heads": 32, "dim_head": 128, "dim_ff": 10240, "num_hidden_layers": 48, "dropout_p": 0.0,
        "position_bias_num_buckets": 512, "position_bias_max_distance": 2048, "eps": 1e-6, "init_std": 1.0,
        "prompt_types": 32, "prompt_length": 32, "segment_types": 32, "use_cache": True,
    }
    cfg.update(over)
    return cfg


CPMANT = ModelFamily(
    name="cpmant",
    description="CPM-Ant (transformers' CpmAntForCausalLM, trained with a shifted loss and prefix-LM masks)",
    aliases=("cpm-ant",),
    model_types=("cpmant",),
    architectures=("CpmAntForCausalLM",),
    loader=f"{_L}:load_cpmant",
    arch_from_config=cpmant_arch,
    estimator_profile="llm_plugins_cpm.estimate:cpmant",
    presets=(
        Preset("tiny-cpmant",
               _cpmant(vocab_size=TINY_CPMANT_VOCAB, hidden_size=64, num_attention_heads=4, dim_head=16, dim_ff=128,
                       num_hidden_layers=2, position_bias_num_buckets=32, position_bias_max_distance=256,
                       init_std=0.02, prompt_types=4, prompt_length=4, segment_types=4),
               "2-layer random CPM-Ant with transformers' CpmAntTokenizer on a 374-token vocab.txt; offline, for tests",
               tiny=True, tokenizer=f"{_L}:tiny_cpmant_tokenizer"),
        Preset("cpm-ant-10b", _cpmant(), "CPM-Ant 10B (openbmb/cpm-ant-10b)"),
    ),
    default_lora_targets=("project_q", "project_k", "project_v", "attention_out", "w_0", "w_1", "w_out"),
    # a base model: the prompt is continued directly
    chat_template=dataclasses.replace(PLAIN, name="cpmant"),
    special_tokens={"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>", "line": "</n>", "space": "</_>"},
    capabilities={
        **COMMON,
        "prompt": unsupported(NO_INPUTS_EMBEDS),
        "ptuning": unsupported(NO_INPUTS_EMBEDS),
        "unipelt": unsupported("UniPELT trains a prefix, and CPM-Ant cannot take one (see prefix)"),
        "full": supported(),
        "lora": supported(),
        "qlora": experimental(QLORA_NOTE),
        "prefix": unsupported(
            "CPM-Ant's forward takes cached keys as already-processed input and drops that many input "
            "positions, so peft's virtual-token prefix would cut the start off every example"),
        "packing": unsupported(
            "CPM-Ant builds its attention mask and position bias from the token ids and ignores position_ids, "
            "so packed samples would attend to each other"),
        "long_context": supported(
            "method: family raises position_bias_max_distance (relative-position buckets saturate beyond it) to "
            "factor x the original, spreading the same buckets over the longer range"),
        "flash_attention": unsupported(
            "CPM-Ant's attention adds a bucketed position bias inside its own eager implementation"),
        "gradient_checkpointing": unsupported("transformers' CPM-Ant layers do not implement gradient checkpointing"),
    },
    long_context_methods=("family",),
    extend_context="llm_plugins_cpm.cpmant_longctx:extend",
)


# --------------------------------------------------------------------------
# MiniCPM 1/2 and the 9G models on its architecture


def minicpm_arch(cfg: Mapping[str, Any]) -> ArchSpec:
    """LLaMA's layout with tied embeddings by default (the released default) and muP scalings in ``extra``."""
    return llama_arch(cfg, tied_default=True, extra_keys=("scale_emb", "scale_depth", "dim_model_base"))


def _minicpm(hidden, inter, layers, heads, kv=None, vocab=122753, ctx=4096, **extra) -> dict:
    # released MiniCPM 1/2 configs carry no model_type; presets name it so AutoConfig can read a saved copy
    cfg = {
        "model_type": "minicpm", "architectures": ["MiniCPMForCausalLM"], "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv or heads, "hidden_act": "silu",
        "max_position_embeddings": ctx, "rms_norm_eps": 1e-5, "initializer_range": 0.1, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    cfg.update(extra)
    return cfg


# MiniCPM 1/2 (released chat format, e.g. llama.cpp's MiniCPM template): "<用户>" query "<AI>" answer; BOS first
MINICPM_TEMPLATE = ChatTemplate(
    name="minicpm",
    system="{content}",
    user="<用户>{content}",
    assistant_prefix="<AI>",
    assistant="{content}",
)

MINICPM = ModelFamily(
    name="minicpm",
    description="MiniCPM 1/2 and 9G 2B models (this plugin's MiniCPMForCausalLM: LLaMA + muP scalings; no checkpoint code)",
    aliases=("minicpm2", "fm9g", "9g"),
    model_types=("minicpm",),
    architectures=("MiniCPMForCausalLM",),
    loader=f"{_L}:load_minicpm",
    saver=f"{_L}:save_minicpm",
    arch_from_config=minicpm_arch,
    estimator_profile="llm_plugins_cpm.estimate:minicpm",
    presets=(
        Preset("tiny-minicpm",
               _minicpm(64, 128, 2, 4, kv=2, vocab=TINY_BPE_VOCAB, ctx=1024, dim_model_base=16),
               "2-layer random MiniCPM (GQA 4/2 heads, scale_emb 12, scale_depth 1.4, width ratio 4) with a "
               "1.1k-token byte-level BPE; offline, for tests",
               tiny=True, tokenizer=f"{_L}:tiny_minicpm_tokenizer"),
        Preset("minicpm-2b", _minicpm(2304, 5760, 40, 36), "MiniCPM-2B (sft/dpo; 2.4B non-embedding parameters)"),
    ),
    default_lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    chat_template=MINICPM_TEMPLATE,
    special_tokens={"bos": "<s>", "eos": "</s>", "unk": "<unk>", "user": "<用户>", "assistant": "<AI>"},
    capabilities={
        **COMMON,
        # as released, MiniCPM multiplies embeddings by scale_emb only when it looks them up itself
        "prompt": unsupported(
            "peft's prompt tuning feeds inputs_embeds, which MiniCPM (as released) does not multiply by "
            "scale_emb, so every real token would enter the model scale_emb times too small"),
        "ptuning": unsupported(
            "P-tuning feeds inputs_embeds, which MiniCPM (as released) does not multiply by scale_emb, "
            "so every real token would enter the model scale_emb times too small"),
        "full": supported(),
        "lora": supported(),
        "qlora": experimental(QLORA_NOTE),
        "prefix": supported("peft prefix tuning through the standard KV cache"),
        "packing": supported("per-sample position_ids without attention_mask give transformers' packed causal mask"),
        # tests/test_long_context.py: frequencies, saved config (released rope_scaling spelling) and reload
        "long_context": supported("RoPE scaling (linear, dynamic, yarn, llama3, ntk) through transformers' RoPE "
                                  "code, saved as rope_scaling the released code reads"),
        "flash_attention": experimental(FLASH_NOTE),
        "gradient_checkpointing": supported(),
    },
    long_context_methods=("linear", "dynamic", "yarn", "llama3", "ntk"),
    extend_context="lmforge.modeling.longctx:rope_scaling",
)


# --------------------------------------------------------------------------
# MiniCPM3


def minicpm3_arch(cfg: Mapping[str, Any]) -> ArchSpec:
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    nope, rope = int(cfg.get("qk_nope_head_dim", 64)), int(cfg.get("qk_rope_head_dim", 32))
    return ArchSpec(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=nope + rope,
        intermediate_size=int(cfg["intermediate_size"]),
        mlp_kind="gated",
        activation=str(cfg.get("hidden_act", "silu")),
        norm_kind="rmsnorm",
        position_kind="rope",
        attention_kind="mla",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        extra={"q_lora_rank": cfg.get("q_lora_rank", 768), "kv_lora_rank": cfg.get("kv_lora_rank", 256),
               "qk_nope_head_dim": nope, "qk_rope_head_dim": rope,
               "v_head_dim": int(cfg.get("v_head_dim") or hidden // heads),
               **{k: cfg[k] for k in ("scale_emb", "scale_depth", "dim_model_base") if k in cfg}},
    )


def _minicpm3(hidden, inter, layers, heads, q_rank, kv_rank, nope, rope, vocab=73448, ctx=32768, **extra) -> dict:
    cfg = {
        "model_type": "minicpm3", "architectures": ["MiniCPM3ForCausalLM"], "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads, "q_lora_rank": q_rank, "kv_lora_rank": kv_rank,
        "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "hidden_act": "silu", "max_position_embeddings": ctx,
        "rms_norm_eps": 1e-5, "initializer_range": 0.1, "tie_word_embeddings": True,
        "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4, "bos_token_id": 1, "eos_token_id": [2, 73440],
    }
    cfg.update(extra)
    return cfg


# MiniCPM3 speaks ChatML (its tokenizer adds no BOS; <|im_end|> is its EOS)
CHATML_TEMPLATE = CHATML


MINICPM3 = ModelFamily(
    name="minicpm3",
    description="MiniCPM3 (transformers' MiniCPM3ForCausalLM; multi-head latent attention)",
    model_types=("minicpm3",),
    architectures=("MiniCPM3ForCausalLM",),
    loader=f"{_L}:load_minicpm3",
    arch_from_config=minicpm3_arch,
    estimator_profile="llm_plugins_cpm.estimate:minicpm3",
    presets=(
        Preset("tiny-minicpm3",
               _minicpm3(64, 128, 2, 4, 32, 16, 8, 8, vocab=TINY_BPE_VOCAB, ctx=1024, dim_model_base=16,
                         eos_token_id=3, v_head_dim=16),
               "2-layer random MiniCPM3 (MLA, q/kv ranks 32/16) with a 1.1k-token byte-level BPE; offline, for tests",
               tiny=True, tokenizer=f"{_L}:tiny_minicpm3_tokenizer"),
        Preset("minicpm3-4b", _minicpm3(2560, 6400, 62, 40, 768, 256, 64, 32),
               "MiniCPM3-4B (LongRoPE factors omitted: estimator and random init only)"),
    ),
    default_lora_targets=("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
                          "gate_proj", "up_proj", "down_proj"),
    chat_template=CHATML_TEMPLATE,
    special_tokens={"bos": "<s>", "eos": "<|im_end|>", "unk": "<unk>", "im_start": "<|im_start|>"},
    capabilities={
        **COMMON,
        "unipelt": unsupported("UniPELT trains a prefix, and MiniCPM3's latent attention cannot take one (see prefix)"),
        "full": supported(),
        "lora": supported(),
        "qlora": experimental(QLORA_NOTE),
        "prefix": unsupported(
            "MiniCPM3's latent attention has keys (qk_nope_head_dim + qk_rope_head_dim wide) and values "
            "(v_head_dim wide) of different sizes; peft's prefix tuning builds both as hidden_size / heads"),
        "packing": supported("per-sample position_ids without attention_mask give transformers' packed causal mask"),
        # tests/test_long_context.py: yarn on the rotary part of the latent attention, saved and reloaded
        "long_context": supported("RoPE scaling (yarn, linear, dynamic, ntk) of the qk_rope_head_dim part; the "
                                  "released configs already use LongRoPE, which is kept as it is (not stacked)"),
        "flash_attention": experimental(FLASH_NOTE),
        "gradient_checkpointing": supported(),
    },
    long_context_methods=("yarn", "linear", "dynamic", "ntk"),
    extend_context=f"{_L}:extend_minicpm3",
)


@hookimpl
def register_model_families(register):
    register(CPMANT)
    register(MINICPM)
    register(MINICPM3)
