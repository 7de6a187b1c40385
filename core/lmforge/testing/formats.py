"""``check_data_format(name, records)``: the conformance suite for a data-format plugin.

Built from tests/test_data_formats.py and test_data_errors.py:

1. ``registered``: the format is in the registry;
2. ``detect``: it recognises each sample record and no record of an unrelated
   shape (``{}``, ``{"zz_unknown": 1}``), without raising;
3. ``convert``: each sample becomes one or more :class:`~lmforge.plugins.descriptors.Example`;
   a record missing its fields raises :class:`~lmforge.plugins.descriptors.RecordError`;
4. ``file round trip``: the samples written to a file of the format's first
   suffix read back (``format: NAME`` and ``format: auto``) to the same examples;
5. ``encoding``: every example encodes (raw template, a tiny in-memory tokenizer)
   to features with at least one trained label.

The built-in formats carry sample records here (``SAMPLES``); a plugin passes its own.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Sequence

from lmforge.testing.errors import Report

SAMPLES: dict[str, list[Any]] = {
    "input_output": [{"input": "What is 2 plus 2?", "output": "4"}, {"input": "", "output": "Pretraining text."}],
    "src_tgt": [{"src": "Hi", "tgt": "Hello!"}, {"src": ["a b", "c"], "tgt": ["x", "y z"]}],
    "instruction": [{"input": "Translate: cat", "target": "gato"}],
    "alpaca": [{"instruction": "Add", "input": "2 and 3", "output": "5"}],
    "title_content": [{"title": "Cats", "content": "Cats purr."}],
    "messages": [{"messages": [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}]}],
    "packed": [{"input": ["p1", ""], "output": ["r1", "free text"]}],
    "text": ["One document per line.", "第二个文档。"],
}
FOREIGN = ({}, {"zz_unknown": 1})


def check_data_format(name: str, records: Sequence[Any] | None = None) -> Report:
    """Run the data-format conformance suite on sample ``records`` (parsed JSON objects, or lines for ``.txt``).

    ``records`` defaults to :data:`SAMPLES` ``[name]`` for the built-in formats.
    Raises :class:`~lmforge.testing.ConformanceError` naming the first check that
    fails; returns a :class:`~lmforge.testing.Report`.
    """
    from lmforge.data.readers import convert_record, load_examples
    from lmforge.plugins.descriptors import Example, RecordError
    from lmforge.plugins.registry import get_registry

    report = Report("data format", name)
    reg = get_registry()
    with report.check("registered"):
        fmt = reg.data_format(name)
        assert fmt.suffixes, "the format reads no file kind (suffixes=())"
        records = list(records if records is not None else SAMPLES.get(name, ()))
        assert records, f"no sample records: call check_data_format({name!r}, records=[...])"
    text_only = all(s == ".txt" for s in fmt.suffixes)
    with report.check("detect"):
        for rec in records:
            assert fmt.detect(rec), f"detect() does not recognise the sample {rec!r}"
        if not text_only:
            for rec in FOREIGN:
                assert not fmt.detect(rec), f"detect() claims the unrelated record {rec!r}"
    converted = []
    with report.check("convert"):
        for rec in records:
            examples = fmt.convert(rec)
            assert isinstance(examples, list) and examples, f"convert({rec!r}) returned {examples!r}, not a list of Example"
            assert all(isinstance(e, Example) for e in examples), f"convert({rec!r}) returned a non-Example"
            converted += examples
        if not text_only:
            try:
                convert_record(fmt, {})
            except RecordError:
                pass
            else:
                raise AssertionError("convert({}) raised no RecordError for a record without any field")
    with tempfile.TemporaryDirectory(prefix=f"lmforge-check-{name}-") as tmp:
        path = os.path.join(tmp, "data" + fmt.suffixes[0])
        with open(path, "w", encoding="utf-8") as f:
            for rec in records:
                f.write((rec if fmt.suffixes[0] == ".txt" else json.dumps(rec, ensure_ascii=False)) + "\n")
        with report.check("file round trip"):
            strip = [(e.messages, e.text) for e in converted]
            for how in (name, "auto"):
                got = [(e.messages, e.text) for e in load_examples(path, how, reg)]
                assert got == strip, f"reading {os.path.basename(path)} with format {how!r} gives {got}, convert gives {strip}"
    with report.check("encoding"):
        from lmforge.data.encoding import IGNORE_INDEX, TemplateEncoder
        from lmforge.modeling.tiny_tokenizer import tiny_tokenizer

        tok = tiny_tokenizer({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
        encoder = TemplateEncoder(tok, None, max_length=10_000, template="raw")
        for ex in converted:
            feats = encoder.encode(ex)
            assert feats is not None and any(lab != IGNORE_INDEX for lab in feats["labels"]), (
                f"{ex} encodes to no trained token")
    return report
