"""Batches of encoded rows: right/left padding with label masking, and the encoder's own collate."""

from __future__ import annotations

import math

IGNORE_INDEX = -100  # the label transformers' loss skips


class ListDataset:
    """A list of feature dicts, as ``Trainer`` wants a map-style dataset."""

    def __init__(self, features: list[dict]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, idx: int) -> dict:
        return self.features[idx]


def pad_collate(features: list[dict], pad_token_id: int, pad_to_multiple_of: int | None = None,
                padding_side: str = "right") -> dict:
    """Pad ``input_ids`` (with ``pad_token_id``), ``labels`` (with -100) and build ``attention_mask``."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        longest = int(math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of)
    ids, labels, mask = [], [], []
    for f in features:
        n = longest - len(f["input_ids"])
        lab = f.get("labels", f["input_ids"])
        if padding_side == "right":
            ids.append(list(f["input_ids"]) + [pad_token_id] * n)
            labels.append(list(lab) + [IGNORE_INDEX] * n)
            mask.append([1] * len(f["input_ids"]) + [0] * n)
        else:
            ids.append([pad_token_id] * n + list(f["input_ids"]))
            labels.append([IGNORE_INDEX] * n + list(lab))
            mask.append([0] * n + [1] * len(f["input_ids"]))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }


def make_collator(encoder, tokenizer=None):
    """The encoder's ``collate`` (:meth:`lmforge.data.encoding.Encoder.collate`: right padding, plus GLM's
    position ids in its subclass). ``tokenizer`` is unused (the encoder holds it); kept for callers."""
    return encoder.collate
