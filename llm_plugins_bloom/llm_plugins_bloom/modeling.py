"""BLOOM with per-sample ALiBi for packed batches (imports torch/transformers).

:class:`BloomForCausalLM` is transformers' class with the same weights, config
and saved layout (its name is kept so ``save_pretrained`` writes
``"architectures": ["BloomForCausalLM"]`` and the output loads in plain
transformers). It adds one code path: when a batch carries ``position_ids`` and
no ``attention_mask`` or cache -- the packed-batch convention of transformers 5 --
every sample in a row gets its own ALiBi bias (built from its own positions, so
it restarts at each sample) and a block-diagonal causal mask. Without it,
transformers' Bloom ignores ``position_ids`` and lets packed samples attend to
each other with one bias running across the whole row.
"""

from __future__ import annotations

import torch
from transformers import BloomForCausalLM as _TransformersBloomForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from lmforge.modeling.hfcompat import take_cache, cache_kwarg


def alibi_slopes(num_heads: int, device=None) -> torch.Tensor:
    """BLOOM's per-head ALiBi slopes, read from transformers' own ``build_alibi_tensor``."""
    probe = torch.ones(1, 2, device=device)
    return build_alibi_tensor(probe, num_heads, torch.float32).view(num_heads, 2)[:, 1]


def packed_alibi_and_mask(position_ids: torch.Tensor, num_heads: int, dtype: torch.dtype):
    """ALiBi bias ``(batch*heads, 1, len)`` and additive mask ``(batch, 1, len, len)`` for packed rows.

    A sample starts wherever ``position_ids`` is 0. The bias uses each token's
    position inside its own sample; the mask lets a token see only earlier
    tokens of the same sample.
    """
    batch, length = position_ids.shape
    device = position_ids.device
    slopes = alibi_slopes(num_heads, device)
    alibi = slopes[None, :, None] * position_ids[:, None, :].to(torch.float32)
    alibi = alibi.reshape(batch * num_heads, 1, length).to(dtype)
    sample = torch.cumsum((position_ids == 0).to(torch.long), dim=-1)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = causal[None] & (sample[:, :, None] == sample[:, None, :])
    mask = torch.zeros(batch, 1, length, length, dtype=dtype, device=device)
    mask = mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    return alibi, mask


class BloomForCausalLM(_TransformersBloomForCausalLM):
    """transformers' ``BloomForCausalLM`` plus per-sample ALiBi for packed batches (see module doc)."""

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, inputs_embeds=None,
                labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, logits_to_keep=0, position_ids=None, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        if position_ids is not None and attention_mask is None and past_key_values is None:
            return self._packed_forward(input_ids, inputs_embeds, position_ids, labels, **kwargs)
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, **{cache_kwarg(): past_key_values},
            inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=return_dict, logits_to_keep=logits_to_keep, **kwargs,
        )

    def _packed_forward(self, input_ids, inputs_embeds, position_ids, labels, **kwargs):
        body = self.transformer
        if inputs_embeds is None:
            inputs_embeds = body.word_embeddings(input_ids)
        hidden = body.word_embeddings_layernorm(inputs_embeds)
        alibi, mask = packed_alibi_and_mask(position_ids, body.num_heads, hidden.dtype)
        for block in body.h:
            hidden, _ = block(hidden, alibi=alibi, attention_mask=mask, layer_past=None, use_cache=False)
        hidden = body.ln_f(hidden)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits)
