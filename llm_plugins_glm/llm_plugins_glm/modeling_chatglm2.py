"""ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B in THUDM's original layout, written for lmforge.

State-dict keys and shapes are the released ones::

    transformer.embedding.word_embeddings.weight
    transformer.rotary_pos_emb.inv_freq
    transformer.encoder.layers.N.{input_layernorm,post_attention_layernorm}.weight
    transformer.encoder.layers.N.self_attention.query_key_value.{weight,bias}
    transformer.encoder.layers.N.self_attention.dense.weight
    transformer.encoder.layers.N.mlp.{dense_h_to_4h,dense_4h_to_h}.weight
    transformer.encoder.final_layernorm.weight
    transformer.output_layer.weight
    transformer.prefix_encoder.embedding.weight        (p-tuning v2 checkpoints only)

The computation follows the released modeling code: pre-norm blocks with RMSNorm
(or LayerNorm), one fused QKV projection with multi-query groups, rotary
embeddings on the first half of each head's channels with interleaved pairs and
base ``10000 * rope_ratio``, SwiGLU MLP, PyTorch SDPA (causal when there is no
padding and no cache). Position ids and masks are built from ``input_ids`` and the
2D padding mask like the released tokenizer + model pair does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import ChatGLM2Config
from .modeling_common import (GLMGenerationMixin, allowed_attention, as_cache, attach_cache, cache_length,
                              causal_lm_loss, causal_positions, run_layers, split_padding_mask)
from lmforge.modeling.hfcompat import take_cache


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        return (self.weight * hidden_states).to(input_dtype)


def _norm(config: ChatGLM2Config) -> nn.Module:
    if config.rmsnorm:
        return RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)
    return nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class RotaryEmbedding(nn.Module):
    """Rotary tables for the first ``2 * dim`` channels of a head; ``inv_freq`` is kept only for the state dict."""

    def __init__(self, dim: int, rope_ratio: float = 1.0):
        super().__init__()
        self.dim = dim
        self.rope_ratio = rope_ratio
        self.register_buffer("inv_freq", self.default_inv_freq(dim), persistent=True)

    @staticmethod
    def default_inv_freq(dim: int) -> torch.Tensor:
        return 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` positions -> ``[B, L, dim/2, 2]`` (cos, sin), in the buffer's dtype when that is 16-bit."""
        base = 10000 * self.rope_ratio
        theta = 1.0 / (base ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=position_ids.device) / self.dim))
        idx_theta = position_ids.to(torch.float32)[..., None] * theta
        cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)
        if self.inv_freq.dtype in (torch.float16, torch.bfloat16):
            cache = cache.to(self.inv_freq.dtype)
        return cache


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """``x``: ``[B, L, H, D]``; rotate the first ``2 * rope.shape[-2]`` channels in interleaved pairs."""
    rot_dim = rope.shape[-2] * 2
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    xs = x_rot.reshape(*x_rot.shape[:-1], rot_dim // 2, 2)
    rope = rope.unsqueeze(2)  # [B, L, 1, rot/2, 2]
    out = torch.stack([xs[..., 0] * rope[..., 0] - xs[..., 1] * rope[..., 1],
                       xs[..., 1] * rope[..., 0] + xs[..., 0] * rope[..., 1]], dim=-1).flatten(3)
    return torch.cat([out, x_pass], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLM2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        self.projection_size = config.kv_channels * config.num_attention_heads
        self.multi_query_attention = config.multi_query_attention
        self.num_groups = config.multi_query_group_num if config.multi_query_attention else config.num_attention_heads
        qkv = self.projection_size + 2 * self.head_dim * self.num_groups
        self.query_key_value = nn.Linear(config.hidden_size, qkv, bias=config.add_bias_linear or config.add_qkv_bias)
        self.dense = nn.Linear(self.projection_size, config.hidden_size, bias=config.add_bias_linear)
        self.attention_dropout = config.attention_dropout

    def forward(self, hidden_states, rope, attention_mask=None, past_key_values=None, use_cache=False):
        bsz, length, _ = hidden_states.shape
        mixed = self.query_key_value(hidden_states)
        if self.multi_query_attention:
            q, k, v = mixed.split([self.num_heads * self.head_dim, self.num_groups * self.head_dim,
                                   self.num_groups * self.head_dim], dim=-1)
            q = q.view(bsz, length, self.num_heads, self.head_dim)
            k = k.view(bsz, length, self.num_groups, self.head_dim)
            v = v.view(bsz, length, self.num_groups, self.head_dim)
        else:
            mixed = mixed.view(bsz, length, self.num_heads, 3 * self.head_dim)
            q, k, v = mixed.split(self.head_dim, dim=-1)
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
        k, v = attach_cache(past_key_values, self.layer_idx, k, v, use_cache)
        if self.num_groups != self.num_heads:
            rep = self.num_heads // self.num_groups
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        dropout = self.attention_dropout if self.training else 0.0
        if attention_mask is None and q.shape[2] == k.shape[2]:
            ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout)
        ctx = ctx.transpose(1, 2).reshape(bsz, length, self.projection_size)
        return self.dense(ctx)


class MLP(nn.Module):
    def __init__(self, config: ChatGLM2Config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.ffn_hidden_size * 2, bias=config.add_bias_linear)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, hidden_states):
        gate, up = self.dense_h_to_4h(hidden_states).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMBlock(GradientCheckpointingLayer):
    # the layer only writes the cache when use_cache (never under checkpointing), so a prefix cache may stay
    _can_checkpoint_with_cache = True

    def __init__(self, config: ChatGLM2Config, layer_idx: int):
        super().__init__()
        self.apply_residual_connection_post_layernorm = config.apply_residual_connection_post_layernorm
        self.input_layernorm = _norm(config)
        self.self_attention = SelfAttention(config, layer_idx)
        self.hidden_dropout = config.hidden_dropout
        self.post_attention_layernorm = _norm(config)
        self.mlp = MLP(config)

    def forward(self, hidden_states, rope, attention_mask=None, past_key_values=None, use_cache=False):
        ln = self.input_layernorm(hidden_states)
        attn = self.self_attention(ln, rope, attention_mask, past_key_values, use_cache)
        residual = ln if self.apply_residual_connection_post_layernorm else hidden_states
        ln_in = residual + F.dropout(attn, p=self.hidden_dropout, training=self.training)
        ln = self.post_attention_layernorm(ln_in)
        residual = ln if self.apply_residual_connection_post_layernorm else ln_in
        return residual + F.dropout(self.mlp(ln), p=self.hidden_dropout, training=self.training)


class GLMTransformer(nn.Module):
    def __init__(self, config: ChatGLM2Config):
        super().__init__()
        self.layers = nn.ModuleList([GLMBlock(config, i) for i in range(config.num_layers)])
        self.final_layernorm = _norm(config) if config.post_layer_norm else None


class Embedding(nn.Module):
    def __init__(self, config: ChatGLM2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


class PrefixEncoder(nn.Module):
    """P-tuning v2 prefix (``pre_seq_len`` in the config): the released key layout."""

    def __init__(self, config: ChatGLM2Config):
        super().__init__()
        groups = config.multi_query_group_num if config.multi_query_attention else config.num_attention_heads
        kv_size = config.num_layers * config.kv_channels * groups * 2
        self.prefix_projection = config.prefix_projection
        self.embedding = nn.Embedding(config.pre_seq_len, kv_size)
        if config.prefix_projection:
            self.trans = nn.Sequential(nn.Linear(kv_size, config.hidden_size), nn.Tanh(),
                                       nn.Linear(config.hidden_size, kv_size))

    def forward(self, prefix):
        out = self.embedding(prefix)
        return self.trans(out) if self.prefix_projection else out


class ChatGLM2PreTrainedModel(PreTrainedModel):
    config_class = ChatGLM2Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"\.rotary_emb\.inv_freq$"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, RotaryEmbedding.default_inv_freq(module.dim).to(module.inv_freq.dtype))
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)


class ChatGLM2Model(ChatGLM2PreTrainedModel):
    def __init__(self, config: ChatGLM2Config):
        super().__init__(config)
        self.embedding = Embedding(config)
        self.num_layers = config.num_layers
        rotary_dim = config.hidden_size // config.num_attention_heads if config.kv_channels is None else config.kv_channels
        self.rotary_pos_emb = RotaryEmbedding(rotary_dim // 2, rope_ratio=config.rope_ratio or 1)
        self.encoder = GLMTransformer(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.pre_seq_len = config.pre_seq_len
        if self.pre_seq_len is not None:
            self.prefix_encoder = PrefixEncoder(config)
            self.prefix_dropout = nn.Dropout(0.1)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embeddings

    def set_input_embeddings(self, value):
        self.embedding.word_embeddings = value

    def get_prompt(self, batch_size: int, device, dtype):
        """The p-tuning v2 prefix as per-layer ``(key, value)`` ``[B, groups, pre_seq_len, kv_channels]``."""
        cfg = self.config
        groups = cfg.multi_query_group_num if cfg.multi_query_attention else cfg.num_attention_heads
        tokens = torch.arange(self.pre_seq_len, device=device).unsqueeze(0).expand(batch_size, -1)
        pkv = self.prefix_encoder(tokens).to(dtype)
        pkv = pkv.view(batch_size, self.pre_seq_len, self.num_layers * 2, groups, cfg.kv_channels)
        pkv = self.prefix_dropout(pkv).permute(2, 0, 3, 1, 4)  # [2L, B, G, P, D]
        return [(pkv[2 * i], pkv[2 * i + 1]) for i in range(self.num_layers)]

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, full_attention_mask=None,
                past_key_values=None, inputs_embeds=None, use_cache=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        bsz, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past_key_values = as_cache(past_key_values)
        if self.pre_seq_len is not None and cache_length(past_key_values) == 0:
            from transformers import DynamicCache

            prompt = self.get_prompt(bsz, device, inputs_embeds.dtype)
            if past_key_values is None:
                past_key_values = DynamicCache()
            for i, (k, v) in enumerate(prompt):
                past_key_values.update(k, v, i)
        if use_cache and past_key_values is None:
            from transformers import DynamicCache

            past_key_values = DynamicCache(config=self.config)
        past = cache_length(past_key_values)
        mask2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        past_pad, cur_pad = split_padding_mask(mask2d, past, length, bsz, device)
        if position_ids is None:
            ids = input_ids if input_ids is not None else torch.zeros(bsz, length, dtype=torch.long, device=device)
            position_ids = causal_positions(ids, cur_pad)
        if full_attention_mask is not None:  # released convention: True = masked
            attn = ~full_attention_mask.bool()
        elif attention_mask is not None and attention_mask.dim() == 4:
            attn = attention_mask.bool() if attention_mask.dtype == torch.bool else attention_mask
        elif cur_pad is None and past_pad is None and past == 0:
            attn = None
        else:
            attn = allowed_attention(length, bsz, device, current_mask=cur_pad, past_length=past,
                                     past_mask=past_pad)
        rope = self.rotary_pos_emb(position_ids)
        return run_layers(
            self.encoder.layers, inputs_embeds,
            lambda layer, h: layer(h, rope, attention_mask=attn, past_key_values=past_key_values, use_cache=use_cache),
            self.encoder.final_layernorm, past_key_values=past_key_values, use_cache=use_cache,
            output_hidden_states=output_hidden_states)


class ChatGLM2ForConditionalGeneration(GLMGenerationMixin, ChatGLM2PreTrainedModel, GenerationMixin):
    """The released ``ChatGLMForConditionalGeneration`` (ChatGLM2/3, GLM-4 original layout)."""

    def __init__(self, config: ChatGLM2Config):
        super().__init__(config)
        self.transformer = ChatGLM2Model(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.embedding.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.embedding.word_embeddings = value

    def get_output_embeddings(self):
        return self.transformer.output_layer

    def set_output_embeddings(self, value):
        self.transformer.output_layer = value

    def build_position_ids(self, input_ids, padding_mask):
        return causal_positions(input_ids, padding_mask)

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None, return_dict=None,
                logits_to_keep: int = 0, return_last_logit: bool = False, full_attention_mask=None, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        out = self.transformer(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               full_attention_mask=full_attention_mask, past_key_values=past_key_values,
                               inputs_embeds=inputs_embeds, use_cache=use_cache,
                               output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        if return_last_logit:
            logits_to_keep = 1
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.transformer.output_layer(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.padded_vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states)


__all__ = ["ChatGLM2ForConditionalGeneration", "ChatGLM2Model", "ChatGLM2Config"]
