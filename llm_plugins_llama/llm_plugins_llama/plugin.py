"""Registers the LLaMA family (pure Python: no torch at import)."""

from __future__ import annotations

from lmforge import hookimpl
from lmforge.modeling.arch import llama_arch
from lmforge.plugins.descriptors import ModelFamily, Preset, supported
from lmforge.plugins.templates import LLAMA2


def _llama(hidden, inter, layers, heads, kv=None, vocab=32000, ctx=2048, theta=10000.0, **extra) -> dict:
    cfg = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv or heads,
        "max_position_embeddings": ctx, "rms_norm_eps": 1e-6 if ctx <= 2048 else 1e-5,
        "rope_theta": theta, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    cfg.update(extra)
    return cfg


PRESETS = (
    Preset(
        "tiny-llama",
        _llama(256, 688, 4, 8, kv=4, vocab=2048, ctx=1024, bos_token_id=1, eos_token_id=2, pad_token_id=3),
        description="4-layer random LLaMA (GQA 8/4 heads) with a 1.2k-token byte-level BPE; offline, for tests and the quickstart",
        tiny=True,
        tokenizer="llm_plugins_llama.loader:tiny_tokenizer",
        seed=0,
    ),
    Preset("llama-7b", _llama(4096, 11008, 32, 32), "LLaMA 1 7B"),
    Preset("llama-13b", _llama(5120, 13824, 40, 40), "LLaMA 1 13B"),
    Preset("llama-33b", _llama(6656, 17920, 60, 52), "LLaMA 1 33B (a.k.a. 30B)"),
    Preset("llama-65b", _llama(8192, 22016, 80, 64), "LLaMA 1 65B"),
    Preset("llama-2-7b", _llama(4096, 11008, 32, 32, ctx=4096), "Llama 2 7B"),
    Preset("llama-2-13b", _llama(5120, 13824, 40, 40, ctx=4096), "Llama 2 13B"),
    Preset("llama-2-70b", _llama(8192, 28672, 80, 64, kv=8, ctx=4096), "Llama 2 70B (GQA, 8 KV heads)"),
    Preset("llama-3-8b", _llama(4096, 14336, 32, 32, kv=8, vocab=128256, ctx=8192, theta=500000.0,
                                bos_token_id=128000, eos_token_id=128001), "Llama 3 8B"),
    Preset("llama-3-70b", _llama(8192, 28672, 80, 64, kv=8, vocab=128256, ctx=8192, theta=500000.0,
                                 bos_token_id=128000, eos_token_id=128001), "Llama 3 70B"),
)

LLAMA = ModelFamily(
    name="llama",
    description="LLaMA 1/2/3 (transformers' LlamaForCausalLM)",
    aliases=("llama2", "llama3"),
    model_types=("llama",),
    architectures=("LlamaForCausalLM",),
    loader="llm_plugins_llama.loader:load",
    arch_from_config=llama_arch,
    presets=PRESETS,
    default_lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    # Llama-2-chat style turns (core template data); BOS is added by the encoder, EOS closes each answer.
    chat_template=LLAMA2,
    special_tokens={"bos": "<s>", "eos": "</s>", "unk": "<unk>"},
    capabilities={
        # every built-in PEFT method is exercised on tiny-llama by tests/test_peft_methods.py
        **{m: supported() for m in ("full", "freeze", "lora", "dora", "qlora", "adalora", "ia3", "prefix",
                                    "prompt", "ptuning", "bitfit", "unipelt")},
        "gradient_checkpointing": supported(), "flash_attention": supported("CUDA only"),
        # RoPE positions restart per example (lmforge's default packed collator); attention goes through
        # transformers' attention interface, so lmforge's per-example attention applies
        "packing": supported(),
        # tests/test_long_context.py: each method's frequencies, saved config + reload, generation past the
        # original positions, packing, and the copy-task benchmark (docs/long-context.md)
        "long_context": supported("RoPE scaling (linear, dynamic, yarn, llama3, ntk) written into config.json as "
                                  "transformers' rope_parameters"),
    },
    long_context_methods=("linear", "dynamic", "yarn", "llama3", "ntk"),
    extend_context="lmforge.modeling.longctx:rope_scaling",
)


@hookimpl
def register_model_families(register):
    register(LLAMA)
