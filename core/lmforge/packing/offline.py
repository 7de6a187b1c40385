"""Offline packing into the AntLLM packed format (``lmforge data pack``)."""

from __future__ import annotations

import json
import os

from lmforge.errors import DataError
from lmforge.packing.plan import PackingStats, pack_lengths
from lmforge.packing.job import check_packing_capability


def example_to_pair(example) -> tuple[str, str]:
    """An example as one ``(input, output)`` pair of the AntLLM packed format, or DataError."""
    if example.text is not None:
        return "", example.text
    roles = [m.role for m in example.messages]
    if roles == ["user", "assistant"]:
        return example.messages[0].content, example.messages[1].content
    where = f"{example.source[0]}:{example.source[1]}" if example.source else "an example"
    raise DataError(f"{where}: the packed format holds single-turn (input, output) pairs; this example has turns "
                    f"{roles}; train it with online packing (packing: true) instead of `lmforge data pack`")


def pack_files(train_file, model: str, output: str, *, max_length: int, data_format: str = "auto",
               template: str = "family", train_on_prompt: bool = False, family: str | None = None,
               trust_remote_code: bool = False, registry=None) -> PackingStats:
    """Read data files, tokenize with ``model``'s tokenizer and template, pack, write ``output`` (JSONL).

    Each output line is one packed row in the AntLLM packed format,
    ``{"input": [prompt, ...], "output": [response, ...]}`` (an empty prompt is
    a pretraining text), and trains as that row with ``data.online_packing:
    false``. Only the tokenizer is loaded (:func:`lmforge.modeling.loading.load_tokenizer`:
    a preset's, or the checkpoint directory's through the family's tokenizer loader),
    never the weights.
    """
    from lmforge.data.readers import load_examples
    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import load_tokenizer, resolve_model
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    source = resolve_model(model, family=family, registry=reg)
    check_packing_capability(source.family)
    tokenizer = load_tokenizer(source, trust_remote_code)
    examples = load_examples(train_file, data_format, reg, "train_file")
    encoder = make_encoder(tokenizer, source.family, max_length=max_length, train_on_prompt=train_on_prompt,
                           template=template)
    pairs, lengths = [], []
    for ex in examples:
        feat = encoder.encode(ex)
        if feat is None:
            continue
        pairs.append(example_to_pair(ex))
        lengths.append(len(feat["input_ids"]))
    if not pairs:
        raise DataError(f"{train_file}: no example survived tokenization")
    bins = pack_lengths(lengths, max_length)
    tmp = output + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for b in bins:
            rec = {"input": [pairs[i][0] for i in b], "output": [pairs[i][1] for i in b]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, output)
    return PackingStats(examples=len(pairs), rows=len(bins), real_tokens=sum(lengths), max_length=max_length,
                        mode="offline")
