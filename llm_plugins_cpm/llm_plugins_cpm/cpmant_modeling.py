"""CPM-Ant for fine-tuning: transformers' ``CpmAntForCausalLM`` with a training-ready forward.

Same weights, config and saved layout as transformers' class (the class name is kept so
``save_pretrained`` writes ``"architectures": ["CpmAntForCausalLM"]``). The forward differs from
transformers' in three ways that fine-tuning needs, and agrees with it on unpadded inference:

* **shifted loss** -- transformers' CPM-Ant compares ``logits[t]`` with ``labels[t]``, so labels in
  the usual causal-LM convention (``labels == input_ids`` on trained tokens) would teach the model
  to copy its input. Here the loss is the standard next-token loss (``self.loss_function``).
* **attention_mask** -- transformers' CPM-Ant ignores it and treats token id 0 as padding, assumed
  on the left. Here ``attention_mask`` (any padding side) decides which tokens are real; without
  one, id 0 is padding as before.
* **prefix-LM masking from the labels** -- CPM-Ant attends bidirectionally over its context (the
  prompt) and causally over generated tokens; transformers marks the whole input as context, which
  is right for generation but lets every training token see the answer. Here, when ``labels`` are
  given, the leading untrained tokens are the context and everything from the first trained token
  on is causal -- the same attention a prompt and its generated answer get at inference.
"""

from __future__ import annotations

import torch
from transformers import CpmAntForCausalLM as _TransformersCpmAntForCausalLM
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from lmforge.modeling.hfcompat import take_cache

IGNORE_INDEX = -100


class CpmAntForCausalLM(_TransformersCpmAntForCausalLM):
    """transformers' ``CpmAntForCausalLM`` with shifted loss, ``attention_mask`` and prefix-LM masks (module doc)."""

    def forward(self, input_ids=None, past_key_values=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, labels=None, return_dict=None, attention_mask=None,
                logits_to_keep=0, **kwargs):
        past_key_values = take_cache(past_key_values, kwargs)
        hidden, past_key_values = self._decode(input_ids, attention_mask, labels, past_key_values, use_cache)
        logits = self.lm_head(slice_logits_to_keep(hidden, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values)

    def _decode(self, input_ids, attention_mask, labels, past_key_values, use_cache):
        body = self.cpmant
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.training:
            use_cache = False
        ids = input_ids.to(torch.int32)
        batch, length = ids.shape
        device = ids.device
        prompt_len = body.prompt_length
        real = attention_mask.to(torch.bool) if attention_mask is not None else ids != 0
        # CPM-Ant's built-in prompt: prompt_length learned tokens of prompt type 2, placed before the input
        prompt_ids = torch.arange(prompt_len * 2 + body.vocab_size, prompt_len * 3 + body.vocab_size,
                                  dtype=torch.int32, device=device).repeat(batch, 1)
        ids = torch.cat((prompt_ids, ids), dim=1)
        ones = torch.ones(batch, prompt_len, dtype=torch.bool, device=device)
        real = torch.cat((ones, real), dim=1)
        segment = torch.where(real, 2, 0).to(torch.int32)
        segment[:, :prompt_len] = 0
        total = prompt_len + length

        context = torch.ones(batch, total, dtype=torch.bool, device=device)
        if labels is not None:
            trained = labels != IGNORE_INDEX
            first = torch.where(trained.any(-1), trained.to(torch.int64).argmax(-1), torch.full_like(trained[:, 0], length, dtype=torch.int64))
            context[:, prompt_len:] = torch.arange(length, device=device)[None, :] < first[:, None]
        causal = torch.arange(total, device=device)[None, :] <= torch.arange(total, device=device)[:, None]
        mask = context[:, None, :] | (~context[:, :, None] & causal[None])
        mask = mask & real[:, None, :] & real[:, :, None]

        position = torch.arange(total, dtype=torch.int32, device=device).repeat(batch, 1)
        position_bias = body.position_bias(position, position, segment, segment)
        hidden = body.input_embedding(ids) + body.segment_embedding(segment)

        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        hidden, _, _ = body.encoder(hidden[:, past:], mask[:, past:], position_bias[:, :, past:], False, False,
                                    past_key_values if use_cache else None, use_cache)
        if past == 0:
            hidden = hidden[:, prompt_len:]
        return hidden, (past_key_values if use_cache else None)
