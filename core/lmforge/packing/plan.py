"""Rows: best-fit-decreasing bin packing of encoded examples into rows of max_length slots (pure Python)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence


ATTN_NAME = "lmforge_packed"
PACKED_KEY = "packed_features"

# attn_implementation values for which transformers' own packed handling is used
# (block-diagonal masks from restarting position_ids, or flash varlen from cu_seq_lens)
NATIVE_PACKED_ATTENTION = ("eager", "flash_attention_2", "flash_attention_3", "flex_attention")



def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length ``<= capacity`` (best-fit decreasing).

    Items are placed longest first, each into the fullest open bin it still fits
    in (ties: the earliest opened). Deterministic for the same ``lengths``. Runs
    in ``O(n log n + n * log(capacity))``: open bins are indexed by their free
    space. Returns a list of bins, each a list of indices into ``lengths`` in the
    order they were placed. Raises ``ValueError`` for an item longer than
    ``capacity`` or a non-positive length.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    spaces: list[int] = []  # sorted distinct free spaces that have at least one open bin
    at_space: dict[int, list[int]] = {}  # free space -> open bin ids (oldest first)
    for i in order:
        n = lengths[i]
        if n <= 0 or n > capacity:
            raise ValueError(f"item {i} has length {n}, outside 1..{capacity}")
        k = bisect.bisect_left(spaces, n)
        if k == len(spaces):
            b = len(bins)
            bins.append([i])
            free = capacity - n
        else:
            space = spaces[k]
            ids = at_space[space]
            b = ids.pop(0)
            if not ids:
                del at_space[space]
                spaces.pop(k)
            bins[b].append(i)
            free = space - n
        if free > 0:
            if free not in at_space:
                at_space[free] = []
                bisect.insort(spaces, free)
            ids = at_space[free]
            bisect.insort(ids, b)
    return bins


@dataclass
class PackingStats:
    """What packing achieved: ``efficiency`` = real tokens / (rows * max_length)."""

    examples: int = 0
    rows: int = 0
    real_tokens: int = 0
    max_length: int = 0
    split_groups: int = 0
    mode: str = "online"

    @property
    def slots(self) -> int:
        return self.rows * self.max_length

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.slots if self.slots else 0.0

    def summary(self) -> str:
        extra = f", {self.split_groups} pre-packed groups longer than max_length split" if self.split_groups else ""
        return (f"{self.mode} packing: {self.examples} examples -> {self.rows} rows of {self.max_length} slots, "
                f"efficiency {100 * self.efficiency:.1f}% (real tokens / slots){extra}")

    def to_json(self) -> dict:
        return {"mode": self.mode, "examples": self.examples, "rows": self.rows, "real_tokens": self.real_tokens,
                "max_length": self.max_length, "slots": self.slots, "efficiency": round(self.efficiency, 5),
                "split_groups": self.split_groups}


def feature_lengths(features) -> list[int]:
    """Token count of every item of a map-style dataset of encoded features.

    Uses the dataset's own ``lengths()`` when it has one (token stores know their
    lengths without reading the tokens), else reads each item.
    """
    own = getattr(features, "lengths", None)
    if callable(own):
        return [int(n) for n in own()]
    return [len(features[i]["input_ids"]) for i in range(len(features))]


def pack_features(features, max_length: int) -> tuple["PackedDataset", PackingStats]:
    """Online packing: a dataset of encoded features -> a :class:`PackedDataset` of rows, with statistics."""
    lengths = feature_lengths(features)
    rows = pack_lengths(lengths, max_length)
    stats = PackingStats(examples=len(lengths), rows=len(rows), real_tokens=sum(lengths), max_length=max_length,
                         mode="online")
    return PackedDataset(features, rows), stats


def group_features(features, groups: Sequence[Any], max_length: int) -> tuple["PackedDataset", PackingStats]:
    """Offline packing: keep the rows a packed file defines (items with equal group keys).

    ``groups[i]`` is the record item ``i`` came from; consecutive items of one
    record form one row. A group longer than ``max_length`` (the file was packed
    for a longer context, or tokenizes longer) is split into consecutive rows
    that fit, and counted in ``split_groups``.
    """
    lengths = feature_lengths(features)
    if len(groups) != len(lengths):
        raise ValueError(f"{len(groups)} group keys for {len(lengths)} examples")
    rows: list[list[int]] = []
    stats = PackingStats(examples=len(lengths), real_tokens=sum(lengths), max_length=max_length, mode="offline")
    current: list[int] = []
    used = 0
    last_key: Any = object()
    split_keys = set()
    for i, (n, key) in enumerate(zip(lengths, groups)):
        if key != last_key or used + n > max_length:
            if key == last_key:
                split_keys.add(key)
            if current:
                rows.append(current)
            current, used = [], 0
        current.append(i)
        used += n
        last_key = key
    if current:
        rows.append(current)
    stats.rows = len(rows)
    stats.split_groups = len(split_keys)
    return PackedDataset(features, rows), stats


class PackedDataset:
    """Map-style dataset of packed rows over a dataset of encoded features.

    ``rows[i]`` lists the indices of the examples of row ``i``; item ``i`` is
    ``{"packed_features": [features[j] for j in rows[i]]}``, read when asked (a
    memory-mapped token store stays on disk).
    """

    def __init__(self, features, rows: list[list[int]]) -> None:
        self.features = features
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int) -> dict:
        return {PACKED_KEY: [self.features[j] for j in self.rows[idx]]}
