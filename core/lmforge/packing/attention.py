"""The ``lmforge_packed`` attention: causal SDPA on each example's own slice of a packed row."""

from __future__ import annotations

from typing import Mapping
from lmforge.packing.plan import ATTN_NAME


# (key tensor, (batch, length), sizes) of the last packed forward: its layers share one computation.
# Replaced as a whole tuple, so a reader never sees a key with another forward's sizes.
_SEGMENT_CACHE: tuple = (None, None, None)


def _sizes_from_cu(cu, batch: int, length: int) -> list[int]:
    bounds = cu.tolist()
    if bounds[0] != 0 or bounds[-1] != batch * length:
        raise ValueError(f"cu_seq_lens covers {bounds[-1] - bounds[0]} tokens but the batch holds {batch}x{length}")
    sizes = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e <= s:
            raise ValueError("cu_seq_lens must be strictly increasing")
        if s // length != (e - 1) // length:
            raise ValueError("a packed segment crosses a row boundary: cu_seq_lens do not match the batch rows")
        sizes.append(e - s)
    return sizes


def _sizes_from_positions(position_ids, batch: int, length: int) -> list[int] | None:
    import torch

    pos = position_ids
    if pos.dim() == 3:  # (batch, channels, length): the first channel restarts per example
        pos = pos[:, 0]
    if pos.shape[0] != batch:
        pos = pos.expand(batch, -1)
    starts = torch.ones(batch, length, dtype=torch.bool, device=pos.device)
    starts[:, 1:] = (pos[:, 1:] - pos[:, :-1]) != 1
    if int(starts.sum()) == batch:
        return None
    idx = starts.reshape(-1).nonzero().view(-1).tolist() + [batch * length]
    return [e - s for s, e in zip(idx[:-1], idx[1:])]


def packed_segment_sizes(query, kwargs: Mapping) -> list[int] | None:
    """Lengths of the packed examples over the flattened batch (row by row), or ``None`` if not packed.

    Read from ``cu_seq_lens_q`` when the batch carries it, else from where
    ``position_ids`` restart. Computed once per forward and reused by every
    layer (the same tensor object reaches each layer).
    """
    batch, length = query.shape[0], query.shape[2]
    key = kwargs.get("cu_seq_lens_q")
    from_cu = key is not None
    if not from_cu:
        key = kwargs.get("position_ids")
        if key is None or length < 2:
            return None
    global _SEGMENT_CACHE
    cached_key, cached_shape, cached_sizes = _SEGMENT_CACHE
    if cached_key is key and cached_shape == (batch, length):
        return cached_sizes
    sizes = _sizes_from_cu(key, batch, length) if from_cu else _sizes_from_positions(key, batch, length)
    _SEGMENT_CACHE = (key, (batch, length), sizes)
    return sizes


def segment_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """Attention function registered as ``"lmforge_packed"`` in transformers' ``AttentionInterface``.

    A packed batch (no ``attention_mask``, example boundaries in ``cu_seq_lens_q``
    or restarting ``position_ids``) runs causal SDPA on each example's own
    tokens, so no token ever sees another example and the masked-out blocks
    are never computed. Anything else (padded batches, generation with a KV
    cache) is plain ``sdpa``. Returns ``(output[B, L, H, D], None)``. Raises
    ``NotImplementedError`` for sliding-window or bidirectional attention layers,
    which this implementation does not model.

    The batch is laid out once as ``(H, B*L, D)`` and cut along the token axis
    with ``split``; each example's output is contiguous and they are joined with
    one ``cat`` along that axis, so the backward passes of both are plain
    block copies (slicing every example out of the 4D tensor, or joining
    transposed pieces, makes autograd write a full-size gradient per example
    or copy element by element).
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, _ = query.shape
    kv_len = key.shape[2]
    sizes = packed_segment_sizes(query, kwargs) if (attention_mask is None and q_len == kv_len) else None
    if sizes is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if getattr(module, "sliding_window", None) or (is_causal is False) or not getattr(module, "is_causal", True):
        raise NotImplementedError(
            f"{ATTN_NAME} attention computes full causal attention per packed example; "
            f"{type(module).__name__} uses sliding-window or bidirectional attention"
        )
    extra = {"enable_gqa": True} if key.shape[1] != heads else {}
    tokens = batch * q_len
    qs = query.transpose(0, 1).reshape(heads, tokens, -1).split(sizes, dim=1)
    ks = key.transpose(0, 1).reshape(key.shape[1], tokens, -1).split(sizes, dim=1)
    vs = value.transpose(0, 1).reshape(value.shape[1], tokens, -1).split(sizes, dim=1)
    outs = [
        F.scaled_dot_product_attention(q[None], k[None], v[None], dropout_p=dropout, scale=scaling, is_causal=True,
                                       **extra)[0]
        for q, k, v in zip(qs, ks, vs)
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return out.view(heads, batch, q_len, -1).permute(1, 2, 0, 3).contiguous(), None


def segment_attention_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                           attention_mask=None, **kwargs):
    """Mask builder paired with ``"lmforge_packed"``: no mask for unpadded self-attention, else sdpa's mask.

    Without a 2D padding mask and without a cache the attention function needs no
    mask (it reads example boundaries itself), so the dense block-diagonal mask
    transformers would derive from restarting positions is never built.
    """
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if attention_mask is None and kv_length == q_length and isinstance(q_offset, int) and q_offset == 0:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function or causal_mask_function,
                     attention_mask=attention_mask, **kwargs)


def register_packed_attention() -> str:
    """Register ``"lmforge_packed"`` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, segment_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, segment_attention_mask)
    return ATTN_NAME
