"""MiniCPM 1/2 (and the 9G models built on it): the architecture transformers does not ship.

MiniCPM is LLaMA with three muP scalings, as in the released modeling code:

* the token embeddings are multiplied by ``scale_emb``;
* each residual branch (attention and MLP) is multiplied by ``scale_depth / sqrt(num_hidden_layers)``;
* the final hidden states are divided by ``hidden_size / dim_model_base`` before ``lm_head``.

The parameter names are the released ones (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj``
... ``model.norm``, ``lm_head``), so released ``pytorch_model.bin`` / safetensors files load as they
are. With ``tie_word_embeddings`` (the released default) ``lm_head.weight`` is absent from the files
and is the embedding matrix. Attention, MLP and rotary embeddings are transformers' LLaMA modules
(the released code is the LLaMA code of transformers 4.36 with the scalings added), so sdpa/flash
attention, KV caches and packed ``position_ids`` work as for LLaMA.

Importing this module registers ``model_type: minicpm`` with transformers' ``AutoConfig`` and
``AutoModelForCausalLM``; no checkpoint code is ever executed.
"""

from __future__ import annotations

import math

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, LlamaConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRotaryEmbedding
from lmforge.modeling.hfcompat import take_cache, cache_kwarg

ARCHITECTURE = "MiniCPMForCausalLM"


@strict
class MiniCPMConfig(LlamaConfig):
    """A LLaMA config plus MiniCPM's three scalings. Defaults match the released ``configuration_minicpm.py``."""

    model_type = "minicpm"

    scale_emb: int | float = 1
    dim_model_base: int | float = 1
    scale_depth: int | float = 1
    tie_word_embeddings: bool = True

    @property
    def residual_scale(self) -> float:
        return self.scale_depth / math.sqrt(self.num_hidden_layers)

    @property
    def logits_divisor(self) -> float:
        return self.hidden_size / self.dim_model_base


class MiniCPMRMSNorm(nn.Module):
    """RMSNorm as released: the variance in float32, the normalised states cast back before the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        variance = hidden.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden = (hidden * torch.rsqrt(variance + self.variance_epsilon)).to(dtype)
        return hidden * self.weight


class MiniCPMDecoderLayer(GradientCheckpointingLayer):
    """A LLaMA decoder layer whose two residual branches are scaled by ``scale_depth / sqrt(L)``."""

    def __init__(self, config: MiniCPMConfig, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = LlamaAttention(config=config, layer_idx=layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = MiniCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MiniCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_scale = config.residual_scale

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):
        residual = hidden_states
        attn_out, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **{cache_kwarg(): past_key_values},
            **kwargs,
        )
        hidden_states = residual + attn_out * self.residual_scale
        residual = hidden_states
        mlp_out = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + mlp_out * self.residual_scale


class MiniCPMPreTrainedModel(PreTrainedModel):
    config_class = MiniCPMConfig
    config: MiniCPMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniCPMDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class MiniCPMModel(MiniCPMPreTrainedModel):
    """The decoder stack: ``embed_tokens`` (× ``scale_emb``), ``layers``, ``norm``."""

    def __init__(self, config: MiniCPMConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([MiniCPMDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = MiniCPMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, **kwargs) -> BaseModelOutputWithPast:
        past_key_values = take_cache(past_key_values, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            # as released: only embeddings looked up here are scaled, caller-given inputs_embeds are not
            inputs_embeds = self.embed_tokens(input_ids) * self.config.scale_emb
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + seen).unsqueeze(0)
        # with position_ids and no attention_mask/cache this is transformers' packed-sequence mask
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{cache_kwarg(): past_key_values},
        )
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden)
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, past_key_values=past_key_values,
                           use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class MiniCPMForCausalLM(MiniCPMPreTrainedModel, GenerationMixin):
    """MiniCPM with its LM head; logits are ``lm_head(h / (hidden_size / dim_model_base))``."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniCPMConfig) -> None:
        super().__init__(config)
        self.model = MiniCPMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None,
                logits_to_keep=0, return_dict=None, **kwargs) -> CausalLMOutputWithPast:
        past_key_values = take_cache(past_key_values, kwargs)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_hidden_states=output_hidden_states, **kwargs,
        )
        hidden = slice_logits_to_keep(out.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden / self.config.logits_divisor)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states)


def register_with_transformers() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` resolve ``model_type: minicpm`` to these classes."""
    try:
        AutoConfig.register("minicpm", MiniCPMConfig)
    except ValueError:  # already registered (module reloaded)
        pass
    try:
        AutoModelForCausalLM.register(MiniCPMConfig, MiniCPMForCausalLM)
    except ValueError:
        pass


register_with_transformers()
