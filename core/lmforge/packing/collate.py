"""Batches of packed rows: positions restart per example, first label of each example masked, cu_seq_lens."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence
from lmforge.data.collate import IGNORE_INDEX
from lmforge.packing.plan import PACKED_KEY


def default_position_ids(length: int) -> list[int]:
    """Positions of one example in a packed row for RoPE/learned-position families: 0..length-1."""
    return list(range(length))


class PackedCollator:
    """Packed rows -> a batch dict (the LLaMA/RoPE default).

    ``__call__(rows)`` takes a list of rows, each a list of encoded features
    (``input_ids``, ``labels`` and optionally per-example ``position_ids``, 1D or
    a list of position channels such as GLM's 2D block positions), and returns
    ``input_ids``, ``labels``, ``position_ids`` (restarting at every example),
    ``cu_seq_lens_q/k`` (int32 boundaries of every example over the flattened
    batch, the padding tail of a row being its own segment), ``max_length_q/k``
    and ``use_cache=False``. Rows are right-padded to the longest row. Items of
    the form ``{"packed_features": [...]}`` (from :class:`PackedDataset`) are
    accepted; plain features (an unpacked eval set) go to ``fallback``.
    """

    def __init__(self, pad_token_id: int, fallback: Callable | None = None, pad_to_multiple_of: int | None = None,
                 position_ids: Callable[[int], list] = default_position_ids) -> None:
        self.pad_token_id = pad_token_id
        self.fallback = fallback
        self.pad_to_multiple_of = pad_to_multiple_of
        self.position_ids = position_ids

    def __call__(self, items: list) -> dict:
        if items and isinstance(items[0], Mapping) and PACKED_KEY not in items[0]:
            if self.fallback is None:
                raise TypeError("PackedCollator got unpacked features and has no fallback collator")
            return self.fallback(items)
        rows = [it[PACKED_KEY] if isinstance(it, Mapping) else it for it in items]
        return collate_packed_rows(rows, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of,
                                   position_ids=self.position_ids)


def collate_packed_rows(rows: Sequence[Sequence[Mapping]], pad_token_id: int, *, pad_to_multiple_of: int | None = None,
                        position_ids: Callable[[int], list] = default_position_ids) -> dict:
    """The default packed batch (see :class:`PackedCollator`); families may call it from ``pack_collate``."""
    import torch

    row_lens = [sum(len(f["input_ids"]) for f in row) for row in rows]
    width = max(row_lens)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    channels = _position_channels(rows)
    ids, labels = [], []
    pos: list[list[list[int]]] = [[] for _ in range(channels)]
    bounds = [0]
    seg_max = 0
    for r, row in enumerate(rows):
        r_ids, r_lab = [], []
        r_pos: list[list[int]] = [[] for _ in range(channels)]
        for f in row:
            n = len(f["input_ids"])
            r_ids.extend(f["input_ids"])
            lab = list(f.get("labels", f["input_ids"]))
            lab[0] = IGNORE_INDEX  # the causal shift makes the previous example's last token predict it
            r_lab.extend(lab)
            own = f.get("position_ids")
            if own is None:
                own = position_ids(n)
            own_ch = own if (own and isinstance(own[0], (list, tuple))) else [own]
            if len(own_ch) != channels:
                raise ValueError("examples in one packed batch disagree on the number of position channels")
            for c in range(channels):
                r_pos[c].extend(own_ch[c])
            bounds.append(bounds[-1] + n)
            seg_max = max(seg_max, n)
        tail = width - row_lens[r]
        if tail:
            r_ids.extend([pad_token_id] * tail)
            r_lab.extend([IGNORE_INDEX] * tail)
            for c in range(channels):
                r_pos[c].extend(range(tail))
            bounds.append(bounds[-1] + tail)
            seg_max = max(seg_max, tail)
        ids.append(r_ids)
        labels.append(r_lab)
        for c in range(channels):
            pos[c].append(r_pos[c])
    position = torch.tensor(pos[0] if channels == 1 else [list(ch) for ch in zip(*pos)], dtype=torch.long)
    cu = torch.tensor(bounds, dtype=torch.int32)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": position,
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": seg_max,
        "max_length_k": seg_max,
        "use_cache": False,
    }


def _position_channels(rows: Sequence[Sequence[Mapping]]) -> int:
    for row in rows:
        for f in row:
            own = f.get("position_ids")
            if own:
                return len(own) if isinstance(own[0], (list, tuple)) else 1
    return 1


def make_packed_collator(encoder, tokenizer, fallback: Callable | None = None) -> Callable:
    """The family's ``encoder.pack_collate`` when it defines one, else :class:`PackedCollator`.

    ``fallback`` collates plain (unpacked) features, e.g. the eval set.
    """
    own = encoder.pack_collate
    if own is not None:
        def collate(items):
            if items and isinstance(items[0], Mapping) and PACKED_KEY not in items[0]:
                return fallback(items) if fallback is not None else own([[it] for it in items])
            return own([it[PACKED_KEY] if isinstance(it, Mapping) else it for it in items])
        return collate
    return PackedCollator(tokenizer.pad_token_id, fallback=fallback)
