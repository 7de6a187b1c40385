"""Indexed datasets: ``lmforge data index`` writes a tokenized, memory-mapped corpus once.

An index directory is a token store (:mod:`lmforge.data.tokenstore`) holding whole,
untruncated documents, plus these fields in ``meta.json``:

- ``language``: ``zh``, ``en`` or ``multi`` (guessed from the text, or given);
- ``nlines``: records (lines) indexed; ``nbytes``: bytes of the source files;
- ``length_distribute``: examples per token-length bucket (``less_4k``, ``4k-8k``,
  ``8k-16k``, ``16k-32k``, ``32k-64k``, ``64k-128k``, ``128k-256k``, ``more_256k``;
  k = 1024 tokens);
- ``avg_token_per_line``: tokens per record; ``data_sample``: the first record;
- ``tokenizer_model`` and ``encoder``: what it was tokenized with, checked when a job reads it.

Training reads an index directly (``data.train_file: INDEX_DIR`` or a ``data.mix``
entry), cutting examples to the job's ``max_length`` as it reads them.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from lmforge.data.readers import ReadReport, read_examples
from lmforge.errors import DataError

LENGTH_BUCKETS = (
    ("less_4k", 4), ("4k-8k", 8), ("8k-16k", 16), ("16k-32k", 32), ("32k-64k", 64), ("64k-128k", 128),
    ("128k-256k", 256), ("more_256k", None),
)


_BUCKET_EDGES = [k * 1024 for _, k in LENGTH_BUCKETS[:-1]]


def length_bucket(n_tokens: int) -> str:
    """The ``length_distribute`` bucket of a document of ``n_tokens`` tokens (k = 1024 tokens)."""
    import bisect

    return LENGTH_BUCKETS[bisect.bisect_right(_BUCKET_EDGES, n_tokens)][0]


def length_distribute(lengths) -> dict[str, int]:
    """Examples per token-length bucket."""
    out = {name: 0 for name, _ in LENGTH_BUCKETS}
    for n in lengths:
        out[length_bucket(int(n))] += 1
    return out


def _cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF


def guess_language(texts: Sequence[str]) -> str:
    """``zh`` when most letters are CJK, ``en`` when almost none are, else ``multi``."""
    cjk = letters = 0
    for t in texts:
        for ch in t[:4000]:
            if ch.isalpha():
                letters += 1
                cjk += _cjk(ch)
    if not letters:
        return "en"
    share = cjk / letters
    return "zh" if share > 0.5 else "en" if share < 0.05 else "multi"


def _example_text(ex) -> str:
    return ex.text if ex.text is not None else "\n".join(m.content for m in ex.messages)


def build_index(paths: Sequence[str], out_dir: str, encoder, *, fmt_name: str = "auto", on_error: str = "raise",
                language: str | None = None, tokenizer_model: str | None = None, registry=None,
                log=None) -> dict[str, Any]:
    """Tokenize ``paths`` into the index directory ``out_dir``; returns its ``meta.json`` content.

    ``encoder`` must not truncate (``max_length=sys.maxsize``): an index keeps
    whole documents. Raises :class:`DataError` on the first bad record unless
    ``on_error="skip"``.
    """
    from lmforge.data.cache import _stats_json, _vocab_size, encoder_identity
    from lmforge.data.encoding import EncodeStats
    from lmforge.data.tokenstore import TokenStoreWriter, is_store_dir

    if os.path.exists(out_dir) and not is_store_dir(out_dir) and os.listdir(out_dir):
        raise DataError(f"{out_dir}: exists and is not an lmforge index; choose an empty or new directory")
    report = ReadReport()
    encoder.stats = EncodeStats()
    sample: Any = None
    texts: list[str] = []
    buckets = {name: 0 for name, _ in LENGTH_BUCKETS}
    with TokenStoreWriter(out_dir, vocab_size=_vocab_size(encoder.tokenizer),
                          files=[os.path.abspath(p) for p in paths], replace=True) as writer:
        for fi, path in enumerate(paths):
            for line, examples in read_examples(path, fmt_name, registry, on_error=on_error, report=report):
                for ex in examples:
                    feats = encoder.encode(ex)
                    if feats is None:
                        continue
                    writer.add(feats, fi, line)
                    buckets[length_bucket(len(feats["input_ids"]))] += 1
                    if len(texts) < 200:
                        texts.append(_example_text(ex))
                    if sample is None:
                        sample = _first_record(path, line)
            if log is not None:
                log(f"indexed {path}: {report.records} records so far")
        if not writer.n_examples:
            raise DataError(f"{', '.join(paths)}: no examples to index"
                            + (f"; {report.skipped_text()}" if report.skipped else ""))
        identity = encoder_identity(encoder)
        meta = {
            "language": language or guess_language(texts),
            "nlines": report.records - report.skipped,
            "nbytes": int(sum(os.path.getsize(p) for p in paths)),
            "length_distribute": buckets,
            "avg_token_per_line": round(writer.n_tokens / max(1, report.records - report.skipped), 3),
            "data_sample": sample,
            "tokenizer_model": tokenizer_model,
            "encoder": identity,
            "format": sorted({f for f in report.formats.values() if f}),
            "read": {"records": report.records, "examples": report.examples, "skipped": report.skipped,
                     "shown": [[b.path, b.line, b.problem] for b in report.shown]},
            "encode": _stats_json(encoder.stats),
        }
        full = writer.close(meta)
    if report.skipped and log is not None:
        log(report.skipped_text())
    return full


def _first_record(path: str, line: int) -> Any:
    from lmforge.data.readers import iter_records

    for n, record, _ in iter_records(path):
        if n == line:
            return record
    return None


def mix_entry(name: str, index_dir: str, meta: dict, weight: float = 1.0) -> dict[str, Any]:
    """A ``data.mix`` entry for an index (what ``lmforge data index`` prints)."""
    return {
        "dataset_name": name, "path": index_dir, "abs_weight": weight, "allow_repeat": False,
        "nlines": meta["num_examples"], "ave_tokens_per_line": round(meta["num_tokens"] / max(1, meta["num_examples"]), 3),
        "total_tokens": meta["num_tokens"],
    }

