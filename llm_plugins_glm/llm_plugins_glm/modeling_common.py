"""Pieces shared by the GLM architectures: block-position layouts, attention masks, KV caches, the layer stack, generation.

GLM v1 and ChatGLM-6B split a sequence into a *context* (everything before the
first ``sop``) that attends bidirectionally, and a generated *block* that attends
causally. Block tokens take the position of the mask token (``[gMASK]``/``[MASK]``)
and a second, block-relative position 1, 2, .... ChatGLM2/3 and GLM-4 are plain
causal models. The functions here build those position ids and masks from
``input_ids`` and a 2D padding mask (left or right padding), counting positions on
the real tokens only, so a padded row gets exactly the positions of the same row
unpadded, as the released tokenizers' ``_pad`` does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

BIG = 1 << 30


def effective_index(padding_mask: torch.Tensor) -> torch.Tensor:
    """Index of each real token among the real tokens of its row (pads get 0)."""
    pad = padding_mask.long()
    return (pad.cumsum(-1) - 1).clamp(min=0) * pad


def _first(cond: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Effective index of the first True of each row, and whether there is one."""
    found = cond.any(-1)
    first = torch.where(cond, idx, torch.full_like(idx, BIG)).min(-1).values
    return first, found


def block_layout(input_ids: torch.Tensor, padding_mask: torch.Tensor | None, sop_id: int,
                 mask_groups: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """GLM blank-infilling layout of each row: positions, block positions and context length.

    ``mask_groups`` lists mask-token ids in order of preference: the first group with
    a token in the row gives the mask position (ChatGLM-6B: ``[[gMASK], [MASK]]``;
    GLM v1: ``[[MASK, sMASK, gMASK]]``, the earliest of them). Rows without ``sop``
    are plain causal text (positions 0.., block positions 0).
    """
    if padding_mask is None:
        padding_mask = torch.ones_like(input_ids)
    real = padding_mask.bool()
    idx = effective_index(padding_mask)
    ctx, has_ctx = _first((input_ids == sop_id) & real, idx)
    mask_pos = torch.zeros_like(ctx)
    found_any = torch.zeros_like(has_ctx)
    for group in mask_groups:
        ids = torch.tensor(list(group), device=input_ids.device, dtype=input_ids.dtype)
        pos, found = _first(torch.isin(input_ids, ids) & real, idx)
        take = found & ~found_any
        mask_pos = torch.where(take, pos, mask_pos)
        found_any = found_any | found
    # no mask token: the block continues from the last context token
    mask_pos = torch.where(found_any, mask_pos, (ctx - 1).clamp(min=0))
    ctx_pos = torch.where(has_ctx, ctx, torch.full_like(ctx, BIG))
    in_ctx = idx < ctx_pos[:, None]
    positions = torch.where(in_ctx, idx, mask_pos[:, None])
    block = torch.where(in_ctx, torch.zeros_like(idx), idx - ctx_pos[:, None] + 1)
    positions = positions * padding_mask.long()
    block = block * padding_mask.long()
    return {
        "position_ids": torch.stack([positions, block], dim=1),
        "context_length": torch.where(has_ctx, ctx, torch.zeros_like(ctx)),
        "index": idx,
        "real": real,
    }


def causal_positions(input_ids: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """1D positions counted on real tokens (``arange`` without padding), as ChatGLM2/3 and GLM-4 use."""
    if padding_mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], -1)
    return effective_index(padding_mask)


def split_padding_mask(attention_mask: torch.Tensor | None, past_length: int, length: int,
                       batch: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Split a 2D padding mask into its past part and its current part.

    The mask may cover only the current tokens, or past + current (as ``generate``
    and peft's prefix tuning pass it); a shorter mask is treated as all-real on the left.
    Returns ``(past_mask or None, current_mask or None)``; ``None`` means all real.
    """
    if attention_mask is None:
        return None, None
    mask = attention_mask.to(device)
    total = past_length + length
    if mask.shape[1] > total:
        mask = mask[:, -total:]
    elif mask.shape[1] < total:
        ones = torch.ones(batch, total - mask.shape[1], dtype=mask.dtype, device=device)
        mask = torch.cat([ones, mask], dim=1)
    past, cur = mask[:, :past_length], mask[:, past_length:]
    past = None if past_length == 0 or bool(past.all()) else past.bool()
    cur = None if bool(cur.all()) else cur
    return past, cur


def allowed_attention(length: int, batch: int, device, *, current_mask: torch.Tensor | None,
                      past_length: int = 0, past_mask: torch.Tensor | None = None,
                      context_length: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean ``[batch, 1, length, past_length + length]`` mask, True where a query may attend.

    Queries see every real past key, earlier real current keys and, when
    ``context_length`` is given, every real key of the bidirectional context.
    A padding query that would see nothing sees itself (its output is never used).
    """
    q = torch.arange(length, device=device)
    allowed = (q[None, :] <= q[:, None]).unsqueeze(0).expand(batch, -1, -1)
    real = current_mask.bool() if current_mask is not None else torch.ones(batch, length, dtype=torch.bool, device=device)
    if context_length is not None:
        idx = index if index is not None else q.unsqueeze(0).expand(batch, -1)
        in_ctx = (idx < context_length[:, None]) & real
        allowed = allowed | in_ctx[:, None, :]
    allowed = allowed & real[:, None, :]
    allowed = allowed | (torch.eye(length, dtype=torch.bool, device=device)[None] & ~real[:, :, None])
    if past_length:
        past = (past_mask.bool() if past_mask is not None
                else torch.ones(batch, past_length, dtype=torch.bool, device=device))
        allowed = torch.cat([past[:, None, :].expand(-1, length, -1), allowed], dim=-1)
    return allowed.unsqueeze(1)


# ------------------------------------------------------------------ caches


def cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if isinstance(cache, (tuple, list)):
        first = cache[0] if cache else None
        return 0 if first is None or first[0] is None else int(first[0].shape[-2])
    return int(cache.get_seq_length())


def as_cache(cache: Any):
    """A transformers ``Cache`` from ``None``, a Cache, or a legacy tuple of per-layer ``(key, value)`` ``[B, H, S, D]``."""
    from transformers import DynamicCache

    if cache is None or not isinstance(cache, (tuple, list)):
        return cache
    return DynamicCache(ddp_cache_data=[(k, v) for k, v in cache])


def read_cache(cache: Any, layer_idx: int):
    """The cached ``(key, value)`` of a layer without modifying the cache, or ``None``."""
    if cache is None:
        return None
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx >= len(layers):
        return None
    layer = layers[layer_idx]
    if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


def attach_cache(cache: Any, layer_idx: int, key: torch.Tensor, value: torch.Tensor, use_cache: bool):
    """Keys/values to attend over: past + current. The cache is written only when ``use_cache``.

    Reading without writing keeps prefix tuning (whose prefix lives in the cache)
    correct under gradient checkpointing, where a layer's forward runs twice.
    """
    if cache is None:
        return key, value
    if use_cache:
        return cache.update(key, value, layer_idx)
    past = read_cache(cache, layer_idx)
    if past is None:
        return key, value
    return torch.cat([past[0], key], dim=-2), torch.cat([past[1], value], dim=-2)


def run_layers(layers, hidden: torch.Tensor, call, final_norm, *, past_key_values: Any, use_cache: bool,
               output_hidden_states: bool):
    """The decoder stack's output: ``hidden`` through every layer (``call(layer, hidden) -> hidden``), then ``final_norm``.

    ``final_norm`` may be None. With ``output_hidden_states``, ``hidden_states``
    holds every layer's input and the final output, as transformers returns them.
    """
    all_hidden = () if output_hidden_states else None
    for layer in layers:
        if output_hidden_states:
            all_hidden += (hidden,)
        hidden = call(layer, hidden)
    if final_norm is not None:
        hidden = final_norm(hidden)
    if output_hidden_states:
        all_hidden += (hidden,)
    return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=past_key_values if use_cache else None,
                                   hidden_states=all_hidden)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, **kwargs) -> torch.Tensor:
    """Next-token cross entropy on ``labels`` aligned with ``input_ids`` (shifted here; -100 ignored)."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    kwargs = {k: v for k, v in kwargs.items() if k in ("num_items_in_batch", "ignore_index")}
    return ForCausalLMLoss(logits, labels, vocab_size, **kwargs)


class GLMGenerationMixin:
    """``prepare_inputs_for_generation`` for models that build their own positions from ``input_ids``.

    Positions are computed for the whole sequence so far (prompt + generated tokens,
    left padding counted out) and sliced to the tokens this step feeds, so a padded
    batch generates exactly what each prompt generates alone.
    """

    def build_position_ids(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, past_key_values=None,
                                      attention_mask=None, inputs_embeds=None, position_ids=None,
                                      use_cache=None, **kwargs):
        from lmforge.modeling.hfcompat import cache_kwarg, take_cache

        kwargs.pop("is_first_iteration", None)
        kwargs.pop("cache_position", None)
        past_key_values = take_cache(past_key_values, kwargs)
        pad = attention_mask
        if pad is not None and pad.dim() == 2 and pad.shape[1] != input_ids.shape[1]:
            pad = pad[:, -input_ids.shape[1]:]
        if pad is not None and pad.dim() != 2:
            pad = None
        full = self.build_position_ids(input_ids, pad)
        n = next_sequence_length if next_sequence_length else input_ids.shape[1]
        past = cache_length(past_key_values)
        if next_sequence_length is None and past and past < input_ids.shape[1]:
            n = input_ids.shape[1] - past
        model_inputs = {
            "input_ids": input_ids[:, -n:].contiguous(),
            "position_ids": full[..., -n:].contiguous(),
            cache_kwarg(): past_key_values,
            "attention_mask": attention_mask,
            "use_cache": use_cache,
        }
        for key, value in kwargs.items():
            if key not in model_inputs and key not in ("labels", "next_sequence_length"):
                model_inputs[key] = value
        return model_inputs
