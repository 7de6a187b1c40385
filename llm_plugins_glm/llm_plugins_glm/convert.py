"""Conversion of original-layout ChatGLM2/3 and GLM-4 checkpoints to transformers' native ``GlmForCausalLM``.

lmforge loads the original layout with its own modeling code (so LoRA targets,
p-tuning v2 and saved checkpoints keep the released key names); this module maps
the same weights onto transformers' ``glm`` architecture, which is how the tests
prove the forward computation equals an independent implementation, and how a
user can move a fine-tuned ChatGLM3 into the HF layout.
"""

from __future__ import annotations

from .configuration import ChatGLM2Config


def native_glm_config(config: ChatGLM2Config):
    """The ``transformers.GlmConfig`` with the same architecture; ``ValueError`` for variants it cannot express."""
    from transformers import GlmConfig

    if not config.rmsnorm or config.add_bias_linear or config.apply_residual_connection_post_layernorm \
            or not config.post_layer_norm:
        raise ValueError("only RMSNorm, pre-norm, bias-free-output ChatGLM2-style configs map onto GlmForCausalLM")
    groups = config.multi_query_group_num if config.multi_query_attention else config.num_attention_heads
    eos = config.eos_token_id
    return GlmConfig(
        vocab_size=config.padded_vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.ffn_hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=groups, head_dim=config.kv_channels,
        rms_norm_eps=config.layernorm_epsilon, attention_bias=bool(config.add_qkv_bias),
        max_position_embeddings=config.seq_length, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * (config.rope_ratio or 1),
                         "partial_rotary_factor": 0.5},
        pad_token_id=config.pad_token_id, eos_token_id=eos if eos is not None else [0],
        attention_dropout=config.attention_dropout,
    )


def to_native_state_dict(state_dict: dict, config: ChatGLM2Config) -> dict:
    """Rename/split original-layout tensors into ``GlmForCausalLM`` keys."""
    heads, d = config.num_attention_heads, config.kv_channels
    groups = config.multi_query_group_num if config.multi_query_attention else heads
    out = {"model.embed_tokens.weight": state_dict["transformer.embedding.word_embeddings.weight"],
           "lm_head.weight": state_dict["transformer.output_layer.weight"],
           "model.norm.weight": state_dict["transformer.encoder.final_layernorm.weight"]}
    for i in range(config.num_layers):
        src, dst = f"transformer.encoder.layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = state_dict[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state_dict[src + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            key = src + f"self_attention.query_key_value.{kind}"
            if key not in state_dict:
                continue
            q, k, v = state_dict[key].split([heads * d, groups * d, groups * d], dim=0)
            if not config.multi_query_attention:  # fused per head as [H, 3, D]
                t = state_dict[key].view(heads, 3 * d, *state_dict[key].shape[1:])
                q, k, v = (x.reshape(heads * d, *state_dict[key].shape[1:]) for x in t.split(d, dim=1))
            out[dst + f"self_attn.q_proj.{kind}"] = q
            out[dst + f"self_attn.k_proj.{kind}"] = k
            out[dst + f"self_attn.v_proj.{kind}"] = v
        out[dst + "self_attn.o_proj.weight"] = state_dict[src + "self_attention.dense.weight"]
        out[dst + "mlp.gate_up_proj.weight"] = state_dict[src + "mlp.dense_h_to_4h.weight"]
        out[dst + "mlp.down_proj.weight"] = state_dict[src + "mlp.dense_4h_to_h.weight"]
    return {k: v.clone() for k, v in out.items()}


def to_native_glm(model):
    """A ``transformers.GlmForCausalLM`` carrying the weights of an original-layout model (same dtype)."""
    from transformers import GlmForCausalLM

    native = GlmForCausalLM(native_glm_config(model.config)).to(model.dtype)
    missing, unexpected = native.load_state_dict(to_native_state_dict(model.state_dict(), model.config), strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise ValueError(f"conversion left missing={missing} unexpected={unexpected}")
    return native.eval()
def export_transformers(model, tokenizer, out_dir: str) -> None:
    """``lmforge export --format transformers`` for the GLM families (``ModelFamily.exporter``).

    ChatGLM2, ChatGLM3 and original-layout GLM-4 are written as ``GlmForCausalLM``
    (``model_type: glm``; the same logits, tested); HF-layout GLM-4 is saved as it is.
    GLM v1 and ChatGLM-6B have no transformers architecture: refused, naming what loads them.
    The tokenizer is saved in its released file format (see docs/getting-started.md).
    """
    from lmforge.errors import LmforgeError

    model_type = getattr(model.config, "model_type", None)
    if type(model).__module__.startswith("transformers."):  # HF-layout GLM-4 (GlmForCausalLM / Glm4ForCausalLM)
        native = model
    elif isinstance(model.config, ChatGLM2Config):
        try:
            native = to_native_glm(model)
        except ValueError as exc:
            raise LmforgeError(f"export: this ChatGLM2-style variant has no GlmForCausalLM form: {exc}") from None
    else:
        raise LmforgeError(
            f"export: transformers has no architecture for {model_type!r} (GLM v1 / ChatGLM-6B): load it with "
            "lmforge (lmforge.load, lmforge generate; `lmforge merge` writes the released layout), or the released "
            "layout with the released modeling code under trust_remote_code, at your own trust")
    native.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
