"""ChatGLM-6B (v1, ``position_encoding_2d: true``) written for lmforge.

State-dict keys and shapes are the released ones::

    transformer.word_embeddings.weight
    transformer.layers.N.{input_layernorm,post_attention_layernorm}.{weight,bias}
    transformer.layers.N.attention.query_key_value.{weight,bias}
    transformer.layers.N.attention.dense.{weight,bias}
    transformer.layers.N.attention.rotary_emb.inv_freq
    transformer.layers.N.mlp.{dense_h_to_4h,dense_4h_to_h}.{weight,bias}
    transformer.final_layernorm.{weight,bias}
    lm_head.weight
    transformer.prefix_encoder.embedding.weight        (p-tuning v2 checkpoints only)

The computation is the released one: LayerNorm'd input scaled by
``alpha = sqrt(2 * 28)`` in both residual branches (the released block never
receives ``num_layers``, so 28 holds for every size), fused per-head QKV, 2D rotary
embeddings (first half of each head rotated by the position, second half by the
block position; ``inv_freq`` rounded to fp16 as released), query scaled by
``1 / (sqrt(d) * (layer + 1))`` and scores re-multiplied by ``layer + 1`` in fp32,
masked with -10000, tanh-GELU MLP. Long context: ``position_interpolation_factor``
(lmforge's config key) rotates both channels by ``position / factor``; 1 is the release. Positions and the prefix (context) attention
are built from ``input_ids``: the context is everything before ``<sop>``
(``bos_token_id``); from ``<sop>`` on, tokens sit at the ``[gMASK]`` (else ``[MASK]``)
position with block positions 1, 2, ...
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import ChatGLMConfig
from .modeling_common import (GLMGenerationMixin, allowed_attention, as_cache, attach_cache, block_layout,
                              cache_length, causal_lm_loss, run_layers, split_padding_mask)
from lmforge.modeling.hfcompat import take_cache

RELEASED_NUM_LAYERS_FOR_ALPHA = 28


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The released ``gelu_impl`` (OpenAI's tanh approximation, same operation order)."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary tables for ``dim`` channels; ``inv_freq`` is rounded to fp16 like the released module."""

    def __init__(self, dim: int, factor: float = 1.0):
        super().__init__()
        self.dim = dim
        self.factor = float(factor)  # position interpolation (long context): positions are read as p / factor
        self.register_buffer("inv_freq", self.default_inv_freq(dim), persistent=True)

    @staticmethod
    def default_inv_freq(dim: int) -> torch.Tensor:
        return (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half().float()

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """``[B, L]`` positions -> ``cos, sin`` of shape ``[B, L, 1, dim]``."""
        positions = position_ids.to(self.inv_freq.dtype)
        if self.factor != 1.0:
            positions = positions / self.factor
        freqs = positions[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype).unsqueeze(2), emb.sin().to(dtype).unsqueeze(2)


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.hidden_size = config.hidden_size
        self.position_encoding_2d = config.position_encoding_2d
        self.rotary_emb = RotaryEmbedding(self.head_dim // 2 if config.position_encoding_2d else self.head_dim,
                                          factor=getattr(config, "position_interpolation_factor", None) or 1.0)
        self.query_key_value = nn.Linear(config.hidden_size, 3 * self.num_heads * self.head_dim, bias=True)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=True)

    def _rotate(self, q, k, position_ids):
        if self.position_encoding_2d:
            q1, q2 = q.chunk(2, dim=-1)
            k1, k2 = k.chunk(2, dim=-1)
            cos, sin = self.rotary_emb(position_ids[:, 0], q.dtype)
            q1, k1 = q1 * cos + rotate_half(q1) * sin, k1 * cos + rotate_half(k1) * sin
            cos, sin = self.rotary_emb(position_ids[:, 1], q.dtype)
            q2, k2 = q2 * cos + rotate_half(q2) * sin, k2 * cos + rotate_half(k2) * sin
            return torch.cat([q1, q2], dim=-1), torch.cat([k1, k2], dim=-1)
        pos = position_ids if position_ids.dim() == 2 else position_ids[:, 0]
        cos, sin = self.rotary_emb(pos, q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    def forward(self, hidden_states, position_ids, allowed, past_key_values=None, use_cache=False):
        bsz, length, _ = hidden_states.shape
        mixed = self.query_key_value(hidden_states).view(bsz, length, self.num_heads, 3 * self.head_dim)
        q, k, v = mixed.split(self.head_dim, dim=-1)  # [B, L, H, D]
        q, k = self._rotate(q, k, position_ids)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k, v = attach_cache(past_key_values, self.layer_idx, k, v, use_cache)
        coeff = float(self.layer_idx + 1)
        q = q / (math.sqrt(self.head_dim) * coeff)
        scores = torch.matmul(q, k.transpose(-1, -2))
        if allowed is not None:
            scores = scores.masked_fill(~allowed, -10000.0)
        dtype = scores.dtype
        probs = F.softmax(scores.float() * coeff, dim=-1).to(dtype)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(bsz, length, self.hidden_size)
        return self.dense(ctx)


class GLU(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        inner = config.inner_hidden_size or 4 * config.hidden_size
        self.dense_h_to_4h = nn.Linear(config.hidden_size, inner, bias=True)
        self.dense_4h_to_h = nn.Linear(inner, config.hidden_size, bias=True)

    def forward(self, hidden_states):
        return self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(hidden_states)))


class GLMBlock(GradientCheckpointingLayer):
    _can_checkpoint_with_cache = True

    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLU(config)
        self.alpha = (2 * RELEASED_NUM_LAYERS_FOR_ALPHA) ** 0.5

    def forward(self, hidden_states, position_ids, allowed=None, past_key_values=None, use_cache=False):
        attention_input = self.input_layernorm(hidden_states)
        attention_output = self.attention(attention_input, position_ids, allowed, past_key_values, use_cache)
        hidden_states = attention_input * self.alpha + attention_output
        mlp_input = self.post_attention_layernorm(hidden_states)
        return mlp_input * self.alpha + self.mlp(mlp_input)


class PrefixEncoder(nn.Module):
    """P-tuning v2 prefix (``pre_seq_len`` in the config): the released key layout."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.prefix_projection = config.prefix_projection
        size = config.num_layers * config.hidden_size * 2
        if config.prefix_projection:
            self.embedding = nn.Embedding(config.pre_seq_len, config.hidden_size)
            self.trans = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Tanh(),
                                       nn.Linear(config.hidden_size, size))
        else:
            self.embedding = nn.Embedding(config.pre_seq_len, size)

    def forward(self, prefix):
        out = self.embedding(prefix)
        return self.trans(out) if self.prefix_projection else out


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _skip_keys_device_placement = ["past_key_values"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, RotaryEmbedding.default_inv_freq(module.dim).to(module.inv_freq.dtype))


class ChatGLMModel(ChatGLMPreTrainedModel):
    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([GLMBlock(config, i) for i in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.pre_seq_len = config.pre_seq_len
        if self.pre_seq_len is not None:
            self.prefix_encoder = PrefixEncoder(config)
            self.prefix_dropout = nn.Dropout(0.1)
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def get_prompt(self, batch_size: int, device, dtype):
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        tokens = torch.arange(self.pre_seq_len, device=device).unsqueeze(0).expand(batch_size, -1)
        pkv = self.prefix_encoder(tokens).to(dtype)
        pkv = pkv.view(batch_size, self.pre_seq_len, cfg.num_layers * 2, cfg.num_attention_heads, head_dim)
        pkv = self.prefix_dropout(pkv).permute(2, 0, 3, 1, 4)  # [2L, B, H, P, D]
        return [(pkv[2 * i], pkv[2 * i + 1]) for i in range(cfg.num_layers)]

    def layout(self, input_ids, padding_mask):
        cfg = self.config
        return block_layout(input_ids, padding_mask, cfg.bos_token_id, [[cfg.gmask_token_id], [cfg.mask_token_id]])

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        bsz, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past_key_values = as_cache(past_key_values)
        if self.pre_seq_len is not None and cache_length(past_key_values) == 0:
            from transformers import DynamicCache

            if past_key_values is None:
                past_key_values = DynamicCache()
            for i, (k, v) in enumerate(self.get_prompt(bsz, device, inputs_embeds.dtype)):
                past_key_values.update(k, v, i)
        if use_cache and past_key_values is None:
            from transformers import DynamicCache

            past_key_values = DynamicCache(config=self.config)
        past = cache_length(past_key_values)
        if attention_mask is not None and attention_mask.dim() == 4:
            # released convention: bool, True = masked; prefix columns are prepended as visible
            allowed = ~attention_mask.bool().to(device)
            if allowed.shape[-1] < past + length:
                extra = torch.ones(*allowed.shape[:-1], past + length - allowed.shape[-1], dtype=torch.bool,
                                   device=device)
                allowed = torch.cat([extra, allowed], dim=-1)
            mask2d = None
        else:
            mask2d = attention_mask
            allowed = None
        past_pad, cur_pad = split_padding_mask(mask2d, past, length, bsz, device)
        layout = None
        if input_ids is not None and (position_ids is None or allowed is None):
            layout = self.layout(input_ids, cur_pad)
        if position_ids is None:
            if layout is None:
                raise ValueError("ChatGLM-6B needs input_ids or explicit 2D position_ids")
            position_ids = layout["position_ids"]
        if allowed is None:
            allowed = allowed_attention(length, bsz, device, current_mask=cur_pad, past_length=past,
                                        past_mask=past_pad,
                                        context_length=layout["context_length"] if layout is not None else None,
                                        index=layout["index"] if layout is not None else None)
        return run_layers(
            self.layers, inputs_embeds,
            lambda layer, h: layer(h, position_ids, allowed=allowed, past_key_values=past_key_values, use_cache=use_cache),
            self.final_layernorm, past_key_values=past_key_values, use_cache=use_cache,
            output_hidden_states=output_hidden_states)


class ChatGLMForConditionalGeneration(GLMGenerationMixin, ChatGLMPreTrainedModel, GenerationMixin):
    """The released ChatGLM-6B ``ChatGLMForConditionalGeneration``."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def build_position_ids(self, input_ids, padding_mask):
        return self.transformer.layout(input_ids, padding_mask)["position_ids"]

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None, return_dict=None,
                logits_to_keep: int = 0, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        out = self.transformer(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states)
