"""Registers the GLM families: ``glm``, ``chatglm``, ``chatglm2``, ``chatglm3``, ``glm4`` (pure Python: no torch at import).

Recognition (``config.json`` only, see :func:`detect_variant`):

- ``model_type: glm`` with THUDM's ``GLMModel``/``GLMForConditionalGeneration``... architectures -> ``glm``;
  ``model_type: glm``/``glm4`` with transformers' own architectures -> ``glm4`` (HF layout);
- ``model_type: chatglm`` with ``position_encoding_2d: true`` -> ``chatglm`` (ChatGLM-6B);
- ``model_type: chatglm`` otherwise -> ``glm4`` when the config is GLM-4's (vocabulary of 151k+,
  a GLM-4 name, or a list of EOS ids), ``chatglm3`` when its name says so or it has
  ChatGLM3-6B's 8k ``seq_length``, else ``chatglm2``. The released ChatGLM2 and ChatGLM3
  configs differ in nothing else; ``family: chatglm3`` in a job config overrides the guess,
  and the loader warns when the directory's tokenizer code disagrees.
"""

from __future__ import annotations

from typing import Any, Mapping

from lmforge import hookimpl
from lmforge.plugins.descriptors import (EOS, ArchSpec, ChatTemplate, ModelFamily, Preset, Special, experimental,
                                         supported, unsupported)

GLM_V1_ARCHITECTURES = ("GLMModel", "GLMForConditionalGeneration", "GLMForMultipleChoice",
                        "GLMForSequenceClassification")
HF_GLM4_ARCHITECTURES = ("GlmForCausalLM", "GlmModel", "Glm4ForCausalLM", "Glm4Model",
                         "GlmForSequenceClassification", "Glm4ForSequenceClassification")
LOADER = "llm_plugins_glm.loader:load"
SAVER = "llm_plugins_glm.loader:save"
EXPORTER = "llm_plugins_glm.convert:export_transformers"
ENCODER = "llm_plugins_glm.encoder:GLMEncoder"
LONGCTX = "llm_plugins_glm.longctx"
# long_context methods (llm_plugins_glm.longctx; the first is `method: family`); plain data so listing stays torch-free
CHATGLM2_METHODS = ("ntk",)
GLM4_METHODS = ("ntk", "linear", "dynamic", "yarn", "llama3")
BLOCK_POSITION_METHODS = ("linear",)


# ------------------------------------------------------------------ recognition


def _name(cfg: Mapping[str, Any]) -> str:
    return str(cfg.get("_name_or_path") or "").lower().replace("_", "-")


def detect_variant(cfg: Mapping[str, Any]) -> str | None:
    """Which GLM variant a ``config.json`` describes: ``glm``, ``chatglm``, ``chatglm2``, ``chatglm3``, ``glm4`` or None."""
    mt = cfg.get("model_type")
    archs = tuple(cfg.get("architectures") or ())
    if mt in ("glm", "glm4"):
        if any(a in GLM_V1_ARCHITECTURES for a in archs) or "block_position_encoding" in cfg:
            return "glm"
        return "glm4"
    if mt is None and any(a in GLM_V1_ARCHITECTURES for a in archs):
        return "glm"
    if mt != "chatglm":
        return None
    if cfg.get("position_encoding_2d"):
        return "chatglm"
    name = _name(cfg)
    vocab = int(cfg.get("padded_vocab_size") or cfg.get("vocab_size") or 0)
    if vocab >= 150000 or "glm-4" in name or "glm4" in name or isinstance(cfg.get("eos_token_id"), list):
        return "glm4"
    if "chatglm3" in name:
        return "chatglm3"
    if "chatglm2" in name or "codegeex2" in name:
        return "chatglm2"
    if cfg.get("seq_length") == 8192 or (cfg.get("rope_ratio") or 1) >= 50:
        return "chatglm3"
    return "chatglm2"


def _matcher(variant: str):
    def match(cfg: Mapping[str, Any]) -> bool:
        return detect_variant(cfg) == variant

    match.__name__ = f"is_{variant}"
    return match


# ------------------------------------------------------------------ architecture numbers


def arch_from_config(cfg: Mapping[str, Any]) -> ArchSpec:
    """Estimator numbers from any GLM-family ``config.json`` (pure Python)."""
    variant = detect_variant(cfg)
    if variant == "glm":
        hidden = int(cfg["hidden_size"])
        return ArchSpec(
            vocab_size=int(cfg["vocab_size"]), hidden_size=hidden, num_layers=int(cfg["num_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]), intermediate_size=4 * hidden,
            mlp_kind="plain", activation="gelu", norm_kind="layernorm", position_kind="learned",
            attention_kind="mha", tied_embeddings=True, attention_bias=True, mlp_bias=True,
            max_position_embeddings=int(cfg.get("max_sequence_length", 512)),
            extra={"block_position_encoding": bool(cfg.get("block_position_encoding", True)),
                   "linear_shapes": {"query_key_value": [hidden, 3 * hidden, True], "dense": [hidden, hidden, True],
                                     "dense_h_to_4h": [hidden, 4 * hidden, True],
                                     "dense_4h_to_h": [4 * hidden, hidden, True]}},
        )
    if variant == "chatglm":
        hidden = int(cfg["hidden_size"])
        inner = int(cfg.get("inner_hidden_size") or 4 * hidden)
        return ArchSpec(
            vocab_size=int(cfg["vocab_size"]), hidden_size=hidden, num_layers=int(cfg["num_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]),
            intermediate_size=inner,
            mlp_kind="plain", activation="gelu", norm_kind="layernorm", position_kind="rope_2d",
            attention_kind="mha", tied_embeddings=False, attention_bias=True, mlp_bias=True,
            max_position_embeddings=int(cfg.get("max_sequence_length", 2048)),
            extra={"linear_shapes": {"query_key_value": [hidden, 3 * hidden, True], "dense": [hidden, hidden, True],
                                     "dense_h_to_4h": [hidden, inner, True], "dense_4h_to_h": [inner, hidden, True]}},
        )
    if cfg.get("model_type") == "chatglm":  # ChatGLM2/3, GLM-4 original layout
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("multi_query_group_num") or heads) if cfg.get("multi_query_attention") else heads
        hidden, ffn = int(cfg["hidden_size"]), int(cfg["ffn_hidden_size"])
        d = int(cfg.get("kv_channels") or hidden // heads)
        bias_out = bool(cfg.get("add_bias_linear"))
        qkv_bias = bool(cfg.get("add_qkv_bias") or bias_out)
        return ArchSpec(
            vocab_size=int(cfg["padded_vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_layers"]), num_attention_heads=heads, num_key_value_heads=kv,
            head_dim=int(cfg.get("kv_channels") or int(cfg["hidden_size"]) // heads),
            intermediate_size=int(cfg["ffn_hidden_size"]), mlp_kind="gated", activation="silu",
            norm_kind="rmsnorm" if cfg.get("rmsnorm", True) else "layernorm", position_kind="rope",
            attention_kind="gqa" if kv != heads else "mha", tied_embeddings=False,
            attention_bias=bool(cfg.get("add_qkv_bias") or cfg.get("add_bias_linear")),
            mlp_bias=bool(cfg.get("add_bias_linear")), max_position_embeddings=int(cfg.get("seq_length", 2048)),
            extra={"rope_ratio": cfg.get("rope_ratio", 1), "rotary_fraction": 0.5,
                   "linear_shapes": {"query_key_value": [hidden, heads * d + 2 * kv * d, qkv_bias],
                                     "dense": [heads * d, hidden, bias_out],
                                     "dense_h_to_4h": [hidden, 2 * ffn, bias_out],
                                     "dense_4h_to_h": [ffn, hidden, bias_out]}},
        )
    heads = int(cfg["num_attention_heads"])  # transformers' glm / glm4
    kv = int(cfg.get("num_key_value_heads") or heads)
    hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    d = int(cfg.get("head_dim") or hidden // heads)
    bias = bool(cfg.get("attention_bias", True))
    return ArchSpec(
        vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]), num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=cfg.get("head_dim"), intermediate_size=int(cfg["intermediate_size"]), mlp_kind="gated",
        activation=str(cfg.get("hidden_act", "silu")), norm_kind="rmsnorm", position_kind="rope",
        attention_kind="gqa" if kv != heads else "mha", tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", True)), mlp_bias=False,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 131072)),
        extra={"rotary_fraction": 0.5,
               "linear_shapes": {"q_proj": [hidden, heads * d, bias], "k_proj": [hidden, kv * d, bias],
                                 "v_proj": [hidden, kv * d, bias], "o_proj": [heads * d, hidden, False],
                                 "gate_up_proj": [hidden, 2 * inter, False], "down_proj": [inter, hidden, False]}},
    )


# ------------------------------------------------------------------ presets


def _glm(layers, hidden, heads, vocab, max_seq, **extra) -> dict:
    cfg = {"model_type": "glm", "architectures": ["GLMModel"], "num_layers": layers, "hidden_size": hidden,
           "num_attention_heads": heads, "vocab_size": vocab, "max_sequence_length": max_seq,
           "block_position_encoding": True, "output_predict": True, "attention_scale": 1.0,
           "embedding_dropout_prob": 0.1, "attention_dropout_prob": 0.1, "output_dropout_prob": 0.1,
           "relative_encoding": False, "parallel_output": True, "initializer_range": 0.02}
    cfg.update(extra)
    return cfg


def _chatglm6b(vocab, hidden, layers, heads, inner, max_seq, bos, eos, mask, gmask, pad, **extra) -> dict:
    cfg = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "vocab_size": vocab, "hidden_size": hidden,
           "num_layers": layers, "num_attention_heads": heads, "inner_hidden_size": inner,
           "max_sequence_length": max_seq, "layernorm_epsilon": 1e-5, "position_encoding_2d": True,
           "bos_token_id": bos, "eos_token_id": eos, "mask_token_id": mask, "gmask_token_id": gmask,
           "pad_token_id": pad, "use_cache": True, "quantization_bit": 0, "pre_seq_len": None,
           "prefix_projection": False}
    cfg.update(extra)
    return cfg


def _chatglm2(vocab, hidden, layers, heads, ffn, kv_channels, groups, seq_length, name, **extra) -> dict:
    cfg = {"_name_or_path": name, "model_type": "chatglm", "architectures": ["ChatGLMModel"],
           "num_layers": layers, "padded_vocab_size": vocab, "hidden_size": hidden, "ffn_hidden_size": ffn,
           "kv_channels": kv_channels, "num_attention_heads": heads, "seq_length": seq_length,
           "multi_query_attention": True, "multi_query_group_num": groups, "add_qkv_bias": True,
           "add_bias_linear": False, "apply_query_key_layer_scaling": True, "apply_residual_connection_post_layernorm":
           False, "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
           "fp32_residual_connection": False, "hidden_dropout": 0.0, "layernorm_epsilon": 1e-5,
           "original_rope": True, "post_layer_norm": True, "rmsnorm": True, "use_cache": True,
           "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0}
    cfg.update(extra)
    return cfg


def _glm4_hf(vocab, hidden, inter, layers, heads, kv, head_dim, max_pos, **extra) -> dict:
    cfg = {"model_type": "glm", "architectures": ["GlmForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "head_dim": head_dim, "max_position_embeddings": max_pos,
           "hidden_act": "silu", "attention_bias": True, "rms_norm_eps": 1.5625e-07, "tie_word_embeddings": False,
           "partial_rotary_factor": 0.5, "rope_theta": 10000.0}
    cfg.update(extra)
    return cfg


TINY = "random weights, 2 layers, hidden 64; offline tokenizer in the released file format"

GLM_PRESETS = (
    Preset("tiny-glm", _glm(2, 64, 4, 1024, 512), f"GLM v1 blank-infilling LM: {TINY} (cog-pretrain.model)",
           tiny=True, tokenizer="llm_plugins_glm.loader:tiny_glm_tokenizer", seed=0),
    Preset("glm-large-chinese", _glm(24, 1024, 16, 50048, 1024), "GLM-large-chinese (335M)"),
    Preset("glm-large", _glm(24, 1024, 16, 30592, 512), "GLM-large, English WordPiece vocabulary (335M)"),
    Preset("glm-2b", _glm(36, 2048, 32, 50304, 1024), "GLM-2B, GPT-2 BPE vocabulary"),
    Preset("glm-10b", _glm(48, 4096, 64, 50304, 1024), "GLM-10B, GPT-2 BPE vocabulary"),
    Preset("glm-10b-chinese", _glm(48, 4096, 64, 50048, 1024), "GLM-10B-chinese (sentencepiece vocabulary)"),
)

CHATGLM_PRESETS = (
    Preset("tiny-chatglm", _chatglm6b(1024, 64, 2, 4, 256, 2048, bos=8, eos=9, mask=4, gmask=5, pad=3),
           f"ChatGLM-6B architecture (2D rotary positions): {TINY} (ice_text.model)", tiny=True,
           tokenizer="llm_plugins_glm.loader:tiny_chatglm_tokenizer", seed=0),
    Preset("chatglm-6b", _chatglm6b(130528, 4096, 28, 32, 16384, 2048, bos=130004, eos=130005, mask=130000,
                                    gmask=130001, pad=3), "ChatGLM-6B (v1)"),
)

CHATGLM2_PRESETS = (
    Preset("tiny-chatglm2", _chatglm2(1024, 64, 2, 4, 160, 16, 2, 32768, "tiny-chatglm2"),
           f"ChatGLM2-6B architecture (multi-query, RMSNorm, half rotary): {TINY} (tokenizer.model)", tiny=True,
           tokenizer="llm_plugins_glm.loader:tiny_chatglm2_tokenizer", seed=0),
    Preset("chatglm2-6b", _chatglm2(65024, 4096, 28, 32, 13696, 128, 2, 32768, "THUDM/chatglm2-6b"),
           "ChatGLM2-6B"),
)

CHATGLM3_PRESETS = (
    Preset("tiny-chatglm3", _chatglm2(1024, 64, 2, 4, 160, 16, 2, 8192, "tiny-chatglm3"),
           f"ChatGLM3-6B architecture with role tokens: {TINY} (tokenizer.model)", tiny=True,
           tokenizer="llm_plugins_glm.loader:tiny_chatglm3_tokenizer", seed=0),
    Preset("chatglm3-6b", _chatglm2(65024, 4096, 28, 32, 13696, 128, 2, 8192, "THUDM/chatglm3-6b"), "ChatGLM3-6B"),
    Preset("chatglm3-6b-32k", _chatglm2(65024, 4096, 28, 32, 13696, 128, 2, 32768, "THUDM/chatglm3-6b-32k",
                                        rope_ratio=50), "ChatGLM3-6B-32K (rope_ratio 50)"),
)

GLM4_EOS = [151329, 151336, 151338]
GLM4_PRESETS = (
    Preset("tiny-glm4", _glm4_hf(1024, 64, 160, 2, 4, 2, 16, 8192, eos_token_id=[1000, 1007, 1009],
                                 pad_token_id=1000),
           f"GLM-4 in transformers' layout (GlmForCausalLM): {TINY} (tiktoken tokenizer.model)", tiny=True,
           tokenizer="llm_plugins_glm.loader:tiny_glm4_tokenizer", seed=0),
    Preset("glm-4-9b", _chatglm2(151552, 4096, 40, 32, 13696, 128, 2, 131072, "THUDM/glm-4-9b-chat",
                                 rope_ratio=500, layernorm_epsilon=1.5625e-07, eos_token_id=GLM4_EOS,
                                 pad_token_id=151329),
           "GLM-4-9B-chat, original THUDM layout (128k context, rope_ratio 500)"),
    Preset("glm-4-9b-hf", _glm4_hf(151552, 4096, 13696, 40, 32, 2, 128, 131072, eos_token_id=GLM4_EOS,
                                   pad_token_id=151329), "GLM-4-9B-chat, transformers' layout (glm-4-9b-chat-hf)"),
)


# ------------------------------------------------------------------ capabilities

_PACKING_2D = unsupported("packing needs per-segment [gMASK]/sop block positions and a block-diagonal "
                          "bidirectional-context mask; the model accepts explicit 2D position_ids and 4D masks, "
                          "but lmforge's packing path does not build them yet")
_PACKING_1D = unsupported("not verified yet: the model accepts per-sample position_ids and a 4D "
                          "full_attention_mask, but no packing test exists for this family")
_UNTESTED = "not tested with the GLM families yet"
_COMMON = {
    "full": supported(),
    "lora": supported("default targets: the fused query_key_value plus the attention output and MLP projections"),
    "prefix": supported("peft prefix tuning: the model reads the prefix from past_key_values (a Cache) and "
                        "keeps it under gradient checkpointing; released p-tuning v2 checkpoints (pre_seq_len) "
                        "also load"),
    "qlora": experimental("the modules are plain nn.Linear and the loader forwards quantization kwargs to "
                          "from_pretrained; a manual tiny-chatglm2 run trained, but no test covers it"),
    "dora": experimental(_UNTESTED),
    "adalora": experimental(_UNTESTED),
    "ia3": experimental(_UNTESTED),
    "freeze": experimental(_UNTESTED),
    "bitfit": experimental(_UNTESTED),
    "unipelt": unsupported("its default LoRA targets (q_proj, v_proj) do not exist in the THUDM layouts, which "
                           "fuse them into query_key_value"),
    "prompt": experimental("virtual tokens enter as inputs_embeds; " + _UNTESTED),
    "ptuning": experimental("virtual tokens enter as inputs_embeds; " + _UNTESTED),
    "gradient_checkpointing": supported(),
    "flash_attention": unsupported("the THUDM-layout modules use PyTorch SDPA/eager attention; flash-attn "
                                   "kernels are not wired in"),
}
_VIRTUAL_TOKENS_2D = unsupported("virtual tokens prepended as inputs_embeds have no ids, so the [gMASK]/<sop> block "
                                 "layout (2D positions, bidirectional context) cannot be built for them")

_THUDM_LORA_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


def _caps(**over) -> dict:
    caps = dict(_COMMON)
    caps.update(over)
    return caps


# ------------------------------------------------------------------ chat templates (data; core renders them)
# Each is the variant's released prompt code, token for token; tests/test_chat_template.py holds the released
# strings beside them.

# GLM v1 (THUDM/GLM blank infilling): [CLS] prompt [gMASK] <|endoftext|> <|startofpiece|> answer <|endofpiece|>;
# no [gMASK] is added when the prompt already holds a mask token. Not a chat model: earlier turns are plain lines.
GLM_TEMPLATE = ChatTemplate(
    name="glm", style="inline", add_bos=False, prefix=Special("[CLS]"),
    system="{content}\n", history_turn="{query}\n{answer}\n", history_query="{query}\n", user="{content}",
    prompt_suffix=(Special("[gMASK]"), EOS, Special("<|startofpiece|>")), optional_masks=("[MASK]", "[sMASK]", "[gMASK]"),
    end_of_turn=Special("<|endofpiece|>"),
    text_prefix=(Special("[CLS]"), Special("[gMASK]"), EOS, Special("<|startofpiece|>")),
    text_end=Special("<|endofpiece|>"))

# ChatGLM-6B (chatglm-6b modeling_chatglm.py chat()): a single turn is the bare query; with history
# "[Round i]\n问：q\n答：r\n" (i from 0) then "[Round n]\n问：query\n答："; the tokenizer appends [gMASK] <sop>.
CHATGLM_TEMPLATE = ChatTemplate(
    name="chatglm", style="inline", add_bos=False, system="{content}\n",
    history_turn="[Round {round}]\n问：{query}\n答：{answer}\n", user="[Round {round}]\n问：{content}\n",
    assistant_prefix="答：", first_user="{content}", prompt_suffix=(Special("[gMASK]"), Special("<sop>")),
    end_of_turn=Special("<eop>"), text_prefix=(Special("[gMASK]"), Special("<sop>")), text_end=Special("<eop>"))

# ChatGLM2-6B (tokenization_chatglm.py build_prompt): [gMASK] sop + "[Round i]\n\n问：q\n\n答：r\n\n" (i from 1)
# + "[Round n]\n\n问：query\n\n答：", the history inside the one prompt string; the answer ends with </s>.
_GLM2_PREFIX = (Special("[gMASK]"), Special("sop"))
CHATGLM2_TEMPLATE = ChatTemplate(
    name="chatglm2", style="inline", add_bos=False, prefix=_GLM2_PREFIX, system="{content}\n\n",
    history_turn="[Round {round1}]\n\n问：{query}\n\n答：{answer}\n\n", user="[Round {round1}]\n\n问：{content}\n\n",
    assistant_prefix="答：", text_prefix=_GLM2_PREFIX)


def _role_template(name: str, prefix: tuple, end_of_turn: Special) -> ChatTemplate:
    """ChatGLM3 / GLM-4 (build_single_message): per message <|role|>, "\n" and the content, each encoded on its own;
    generation starts after <|assistant|>; the role token after an answer is trained (it ends the answer)."""
    def role(r):
        return (Special(f"<|{r}|>"), "\n", "{content}")

    return ChatTemplate(
        name=name, style="roles", add_bos=False, prefix=prefix, system=role("system"), user=role("user"),
        assistant=role("assistant"), observation=role("observation"), assistant_prefix=Special("<|assistant|>"),
        end_of_turn=end_of_turn, stop_tokens=(EOS, Special("<|user|>"), Special("<|observation|>")),
        text_prefix=prefix)


# ChatGLM3-6B: [gMASK] sop; a final answer closes with </s> (EOS)
CHATGLM3_TEMPLATE = _role_template("chatglm3", _GLM2_PREFIX, EOS)
# GLM-4: [gMASK] <sop>; a final answer closes with <|user|> (the chat EOS of the released fine-tuning code)
GLM4_TEMPLATE = _role_template("glm4", (Special("[gMASK]"), Special("<sop>")), Special("<|user|>"))


GLM = ModelFamily(
    name="glm",
    description="GLM v1 blank-infilling LM (GLM-large/-10B, GLM-large-chinese, AntGLM): lmforge's own modeling",
    aliases=("glm-v1", "antglm"),
    model_types=("glm",),
    architectures=GLM_V1_ARCHITECTURES,
    match=_matcher("glm"),
    loader=LOADER, saver=SAVER, encoder=ENCODER, exporter=EXPORTER, tokenizer_loader="llm_plugins_glm.loader:glm_tokenizer",
    arch_from_config=arch_from_config,
    presets=GLM_PRESETS,
    estimator_profile="llm_plugins_glm.estimate:profile",
    default_lora_targets=_THUDM_LORA_TARGETS,
    chat_template=GLM_TEMPLATE,
    special_tokens={"cls": "[CLS]", "eos": "<|endoftext|>", "sop": "<|startofpiece|>", "eop": "<|endofpiece|>",
                    "gmask": "[gMASK]", "smask": "[sMASK]", "mask": "[MASK]"},
    capabilities=_caps(
        packing=_PACKING_2D, prompt=_VIRTUAL_TOKENS_2D, ptuning=_VIRTUAL_TOKENS_2D,
        long_context=supported("position interpolation of both block-position channels: the learned tables are "
                               "read at position / factor (linear interpolation between trained rows)"),
    ),
    long_context_methods=BLOCK_POSITION_METHODS,
    extend_context=f"{LONGCTX}:extend_block_positions",
)

CHATGLM = ModelFamily(
    name="chatglm",
    description="ChatGLM-6B (v1): 2D rotary block positions, GLM prefix attention; lmforge's own modeling",
    aliases=("chatglm-6b", "chatglm1"),
    model_types=("chatglm",),
    match=_matcher("chatglm"),
    loader=LOADER, saver=SAVER, encoder=ENCODER, exporter=EXPORTER, tokenizer_loader="llm_plugins_glm.loader:chatglm_tokenizer",
    arch_from_config=arch_from_config,
    presets=CHATGLM_PRESETS,
    estimator_profile="llm_plugins_glm.estimate:profile",
    default_lora_targets=_THUDM_LORA_TARGETS,
    chat_template=CHATGLM_TEMPLATE,
    special_tokens={"bos": "<sop>", "eos": "<eop>", "gmask": "[gMASK]", "mask": "[MASK]", "pad": "<pad>"},
    capabilities=_caps(
        packing=_PACKING_2D, prompt=_VIRTUAL_TOKENS_2D, ptuning=_VIRTUAL_TOKENS_2D,
        long_context=supported("position interpolation of both 2D rotary channels (position / factor)"),
    ),
    long_context_methods=BLOCK_POSITION_METHODS,
    extend_context=f"{LONGCTX}:extend_block_positions",
)

CHATGLM2 = ModelFamily(
    name="chatglm2",
    description="ChatGLM2-6B (original THUDM layout): multi-query attention, RMSNorm, half rotary",
    aliases=("chatglm2-6b", "codegeex2"),
    model_types=("chatglm",),
    match=_matcher("chatglm2"),
    loader=LOADER, saver=SAVER, encoder=ENCODER, exporter=EXPORTER, tokenizer_loader="llm_plugins_glm.loader:chatglm2_tokenizer",
    arch_from_config=arch_from_config,
    presets=CHATGLM2_PRESETS,
    estimator_profile="llm_plugins_glm.estimate:profile",
    default_lora_targets=_THUDM_LORA_TARGETS,
    chat_template=CHATGLM2_TEMPLATE,
    special_tokens={"gmask": "[gMASK]", "sop": "sop", "eos": "</s>", "pad": "<unk>"},
    capabilities=_caps(
        packing=_PACKING_1D,
        long_context=supported("rope_ratio scales the rotary base (the -32k checkpoints' mechanism): method ntk"),
    ),
    long_context_methods=CHATGLM2_METHODS,
    extend_context=f"{LONGCTX}:extend_chatglm2",
)

CHATGLM3 = ModelFamily(
    name="chatglm3",
    description="ChatGLM3-6B (original THUDM layout): ChatGLM2's architecture, role tokens",
    aliases=("chatglm3-6b",),
    model_types=("chatglm",),
    match=_matcher("chatglm3"),
    loader=LOADER, saver=SAVER, encoder=ENCODER, exporter=EXPORTER, tokenizer_loader="llm_plugins_glm.loader:chatglm3_tokenizer",
    arch_from_config=arch_from_config,
    presets=CHATGLM3_PRESETS,
    estimator_profile="llm_plugins_glm.estimate:profile",
    default_lora_targets=_THUDM_LORA_TARGETS,
    chat_template=CHATGLM3_TEMPLATE,
    special_tokens={"gmask": "[gMASK]", "sop": "sop", "eos": "</s>", "system": "<|system|>", "user": "<|user|>",
                    "assistant": "<|assistant|>", "observation": "<|observation|>"},
    capabilities=_caps(
        packing=_PACKING_1D,
        long_context=supported("rope_ratio scales the rotary base (chatglm3-6b-32k's mechanism): method ntk"),
    ),
    long_context_methods=CHATGLM2_METHODS,
    extend_context=f"{LONGCTX}:extend_chatglm2",
)

GLM4 = ModelFamily(
    name="glm4",
    description="GLM-4 (GLM-4-9B): transformers' native glm/glm4 layout, or THUDM's original layout "
                "(lmforge's ChatGLM2-architecture modeling) with the tiktoken tokenizer",
    aliases=("glm-4",),
    model_types=("glm", "glm4", "chatglm"),
    architectures=HF_GLM4_ARCHITECTURES,
    match=_matcher("glm4"),
    loader=LOADER, saver=SAVER, encoder=ENCODER, exporter=EXPORTER, tokenizer_loader="llm_plugins_glm.loader:glm4_tokenizer",
    arch_from_config=arch_from_config,
    presets=GLM4_PRESETS,
    estimator_profile="llm_plugins_glm.estimate:profile",
    default_lora_targets=_THUDM_LORA_TARGETS + ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    chat_template=GLM4_TEMPLATE,
    special_tokens={"gmask": "[gMASK]", "sop": "<sop>", "eos": "<|endoftext|>", "system": "<|system|>",
                    "user": "<|user|>", "assistant": "<|assistant|>", "observation": "<|observation|>"},
    capabilities=_caps(
        packing=_PACKING_1D,
        long_context=supported("THUDM layout: rope_ratio (method ntk only); transformers' layout: transformers' "
                               "RoPE scaling (ntk, linear, dynamic, yarn, llama3)"),
        flash_attention=experimental("HF layout only (transformers' GlmForCausalLM, CUDA); the original layout "
                                     "uses SDPA"),
    ),
    long_context_methods=GLM4_METHODS,
    extend_context=f"{LONGCTX}:extend_glm4",
)

FAMILIES = (GLM, CHATGLM, CHATGLM2, CHATGLM3, GLM4)


@hookimpl
def register_model_families(register):
    for family in FAMILIES:
        register(family)
