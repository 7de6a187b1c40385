"""How a model type's forward pass differs from transformers' LLaMA, for the estimator.

A family describes its architecture numbers in :class:`~lmforge.plugins.descriptors.ArchSpec`;
the few implementation details that change what autograd saves are filled in
here by ``model_type`` (the family's own ``ArchSpec.extra`` always wins):

``program``        ``llama`` (default) or ``bloom`` (see :mod:`.decoder`), or ``"module:attr"``
``attn_kernel``    force ``eager`` / ``sdpa`` whatever the job asks (the model has only that path)
``kv_repeat``      ``hf`` (repeat K/V only when SDPA gets a mask) or ``always``
``rmsnorm``        ``hf`` (normalise in fp32, cast, then scale), ``glm2`` (scale in fp32, then cast) or
                   ``minicpm`` (normalise the input in its own dtype, cast, then scale)
``rope_saved``     ``cos_sin`` (two (s, d) tables) or ``cache`` (one (b, s, rot/2, 2) table)
``embedding_norm`` a LayerNorm right after the word embeddings (BLOOM)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

def _bloom(arch) -> dict[str, Any]:
    h, i = arch.hidden_size, arch.intermediate_size
    return {"program": "bloom", "embedding_norm": True, "attn_kernel": "eager",
            "linear_shapes": {"query_key_value": [h, 3 * h, True], "dense": [h, h, True],
                              "dense_h_to_4h": [h, i, True], "dense_4h_to_h": [i, h, True]}}


def _cpmant(arch) -> dict[str, Any]:
    h, i, hd = arch.hidden_size, arch.intermediate_size, arch.num_attention_heads * arch.dim_per_head
    ex = arch.extra
    prompts = int(ex.get("prompt_types", 32)) * int(ex.get("prompt_length", 32))
    buckets = int(ex.get("position_bias_num_buckets", 512))
    return {"attn_kernel": "eager",
            "linear_shapes": {"project_q": [h, hd], "project_k": [h, hd], "project_v": [h, hd],
                              "attention_out": [hd, h], "w_0": [h, i], "w_1": [h, i], "w_out": [i, h]},
            # prompt-token rows of the input embedding, segment embedding, relative position bias
            "extra_params": [["input_embedding.prompt_rows", prompts * h, True, True],
                             ["segment_embedding.weight", int(ex.get("segment_types", ex.get("prompt_types", 32))) * h, True, True],
                             ["position_bias.relative_attention_bias",
                              (buckets + int(ex.get("prompt_types", 32)) * 4) * arch.num_attention_heads, True, True]]}


def _minicpm3(arch) -> dict[str, Any]:
    h, i, H = arch.hidden_size, arch.intermediate_size, arch.num_attention_heads
    ex = arch.extra
    ql, kvl = int(ex.get("q_lora_rank", 768)), int(ex.get("kv_lora_rank", 256))
    nope, rope, vd = int(ex.get("qk_nope_head_dim", 64)), int(ex.get("qk_rope_head_dim", 32)), int(ex.get("v_head_dim", 64))
    return {"rmsnorm": "minicpm",
            "linear_shapes": {"q_a_proj": [h, ql], "q_b_proj": [ql, H * (nope + rope)],
                              "kv_a_proj_with_mqa": [h, kvl + rope], "kv_b_proj": [kvl, H * (nope + vd)],
                              "o_proj": [H * vd, h], "gate_proj": [h, i], "up_proj": [h, i], "down_proj": [i, h]},
            "layer_params": [["q_a_layernorm.weight", ql, False], ["kv_a_layernorm.weight", kvl, False]]}


PROFILES: dict[str, Any] = {
    "bloom": _bloom,
    # ChatGLM2/3 and GLM-4 in THUDM's layout (the GLM plugin's own modeling code)
    "chatglm": {"rmsnorm": "glm2", "rope_saved": "cache", "attn_kernel": "sdpa", "kv_repeat": "always",
                "rotary_fraction": 0.5},
    "cpmant": _cpmant,
    "minicpm3": _minicpm3,
    # the CPM plugin's MiniCPM: x * rsqrt(var) in x's dtype, then cast, then the weight
    "minicpm": {"rmsnorm": "minicpm"},
}

APPROXIMATE = {
    # model types whose forward pass the estimator replays only approximately (priced as LLaMA-like)
    "glm-v1": "GLM v1 (2D block positions, own attention)",
    "chatglm-6b": "ChatGLM-6B (2D rotary, own attention)",
    "cpmant": "CPM-Ant (position bias, own attention)",
    "minicpm3": "MiniCPM3 (multi-head latent attention)",
}


def profile_key(arch, model_type: str) -> str:
    if model_type == "chatglm" and arch.position_kind == "rope_2d":
        return "chatglm-6b"
    if model_type == "glm" and arch.position_kind == "learned":
        return "glm-v1"
    return model_type


def with_profile(arch, model_type: str):
    """``arch`` with the profile of ``model_type`` under its own ``extra``."""
    key = profile_key(arch, model_type)
    prof = PROFILES.get(key, {}) if key != "chatglm-6b" else {}
    prof = dict(prof(arch) if callable(prof) else prof)
    if not prof:
        return arch
    prof.update(arch.extra)
    return replace(arch, extra=prof)


def approximation(arch, model_type: str) -> str | None:
    """Why the activations of this model type are approximate, or None when the replay is faithful."""
    return APPROXIMATE.get(profile_key(arch, model_type))
