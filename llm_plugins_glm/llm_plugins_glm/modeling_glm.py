"""GLM v1 (THUDM GLM-large/-10B, GLM-large-chinese, AntGLM) written for lmforge.

State-dict keys and shapes are those of THUDM's HF release (``GLMForConditionalGeneration``)::

    glm.word_embeddings.weight                                   (also the output projection)
    glm.transformer.position_embeddings.weight                   [max_sequence_length + 1, h]
    glm.transformer.block_position_embeddings.weight             [max_sequence_length + 1, h]
    glm.transformer.layers.N.{input_layernorm,post_attention_layernorm}.{weight,bias}
    glm.transformer.layers.N.attention.{query_key_value,dense}.{weight,bias}
    glm.transformer.layers.N.mlp.{dense_h_to_4h,dense_4h_to_h}.{weight,bias}
    glm.transformer.final_layernorm.{weight,bias}

Long context: ``position_interpolation_factor`` (lmforge's config key) reads both
tables at ``position / factor`` (:func:`interpolated_embedding`), the tables keeping
``original_max_sequence_length`` trained rows; 1 (the default) is the released lookup.

The computation is the released one: learned absolute position embeddings plus
block position embeddings, pre-LN blocks (LayerNorm eps 1e-5), fused QKV split
into three contiguous thirds, scores ``q @ (k^T / sqrt(d))`` multiplied by the
0/1 mask and pushed to -65504 where masked (with the released ``attention_scale``
variant), exact GELU, logits tied to the word embeddings.

The released model keeps per-layer hidden-state "mems" between generation steps;
lmforge caches the keys and values computed from the same layer-normed states,
which gives the same attention. Blank infilling layout (built from ``input_ids``
when not given): the context is everything before ``<|startofpiece|>`` and attends
bidirectionally; from ``sop`` on, tokens take the position of the first mask token
(``[MASK]``/``[sMASK]``/``[gMASK]``) and block positions 1, 2, ... like the
released tokenizer's ``build_inputs_for_generation``.

Loss: lmforge labels are aligned with ``input_ids`` and shifted here, like every
causal LM in transformers (the released model expects pre-shifted labels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import GLMConfig
from .modeling_common import (GLMGenerationMixin, allowed_attention, as_cache, attach_cache, block_layout,
                              cache_length, causal_lm_loss, run_layers, split_padding_mask)
from lmforge.modeling.hfcompat import take_cache

LAYERNORM_EPS = 1e-5


class SelfAttention(nn.Module):
    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_scale = float(config.attention_scale or 1.0)
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.attention_dropout = nn.Dropout(config.attention_dropout_prob)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, hidden_states, mask, past_key_values=None, use_cache=False):
        bsz, length, _ = hidden_states.shape
        q, k, v = self.query_key_value(hidden_states).split(self.hidden_size, dim=-1)
        q, k, v = (t.view(bsz, length, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        k, v = attach_cache(past_key_values, self.layer_idx, k, v, use_cache)
        if self.attention_scale > 1.0:
            scores = torch.matmul(q / math.sqrt(self.attention_scale),
                                  k.transpose(-1, -2) / math.sqrt(self.head_dim * self.attention_scale))
        else:
            scores = torch.matmul(q, k.transpose(-1, -2) / math.sqrt(self.head_dim))
        mask = mask.to(scores.dtype)
        scores = torch.mul(scores, mask)
        if self.attention_scale > 1.0:
            scores = scores - scores.max(dim=-1, keepdim=True)[0]
            scores = scores * self.attention_scale
        scores = scores + (-65504.0) * (1.0 - mask)
        probs = self.attention_dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(bsz, length, self.hidden_size)
        return self.output_dropout(self.dense(ctx))


class MLP(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, hidden_states):
        return self.dropout(self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(hidden_states))))


class GLMBlock(GradientCheckpointingLayer):
    _can_checkpoint_with_cache = True

    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=LAYERNORM_EPS)
        self.attention = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=LAYERNORM_EPS)
        self.mlp = MLP(config)

    def forward(self, hidden_states, mask, past_key_values=None, use_cache=False):
        layernorm_input = hidden_states + self.attention(self.input_layernorm(hidden_states), mask,
                                                         past_key_values, use_cache)
        return layernorm_input + self.mlp(self.post_attention_layernorm(layernorm_input))


def interpolated_embedding(table: nn.Embedding, positions: torch.Tensor, factor: float) -> torch.Tensor:
    """Rows of a learned position table at ``positions / factor`` (position interpolation, long context).

    Fractional positions mix the two neighbouring trained rows linearly; ``factor`` 1 is the plain lookup.
    """
    if factor == 1.0:
        return table(positions)
    x = positions.to(torch.float32) / factor
    last = table.num_embeddings - 1
    lo = x.floor().long().clamp(0, last)
    hi = (lo + 1).clamp(max=last)
    w = (x - lo.to(torch.float32)).clamp(0, 1).unsqueeze(-1).to(table.weight.dtype)
    return table(lo) * (1 - w) + table(hi) * w


class GLMStack(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        if config.relative_encoding:
            raise NotImplementedError("GLM checkpoints with relative_encoding: true are not supported")
        trained = getattr(config, "original_max_sequence_length", None) or config.max_sequence_length
        n_pos = trained + 1 if config.block_position_encoding else trained
        self.position_factor = float(getattr(config, "position_interpolation_factor", None) or 1.0)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.position_embeddings = nn.Embedding(n_pos, config.hidden_size)
        self.block_position_encoding = config.block_position_encoding
        if config.block_position_encoding:
            self.block_position_embeddings = nn.Embedding(n_pos, config.hidden_size)
        self.layers = nn.ModuleList([GLMBlock(config, i) for i in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=LAYERNORM_EPS)


class GLMPreTrainedModel(PreTrainedModel):
    config_class = GLMConfig
    base_model_prefix = "glm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _keys_to_ignore_on_load_missing = [r"position_ids"]


class GLMModel(GLMPreTrainedModel):
    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GLMStack(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def layout(self, input_ids, padding_mask):
        cfg = self.config
        if cfg.sop_token_id is None or not cfg.mask_token_ids:
            raise ValueError("GLMConfig.sop_token_id / mask_token_ids are unset: load the model through lmforge "
                             "(its loader reads them from the tokenizer) or pass position_ids and attention_mask")
        return block_layout(input_ids, padding_mask, cfg.sop_token_id, [list(cfg.mask_token_ids)])

    def _attention(self, attention_mask, input_ids, bsz, length, past, device, position_ids):
        """``(mask [B, 1, L, past+L] with 1 = visible, position_ids)`` from whatever the caller passed."""
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask.to(device)
            if mask.shape[-1] < past + length:  # released masks do not cover a prefix
                extra = torch.ones(*mask.shape[:-1], past + length - mask.shape[-1], dtype=mask.dtype, device=device)
                mask = torch.cat([extra, mask], dim=-1)
            return mask[..., -(past + length):].float(), position_ids
        if attention_mask is not None and attention_mask.numel() in (1, bsz) and attention_mask.dim() <= 1:
            # released "sep" form: tokens before sep are visible to every position
            sep = attention_mask.reshape(-1).to(device).expand(bsz)
            allowed = allowed_attention(length, bsz, device, current_mask=None, past_length=past,
                                        context_length=sep.long())
            if position_ids is None:
                pos = torch.arange(length, device=device).expand(bsz, -1)
                position_ids = torch.stack([pos, torch.zeros_like(pos)], dim=1)
            return allowed.float(), position_ids
        past_pad, cur_pad = split_padding_mask(attention_mask, past, length, bsz, device)
        layout = self.layout(input_ids, cur_pad) if input_ids is not None else None
        if position_ids is None:
            position_ids = layout["position_ids"]
        allowed = allowed_attention(length, bsz, device, current_mask=cur_pad, past_length=past, past_mask=past_pad,
                                    context_length=layout["context_length"] if layout is not None else None,
                                    index=layout["index"] if layout is not None else None)
        return allowed.float(), position_ids

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        bsz, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past_key_values = as_cache(past_key_values)
        if use_cache and past_key_values is None:
            from transformers import DynamicCache

            past_key_values = DynamicCache(config=self.config)
        past = cache_length(past_key_values)
        mask, position_ids = self._attention(attention_mask, input_ids, bsz, length, past, device, position_ids)
        stack = self.transformer
        factor = stack.position_factor
        hidden = inputs_embeds + interpolated_embedding(stack.position_embeddings, position_ids[:, 0], factor)
        if stack.block_position_encoding:
            hidden = hidden + interpolated_embedding(stack.block_position_embeddings, position_ids[:, 1], factor)
        hidden = stack.embedding_dropout(hidden)
        return run_layers(stack.layers, hidden,
                          lambda layer, h: layer(h, mask, past_key_values=past_key_values, use_cache=use_cache),
                          stack.final_layernorm, past_key_values=past_key_values, use_cache=use_cache,
                          output_hidden_states=output_hidden_states)


class GLMForConditionalGeneration(GLMGenerationMixin, GLMPreTrainedModel, GenerationMixin):
    """The released ``GLMForConditionalGeneration`` (blank-infilling LM head tied to the word embeddings)."""

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.glm.word_embeddings

    def set_input_embeddings(self, value):
        self.glm.word_embeddings = value

    def get_output_embeddings(self):
        return None

    def build_position_ids(self, input_ids, padding_mask):
        return self.glm.layout(input_ids, padding_mask)["position_ids"]

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None, return_dict=None,
                logits_to_keep: int = 0, mems=None, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        out = self.glm(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                       past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                       output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = F.linear(hidden, self.glm.word_embeddings.weight)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states)
