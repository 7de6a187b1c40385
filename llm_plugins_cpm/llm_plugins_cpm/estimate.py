"""The CPM families' estimator profiles: how their forward passes differ from transformers' LLaMA.

Pure Python; registered as ``ModelFamily.estimator_profile``. The built-in
``analytic`` estimator merges the result under the arch's own ``extra`` (see
:mod:`lmforge_builtins.estimator.profiles` for the keys).
"""

from __future__ import annotations

from typing import Any


def cpmant(arch, model_type: str) -> dict[str, Any]:
    """CPM-Ant: its own projections, prompt rows, segment embedding and position bias (approximate replay)."""
    h, i, hd = arch.hidden_size, arch.intermediate_size, arch.num_attention_heads * arch.dim_per_head
    ex = arch.extra
    prompts = int(ex.get("prompt_types", 32)) * int(ex.get("prompt_length", 32))
    buckets = int(ex.get("position_bias_num_buckets", 512))
    return {"attn_kernel": "eager",
            "approximate": "CPM-Ant (position bias, own attention)",
            "linear_shapes": {"project_q": [h, hd], "project_k": [h, hd], "project_v": [h, hd],
                              "attention_out": [hd, h], "w_0": [h, i], "w_1": [h, i], "w_out": [i, h]},
            # prompt-token rows of the input embedding, segment embedding, relative position bias
            "extra_params": [["input_embedding.prompt_rows", prompts * h, True, True],
                             ["segment_embedding.weight", int(ex.get("segment_types", ex.get("prompt_types", 32))) * h, True, True],
                             ["position_bias.relative_attention_bias",
                              (buckets + int(ex.get("prompt_types", 32)) * 4) * arch.num_attention_heads, True, True]]}


def minicpm(arch, model_type: str) -> dict[str, Any]:
    """This plugin's MiniCPM: RMSNorm as x * rsqrt(var) in x's dtype, then cast, then the weight."""
    return {"rmsnorm": "minicpm"}


def minicpm3(arch, model_type: str) -> dict[str, Any]:
    """MiniCPM3: multi-head latent attention (its projections and norms; approximate replay)."""
    h, i, H = arch.hidden_size, arch.intermediate_size, arch.num_attention_heads
    ex = arch.extra
    ql, kvl = int(ex.get("q_lora_rank", 768)), int(ex.get("kv_lora_rank", 256))
    nope, rope, vd = int(ex.get("qk_nope_head_dim", 64)), int(ex.get("qk_rope_head_dim", 32)), int(ex.get("v_head_dim", 64))
    return {"rmsnorm": "minicpm",
            "approximate": "MiniCPM3 (multi-head latent attention)",
            "linear_shapes": {"q_a_proj": [h, ql], "q_b_proj": [ql, H * (nope + rope)],
                              "kv_a_proj_with_mqa": [h, kvl + rope], "kv_b_proj": [kvl, H * (nope + vd)],
                              "o_proj": [H * vd, h], "gate_proj": [h, i], "up_proj": [h, i], "down_proj": [i, h]},
            "layer_params": [["q_a_layernorm.weight", ql, False], ["kv_a_layernorm.weight", kvl, False]]}
