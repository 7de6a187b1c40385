"""LongLoRA's shifted sparse attention (S²-Attn) for training, as a transformers attention function.

The sequence is cut into groups of ``G`` tokens and every token attends, causally,
only to the tokens of its own group. In the first half of the attention heads the
groups are ``[0, G)``, ``[G, 2G)`` ...; in the second half the tokens are shifted
by ``G/2`` (``torch.roll`` by ``-G/2``) before grouping and the outputs shifted back
after, so those heads' groups straddle the first heads' group boundaries and
information flows between neighbouring groups (Chen et al., *LongLoRA*, 2023).
Only training uses it: in eval mode (evaluation, generation), with a KV cache, or
when the sequence fits in one group, the function is plain ``sdpa`` (full causal
attention), and :func:`disable_shift_attn` gives the model its own attention back
before it is saved.

Choices (see docs/long-context.md, "LongLoRA: shifted sparse attention"):

* ``G`` is ``long_context.group_size_ratio`` x the training length (``max_length``),
  rounded down to an even number, fixed for the whole run (the paper: 1/4 of the
  trained context). A batch whose length is not a multiple of ``G`` (dynamic padding
  makes any length possible) is padded inside the function to one; the padded
  tokens come after every real one, so causality hides them, and their outputs are
  dropped.
* "Causal within a group" means by the tokens' original positions. In the shifted
  heads the last group wraps around (the last ``G/2`` tokens and the first
  ``G/2``): there the last tokens may see the first ones (earlier in the text) and
  the first tokens never see the last ones (later in the text). Masking by the
  rolled order instead would let the first ``G/2`` tokens of every sequence see its
  end, i.e. the answer they are trained to predict.
* A padding mask (``attention_mask``) is honoured: each group uses its own block of
  the mask transformers built.
* Packing is refused (the groups do not follow example boundaries), and so is a
  family whose attention does not go through transformers' ``AttentionInterface``.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import CapabilityError, ConfigError

ATTN_NAME = "lmforge_s2"
# attribute set on every submodule of a model that trains with S²-Attn: the group size (tokens)
GROUP_ATTR = "_lmforge_s2_group_size"
# attribute on the base model: the attention implementation to give back
PREVIOUS_ATTR = "_lmforge_s2_previous_attention"


def shift_attn_settings(spec) -> tuple[bool, float]:
    """``(shift_attn, group_size_ratio)`` of a job spec, read defensively (``long_context`` may be absent)."""
    lc = getattr(spec, "long_context", None)
    if lc is None:
        return False, 0.25
    ratio = getattr(lc, "group_size_ratio", None)
    return bool(getattr(lc, "shift_attn", False)), (0.25 if ratio is None else ratio)


def group_size_for(max_length: int, ratio: float) -> int:
    """The S² group size for a training length: ``ratio`` x ``max_length``, rounded down to an even number.

    Raises :class:`ConfigError` for a ratio outside ``(0, 1]`` or a group under 2 tokens.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ConfigError(f"long_context.group_size_ratio: expected a number in (0, 1], got {ratio!r}")
    size = int(max_length * ratio) // 2 * 2
    if size < 2:
        raise ConfigError(f"long_context.group_size_ratio: {ratio} x max_length {max_length} leaves a group of "
                          f"{int(max_length * ratio)} token(s); shifted sparse attention needs at least 2")
    return size


def check_shift_attn(spec) -> int | None:
    """The group size a job trains with, or ``None`` without ``long_context.shift_attn``.

    Checked before any weights load; raises :class:`ConfigError` for a bad ratio
    and for ``packing: true`` (S² groups would cross the packed examples' boundaries).
    """
    enabled, ratio = shift_attn_settings(spec)
    if not enabled:
        return None
    if spec.packing.enabled:
        raise ConfigError("long_context.shift_attn: shifted sparse attention cannot be combined with packing: true "
                          "(its groups would span several packed examples); turn one of them off")
    return group_size_for(spec.model.max_length, ratio)


def _base(model):
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def enable_shift_attn(model, group_size: int, family_name: str = "") -> str:
    """Switch a loaded model's attention to S²-Attn with ``group_size``; returns the previous implementation.

    Raises :class:`CapabilityError` when the model's attention does not dispatch
    through transformers' ``AttentionInterface`` (remote-code or custom modeling).
    """
    base = _base(model)
    if not (getattr(type(base), "_supports_attention_backend", False) and hasattr(base, "set_attn_implementation")):
        who = f"the {family_name!r} family's model" if family_name else "this model"
        raise CapabilityError(
            f"long_context.shift_attn: {who} ({type(base).__name__}) does not run its attention through "
            "transformers' AttentionInterface, so shifted sparse attention cannot be installed; "
            "LLaMA-like models loaded with transformers' own modeling support it")
    register_shift_attention()
    previous = getattr(base.config, "_attn_implementation", None) or "sdpa"
    if previous == ATTN_NAME:
        previous = getattr(base, PREVIOUS_ATTR, "sdpa")
    for module in base.modules():
        setattr(module, GROUP_ATTR, int(group_size))
    setattr(base, PREVIOUS_ATTR, previous)
    base.set_attn_implementation(ATTN_NAME)
    return previous


def disable_shift_attn(model) -> None:
    """Give the model back the attention it had before :func:`enable_shift_attn` (before saving it)."""
    base = _base(model)
    previous = getattr(base, PREVIOUS_ATTR, None)
    if previous is None:
        return
    base.set_attn_implementation(previous)
    for module in base.modules():
        if hasattr(module, GROUP_ATTR):
            delattr(module, GROUP_ATTR)
    delattr(base, PREVIOUS_ATTR)


def _group_masks(mask, length: int, padded: int, group: int, shift: int, device):
    """Per-group boolean masks ``(B or 1, n, 1, G, G)``: may query ``i`` of a group see key ``j``.

    Allowed when ``j`` is not after ``i`` in the original order and (with a padding
    mask) the model's own mask allows it; the diagonal is always allowed so no row is
    empty (rows of padding tokens are dropped or ignored by the loss).
    """
    import torch

    n = padded // group
    pos = torch.arange(padded, device=device)
    if shift:
        pos = torch.roll(pos, -shift)
    pos = pos.view(n, group)
    allowed = pos[:, None, :] <= pos[:, :, None]  # (n, G_query, G_key)
    if mask is not None:
        full = mask if mask.dtype == torch.bool else mask == 0
        full = full[:, 0, :length, :length]
        if padded != length:
            full = torch.nn.functional.pad(full, (0, padded - length, 0, padded - length), value=False)
        blocks = full[:, pos[:, :, None], pos[:, None, :]]  # (B, n, G, G)
        eye = torch.eye(group, dtype=torch.bool, device=device)
        allowed = (allowed & blocks) | eye
    return allowed.unsqueeze(-3)


def _grouped_attention(q, k, v, mask, length: int, group: int, shift: int, dropout: float, scaling):
    """Attention of ``(B, h, Lp, D)`` tensors within groups of ``group`` tokens, rolled by ``-shift`` first.

    Without a padding mask every group but the shifted heads' last (the one that wraps
    around) is plain causal attention in the rolled order, so only that group gets an
    explicit mask and the others keep SDPA's causal kernels.
    """
    import torch
    import torch.nn.functional as F

    batch, heads, padded, _ = q.shape
    n = padded // group
    if shift:
        q, k, v = (torch.roll(t, -shift, dims=2) for t in (q, k, v))
    q, k, v = (t.reshape(batch, heads, n, group, t.shape[-1]).transpose(1, 2) for t in (q, k, v))  # (B, n, h, G, D)
    if mask is None:
        causal = n if not shift else n - 1  # groups that are causal in the rolled order
        outs = []
        if causal:
            outs.append(F.scaled_dot_product_attention(q[:, :causal], k[:, :causal], v[:, :causal], dropout_p=dropout,
                                                       scale=scaling, is_causal=True))
        if causal < n:
            last = _group_masks(None, length, padded, group, shift, q.device)[causal:]
            outs.append(F.scaled_dot_product_attention(q[:, causal:], k[:, causal:], v[:, causal:], attn_mask=last,
                                                       dropout_p=dropout, scale=scaling))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    else:
        masks = _group_masks(mask, length, padded, group, shift, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks, dropout_p=dropout, scale=scaling)
    out = out.transpose(1, 2).reshape(batch, heads, padded, out.shape[-1])
    return torch.roll(out, shift, dims=2) if shift else out


def shift_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any):
    """Attention function registered as ``"lmforge_s2"`` in transformers' ``AttentionInterface``.

    ``query``/``key``/``value`` are ``(B, H, L, D)`` (``key``/``value`` may have fewer
    heads: grouped-query attention); returns ``(output[B, L, H, D], None)``. In
    training mode, without a cache and with ``L`` longer than the group size, the
    first ``H // 2`` heads attend within groups ``[0, G)``, ``[G, 2G)`` ... and the
    other heads within the same groups after shifting the tokens by ``G/2``;
    otherwise it is plain ``sdpa``. Raises :class:`CapabilityError` for
    sliding-window or bidirectional layers and for a module that was not set up by
    :func:`enable_shift_attn`.
    """
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    group = getattr(module, GROUP_ATTR, None)
    length, kv_len = query.shape[2], key.shape[2]
    if group is None:
        raise CapabilityError(f"{ATTN_NAME} attention: {type(module).__name__} has no group size; switch models to "
                              "it with lmforge.modeling.longlora.enable_shift_attn")
    if not module.training or length != kv_len or length <= group:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if getattr(module, "sliding_window", None) or is_causal is False or not getattr(module, "is_causal", True):
        raise CapabilityError(f"long_context.shift_attn: {type(module).__name__} uses sliding-window or "
                              "bidirectional attention, which shifted sparse attention does not model")
    heads = query.shape[1]
    if key.shape[1] != heads:  # grouped-query attention: each query head gets its own copy of its kv head
        key, value = repeat_kv(key, heads // key.shape[1]), repeat_kv(value, heads // value.shape[1])
    padded = -(-length // group) * group
    if padded != length:  # padded at the end: after every real token, so causality hides them
        query, key, value = (torch.nn.functional.pad(t, (0, 0, 0, padded - length)) for t in (query, key, value))
    half = heads // 2  # heads [0, half) unshifted, [half, heads) shifted by G/2 (one head: shifted only)
    parts = [_grouped_attention(query[:, lo:hi], key[:, lo:hi], value[:, lo:hi], attention_mask, length, group,
                                shift, dropout, scaling)
             for lo, hi, shift in ((0, half, 0), (half, heads, group // 2)) if hi > lo]
    out = torch.cat(parts, dim=1)[:, :, :length]
    return out.transpose(1, 2).contiguous(), None


def register_shift_attention() -> str:
    """Register ``"lmforge_s2"`` with transformers (idempotent; its masks are sdpa's); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, shift_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME
