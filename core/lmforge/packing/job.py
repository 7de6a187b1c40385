"""The job side of packing: capability checks, which attention to use, and the cross-attention probe run before training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from lmforge.errors import CapabilityError
from lmforge.packing.attention import ATTN_NAME, register_packed_attention
from lmforge.packing.collate import make_packed_collator
from lmforge.packing.plan import NATIVE_PACKED_ATTENTION, PACKED_KEY, PackedDataset, PackingStats, feature_lengths, group_features, pack_features


def _base_model(model):
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def check_packing_capability(family) -> None:
    """Raise :class:`CapabilityError` when ``family`` declares packing unsupported."""
    cap = family.capability("packing")
    if not cap.usable:
        raise CapabilityError(f"packing: the {family.name!r} family cannot be packed safely: {cap.reason}")


def uses_packed_attention(model, encoder=None, attn_requested: str | None = None) -> bool:
    """Whether packed training swaps ``model``'s attention for ``"lmforge_packed"``.

    Yes for models whose attention layers dispatch through transformers'
    ``AttentionInterface`` (``_supports_attention_backend``), unless the job asked
    for an implementation transformers packs natively (flash varlen, flex,
    eager) or the family's encoder declares ``packed_attention = "model"``.
    Other models keep their attention and must honour the packed batch
    themselves; :func:`verify_no_cross_attention` checks that they do.
    """
    if (encoder is not None and encoder.packed_attention == "model") or attn_requested in NATIVE_PACKED_ATTENTION:
        return False
    return bool(getattr(type(model), "_supports_attention_backend", False)) and hasattr(model, "set_attn_implementation")


@dataclass
class PackedTraining:
    """Everything a packed job needs: the dataset, the collator, the stats and how to undo the model changes."""

    dataset: PackedDataset
    collator: Callable
    stats: PackingStats
    attention: str
    previous_attention: str | None = None
    previous_use_cache: Any = None

    def restore(self, model) -> None:
        """Give the model back its attention implementation and ``use_cache`` (before saving it)."""
        base = _base_model(model)
        if self.previous_attention is not None and self.attention == ATTN_NAME:
            base.set_attn_implementation(self.previous_attention)
        if hasattr(base, "config"):
            base.config.use_cache = self.previous_use_cache


def prepare_packed_training(model, encoder, tokenizer, features, max_length: int, *,
                            groups: Sequence[Any] | None = None, fallback: Callable | None = None,
                            attn_requested: str | None = None, verify: bool = True) -> PackedTraining:
    """Set a loaded model and a dataset of encoded features up for packed training.

    Packs ``features`` (any map-style dataset of ``input_ids``/``labels`` dicts;
    online: best-fit decreasing; offline: by ``groups``), picks the attention
    implementation (``"lmforge_packed"`` unless the job asked for one
    transformers packs natively, or the family's encoder says
    ``packed_attention = "model"``), turns the KV cache off, builds the collator
    (``fallback`` collates unpacked eval batches) and runs
    :func:`verify_no_cross_attention`. Raises :class:`CapabilityError` when the
    model lets packed examples see each other.
    """
    if groups is None:
        dataset, stats = pack_features(features, max_length)
    else:
        dataset, stats = group_features(features, groups, max_length)
    base = _base_model(model)
    config = getattr(base, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    attention = previous or "sdpa"
    if uses_packed_attention(base, encoder, attn_requested):
        register_packed_attention()
        base.set_attn_implementation(ATTN_NAME)
        attention = ATTN_NAME
    setup = PackedTraining(dataset=dataset, collator=make_packed_collator(encoder, tokenizer, fallback),
                           stats=stats, attention=attention, previous_attention=previous,
                           previous_use_cache=getattr(config, "use_cache", None))
    if config is not None:
        config.use_cache = False
    if verify:
        try:
            verify_no_cross_attention(model, setup.collator, features)
        except Exception:
            setup.restore(model)
            raise
    return setup


def _probe_pair(features) -> tuple[Mapping, Mapping] | None:
    """The two shortest examples of different lengths (at least 2 tokens each), or None."""
    lengths = feature_lengths(features)
    order = sorted((n, i) for i, n in enumerate(lengths) if n >= 2)
    if len(order) < 2:
        return None
    first = order[0]
    second = next((o for o in order[1:] if o[0] != first[0]), order[1])
    return features[first[1]], features[second[1]]


def verify_no_cross_attention(model, collator: Callable, features, tol: float | None = None) -> float:
    """Refuse a model that lets packed examples influence each other; returns the largest logit difference.

    Two rows hold the same two examples A and B, as ``[A, B]`` and ``[B, A]``.
    With correct packing each example's logits are the same in both rows (same
    tokens, restarted positions, no neighbour visible); contamination, or
    positions that do not restart, change them. Runs in eval mode without
    gradients on the two shortest examples of ``features``. Raises
    :class:`CapabilityError`.
    """
    import torch

    pair = _probe_pair(features)
    if pair is None:
        return 0.0
    a, b = pair
    na, nb = len(a["input_ids"]), len(b["input_ids"])
    batch = collator([{PACKED_KEY: [a, b]}, {PACKED_KEY: [b, a]}])
    batch.pop("labels", None)
    param = next(model.parameters())
    batch = {k: (v.to(param.device) if hasattr(v, "to") else v) for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(**batch).logits.float()
    finally:
        model.train(was_training)
    a1, b1 = logits[0, :na], logits[0, na:na + nb]
    b2, a2 = logits[1, :nb], logits[1, nb:nb + na]
    diff = max(float((a1 - a2).abs().max()), float((b1 - b2).abs().max()))
    scale = max(1.0, float(logits[:, : na + nb].abs().max()))
    if tol is None:
        tol = 1e-4 if param.dtype == torch.float32 else 2e-2
    if diff > tol * scale:
        raise CapabilityError(
            f"packing: {type(_base_model(model)).__name__} lets packed examples influence each other "
            f"(an example's logits change by {diff:.3g} with its neighbour and offset in the row): the family's "
            "packed positions or attention are not wired for this model, so packing is refused"
        )
    return diff
