"""Conversion of original-layout ChatGLM2/3 and GLM-4 checkpoints to transformers' native ``GlmForCausalLM``.

lmforge loads the original layout with its own modeling code (so LoRA targets,
p-tuning v2 and saved checkpoints keep the released key names); this module maps
the same weights onto transformers' ``glm`` architecture, which is how the tests
prove the forward computation equals an independent implementation, and how a
user can move a fine-tuned ChatGLM3 into the HF layout.

:func:`fast_tokenizer` does the same for the tokenizer: lmforge's GLM tokenizer
classes become a ``tokenizers`` model (``tokenizer.json``) that plain
``AutoTokenizer`` loads as ``PreTrainedTokenizerFast`` with no remote code.
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


def _sentencepiece_backend(tokenizer):
    """ChatGLM2/3's sentencepiece BPE (byte fallback, dummy prefix) as a ``tokenizers.Tokenizer``.

    transformers' ``LlamaConverter`` converts exactly this kind of model (identity
    normalizer, ``add_dummy_prefix``, byte fallback). Two pieces of glue only: its BPE
    path calls ``SentencePieceExtractor.extract(vocab_scores)``, which transformers 5.x
    reads as a model class and fails on, so the extractor below returns what the
    converter expects (vocab + score-ordered merges, transformers' own ``generate_merges``);
    and a model the converter does not mirror (a normalisation rule, whitespace
    squeezing, unigram) is refused rather than converted into different ids.
    """
    from transformers.convert_slow_tokenizer import (LlamaConverter, SentencePieceExtractor, generate_merges,
                                                     import_protobuf)

    from lmforge.errors import LmforgeError

    proto = import_protobuf().ModelProto()
    with open(tokenizer.vocab_file, "rb") as f:
        proto.ParseFromString(f.read())
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    if trainer.model_type != 2 or norm.precompiled_charsmap or norm.remove_extra_whitespaces \
            or not norm.add_dummy_prefix:
        raise LmforgeError(f"export: {tokenizer.vocab_file}: only sentencepiece BPE models with an identity "
                           "normalizer and a dummy prefix (ChatGLM2/3's) convert to tokenizer.json")

    class Extractor(SentencePieceExtractor):
        def extract(self, vocab_scores=None):
            vocab = {p.piece: i for i, p in enumerate(self.proto.pieces)}
            return vocab, generate_merges(vocab, vocab_scores)

    class Converter(LlamaConverter):
        SpmExtractor = Extractor

    from types import SimpleNamespace

    # what the converter reads of a slow tokenizer; legacy + prefix space = sentencepiece's own dummy prefix
    source = SimpleNamespace(vocab_file=tokenizer.vocab_file, legacy=True, add_prefix_space=True,
                             convert_ids_to_tokens=tokenizer.convert_ids_to_tokens)
    return Converter(source).converted()


def fast_tokenizer(tokenizer):
    """lmforge's ChatGLM2/3 or GLM-4 tokenizer as a ``PreTrainedTokenizerFast`` with the same ids.

    The base vocabulary comes from transformers' converters (``LlamaConverter`` for
    ChatGLM2/3's sentencepiece model, ``TikTokenConverter`` for GLM-4's ranks); the
    command tokens (``[gMASK]``, ``sop``, ``<|user|>`` ...) are added as special tokens at
    lmforge's ids, the word-like ``sop``/``eop`` as single words (never inside
    "soprano"); ``add_special_tokens=True`` prepends ``[gMASK] sop`` as lmforge's
    ``build_inputs_with_special_tokens`` does. The chat template is the tokenizer's own.
    Unlike lmforge's ChatGLM2/3 tokenizer, plain text that contains a command string is
    read as that command (as in every transformers fast tokenizer; pass
    ``split_special_tokens=True`` to keep user text as text). One chat the fast tokenizer
    cannot reproduce: ChatGLM2 with a system message, whose template glues ``sop`` to the
    system text (``[gMASK]sopYou are``), where a single-word ``sop`` does not match.
    """
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from lmforge.errors import LmforgeError

    from .tokenization import GLM4_PATTERN, ChatGLM2Tokenizer, GLM4Tokenizer

    if isinstance(tokenizer, GLM4Tokenizer):
        backend = TikTokenConverter(tokenizer.vocab_file, pattern=GLM4_PATTERN).converted()
    elif isinstance(tokenizer, ChatGLM2Tokenizer):
        backend = _sentencepiece_backend(tokenizer)
    else:
        raise TypeError(f"no tokenizer.json form for {type(tokenizer).__name__}")
    commands = sorted(tokenizer.command_ids.items(), key=lambda kv: kv[1])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True, single_word=t.isalnum())
                                for t, _ in commands])
    wrong = {t: backend.token_to_id(t) for t, i in commands if backend.token_to_id(t) != i}
    if wrong or backend.get_vocab_size() != tokenizer.vocab_size:
        raise LmforgeError(f"export: {tokenizer.vocab_file}: the tokenizer.json conversion gives other command ids "
                           f"({wrong}) or vocabulary size ({backend.get_vocab_size()} != {tokenizer.vocab_size})")
    prefix = [tokenizer.convert_ids_to_tokens(i) for i in tokenizer.get_prefix_tokens()]
    eos = tokenizer.eos_token
    template = processors.TemplateProcessing(
        single=" ".join(prefix + ["$A"]), pair=" ".join(prefix + ["$A", "$B:1", f"{eos}:1"]),
        special_tokens=[(t, backend.token_to_id(t)) for t in dict.fromkeys(prefix + [eos])])
    steps = [backend.post_processor] if backend.post_processor is not None else []  # ByteLevel offsets (GLM-4)
    backend.post_processor = processors.Sequence(steps + [template])
    special = {k: getattr(tokenizer, k) for k in ("eos_token", "pad_token", "unk_token")
               if getattr(tokenizer, k, None)}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, padding_side="left", clean_up_tokenization_spaces=False,
        extra_special_tokens=[t for t, _ in commands],
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None, **special)


def save_fast_tokenizer(fast, out_dir: str) -> None:
    """Write a :func:`fast_tokenizer` as ``tokenizer.json`` + ``tokenizer_config.json``
    (``tokenizer_class: PreTrainedTokenizerFast``, the special tokens, ``chat_template``),
    the files ``THUDM/glm-4-9b-chat-hf`` ships."""
    import json
    import os

    fast.save_pretrained(out_dir, save_jinja_files=False)  # chat_template inside tokenizer_config.json
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    # the names every transformers version reads (5.x maps additional_special_tokens to extra_special_tokens)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens", [])
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)


def export_transformers(model, tokenizer, out_dir: str) -> None:
    """``lmforge export --format transformers`` for the GLM families (``ModelFamily.exporter``).

    ChatGLM2, ChatGLM3 and original-layout GLM-4 are written as ``GlmForCausalLM``
    (``model_type: glm``; the same logits, tested); HF-layout GLM-4 is saved as it is.
    GLM v1 and ChatGLM-6B have no transformers architecture: refused, naming what loads them.
    lmforge's GLM tokenizers are written as ``tokenizer.json`` (:func:`save_fast_tokenizer`),
    so plain ``AutoTokenizer`` loads them; a tokenizer that already is a transformers one
    (an HF-layout GLM-4 checkpoint's) is saved as it is.
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
    from .tokenization import ChatGLM2Tokenizer, GLM4Tokenizer

    # converted before anything is written, so a tokenizer that cannot convert leaves no half export
    fast = fast_tokenizer(tokenizer) if isinstance(tokenizer, (ChatGLM2Tokenizer, GLM4Tokenizer)) else None
    native.save_pretrained(out_dir)
    if fast is not None:
        save_fast_tokenizer(fast, out_dir)
    else:
        tokenizer.save_pretrained(out_dir)
