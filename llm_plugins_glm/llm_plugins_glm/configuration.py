"""Configuration classes for the GLM architectures that transformers does not ship.

They read the released ``config.json`` files unchanged (same keys, same defaults
as THUDM's configuration files) and add a few derived attributes that generic
tooling looks for (``num_hidden_layers``, ``vocab_size``, ``num_key_value_heads``).
Derived keys are listed in :data:`DERIVED_KEYS` and never written back to disk;
the long-context keys in :data:`LONG_CONTEXT_KEYS` are written only when set
(:mod:`llm_plugins_glm.longctx`).
"""

from __future__ import annotations

from transformers import PreTrainedConfig

# attributes computed here (or set by the loader) that are not part of the released config.json
DERIVED_KEYS = frozenset({"num_key_value_heads", "head_dim", "sop_token_id", "eop_token_id", "mask_token_ids",
                          "gmask_token_id_v1", "lmforge_variant"})
# keys a long_context extension sets; the saver writes them when they differ from the class default
LONG_CONTEXT_KEYS = ("rope_ratio", "seq_length", "max_sequence_length", "position_interpolation_factor",
                     "original_max_sequence_length")


class GLMConfig(PreTrainedConfig):
    """GLM v1 (THUDM GLM-large/-10B, GLM-large-chinese, AntGLM): ``model_type: glm`` with ``GLMModel`` architectures.

    ``sop_token_id`` and ``mask_token_ids`` are not in the released config (the released
    tokenizer builds positions); the lmforge loader fills them from the tokenizer so the
    model can build block positions from ``input_ids`` alone.
    """

    model_type = "glm"
    attribute_map = {"num_hidden_layers": "num_layers"}

    def __init__(self, num_layers=24, vocab_size=30592, hidden_size=1024, num_attention_heads=16,
                 embedding_dropout_prob=0.1, attention_dropout_prob=0.1, output_dropout_prob=0.1,
                 max_sequence_length=512, checkpoint_activations=False, checkpoint_num_layers=1,
                 parallel_output=True, relative_encoding=False, block_position_encoding=True, output_predict=False,
                 spell_length=None, spell_func="lstm", attention_scale=1.0, initializer_range=0.02,
                 pool_token="cls", sop_token_id=None, mask_token_ids=None, use_cache=True,
                 position_interpolation_factor=1.0, original_max_sequence_length=None, **kwargs):
        self.num_layers = num_layers
        self.use_cache = use_cache
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.embedding_dropout_prob = embedding_dropout_prob
        self.attention_dropout_prob = attention_dropout_prob
        self.output_dropout_prob = output_dropout_prob
        self.max_sequence_length = max_sequence_length
        self.checkpoint_activations = checkpoint_activations
        self.checkpoint_num_layers = checkpoint_num_layers
        self.parallel_output = parallel_output
        self.relative_encoding = relative_encoding
        self.block_position_encoding = block_position_encoding
        self.output_predict = output_predict
        self.spell_length = spell_length
        self.spell_func = spell_func
        self.attention_scale = attention_scale
        self.initializer_range = initializer_range
        self.pool_token = pool_token
        self.sop_token_id = sop_token_id
        self.mask_token_ids = list(mask_token_ids) if mask_token_ids else None
        # long context (lmforge's keys, see llm_plugins_glm.longctx): positions are read at p / factor, and the
        # learned tables keep original_max_sequence_length (+1) trained rows (None: max_sequence_length)
        self.position_interpolation_factor = position_interpolation_factor
        self.original_max_sequence_length = original_max_sequence_length
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)


class ChatGLMConfig(PreTrainedConfig):
    """ChatGLM-6B (v1): ``model_type: chatglm`` with ``position_encoding_2d: true``."""

    model_type = "chatglm"
    attribute_map = {"num_hidden_layers": "num_layers"}

    def __init__(self, vocab_size=150528, hidden_size=4096, num_layers=28, num_attention_heads=32,
                 layernorm_epsilon=1e-5, use_cache=False, bos_token_id=150004, eos_token_id=150005,
                 mask_token_id=150000, gmask_token_id=150001, pad_token_id=0, max_sequence_length=2048,
                 inner_hidden_size=16384, position_encoding_2d=True, quantization_bit=0, pre_seq_len=None,
                 prefix_projection=False, position_interpolation_factor=1.0, original_max_sequence_length=None,
                 **kwargs):
        self.num_layers = num_layers
        self.vocab_size = vocab_size
        self.num_attention_heads = num_attention_heads
        self.hidden_size = hidden_size
        self.max_sequence_length = max_sequence_length
        self.layernorm_epsilon = layernorm_epsilon
        self.inner_hidden_size = inner_hidden_size
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.mask_token_id = mask_token_id
        self.gmask_token_id = gmask_token_id
        self.position_encoding_2d = position_encoding_2d
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        # long context (lmforge's keys, see llm_plugins_glm.longctx): both rotary channels read p / factor
        self.position_interpolation_factor = position_interpolation_factor
        self.original_max_sequence_length = original_max_sequence_length
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)


class ChatGLM2Config(PreTrainedConfig):
    """ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B in THUDM's original layout (``model_type: chatglm``, 1D rotary)."""

    model_type = "chatglm"
    attribute_map = {"num_hidden_layers": "num_layers", "vocab_size": "padded_vocab_size"}

    def __init__(self, num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696,
                 kv_channels=128, num_attention_heads=32, seq_length=2048, hidden_dropout=0.0,
                 classifier_dropout=None, attention_dropout=0.0, layernorm_epsilon=1e-5, rmsnorm=True,
                 apply_residual_connection_post_layernorm=False, post_layer_norm=True, add_bias_linear=False,
                 add_qkv_bias=False, bias_dropout_fusion=True, multi_query_attention=False, multi_query_group_num=1,
                 rope_ratio=1, apply_query_key_layer_scaling=True, attention_softmax_in_fp32=True,
                 fp32_residual_connection=False, quantization_bit=0, pre_seq_len=None, prefix_projection=False,
                 original_rope=True, use_cache=True, **kwargs):
        self.num_layers = num_layers
        self.use_cache = use_cache
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.hidden_dropout = hidden_dropout
        self.classifier_dropout = classifier_dropout
        self.attention_dropout = attention_dropout
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.bias_dropout_fusion = bias_dropout_fusion
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.rope_ratio = rope_ratio
        self.apply_query_key_layer_scaling = apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = attention_softmax_in_fp32
        self.fp32_residual_connection = fp32_residual_connection
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        self.original_rope = original_rope
        # what peft's prefix tuning and generic tooling look up (not written back to config.json)
        self.num_key_value_heads = multi_query_group_num if multi_query_attention else num_attention_heads
        self.head_dim = kv_channels
        kwargs.pop("num_key_value_heads", None)
        kwargs.pop("head_dim", None)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
