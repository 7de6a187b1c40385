"""Property-based fuzzing of every data format reader (hypothesis).

For every installed data format and every file kind it reads (.jsonl, .json
array, .txt, gzip), arbitrary records -- random JSON values, records with the
format's required fields holding random values, raw bytes -- must end in one of
three ways: good examples, a :class:`DataError` naming ``file:line`` (raise
mode), or a counted skip (skip mode). Never another exception, and never an
example that is silently wrong (empty, mistyped, without a trained part).

The number of records fuzzed is printed (``pytest -s``) and quoted in
docs/reliability.md.
"""

from __future__ import annotations

import atexit
import gzip
import json
import os
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lmforge.data.readers import ReadReport, load_examples  # noqa: E402
from lmforge.plugins.descriptors import Example  # noqa: E402
from lmforge.data.encoding import bounded_ids  # noqa: E402
from lmforge.errors import DataError  # noqa: E402
from lmforge.plugins.registry import get_registry  # noqa: E402

EXAMPLES = int(os.environ.get("LMFORGE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COUNT = {"records": 0}
atexit.register(lambda: COUNT["records"] and print(f"\n[fuzz] records fuzzed: {COUNT['records']}"))

ROLES = {"system", "user", "assistant"}
FORMATS = sorted(get_registry().names("data_formats"))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=20), st.sampled_from(["", " ", "\n", "\x00", "user", "assistant", "gpt"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
# keys a format may look for, so fuzzed records reach past detection into convert
FIELD_NAMES = ["input", "output", "instruction", "target", "text", "title", "content", "messages", "conversations",
               "role", "content", "from", "value", "src", "tgt", "history", "system"]
message = st.fixed_dictionaries({}, optional={k: st.one_of(scalars, json_values)
                                              for k in ("role", "content", "from", "value")})
shaped = st.dictionaries(st.sampled_from(FIELD_NAMES),
                         st.one_of(scalars, json_values, st.lists(message, max_size=4),
                                   st.lists(st.text(max_size=10), max_size=3)), max_size=5)
records = st.one_of(shaped, json_values)


def check_example(ex: Example, where: str) -> None:
    """What a correct example looks like, whatever the format."""
    assert isinstance(ex, Example), where
    assert ex.source is not None and ex.source[1] >= 1, where
    if ex.text is not None:
        assert isinstance(ex.text, str) and ex.text.strip(), f"{where}: empty pretraining text"
        return
    assert ex.messages, f"{where}: no messages"
    for m in ex.messages:
        assert m.role in ROLES and isinstance(m.content, str), f"{where}: bad message {m!r}"
    assert any(m.role == "assistant" and m.content.strip() for m in ex.messages), f"{where}: nothing to train on"


def outcome(path: str, fmt: str, n_records: int) -> None:
    """Read ``path`` both ways; assert the reader's contract."""
    COUNT["records"] += n_records
    # raise mode: examples, or a DataError naming the file (and a line, or the array's break)
    try:
        exs = load_examples(path, fmt)
    except DataError as exc:
        assert str(exc).startswith((f"{path}:", "data.train_file: no examples")), str(exc)
    else:
        for ex in exs:
            check_example(ex, path)
    # skip mode: bad records are counted, good ones are correct; only a broken .json array still stops
    report = ReadReport()
    try:
        exs = load_examples(path, fmt, on_error="skip", report=report)
    except DataError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}:") or msg.startswith("data.train_file: no examples"), msg
        return
    assert report.records == report.skipped + len({e.source for e in exs}) or fmt == "packed"
    for ex in exs:
        check_example(ex, path)


def _write(tmp: str, name: str, data: bytes) -> str:
    path = os.path.join(tmp, name)
    if name.endswith(".gz"):
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("fmt", ["auto", *FORMATS])
@FUZZ
@given(recs=st.lists(records, min_size=1, max_size=4))
def test_jsonl_records_of_any_shape(fmt, recs):
    reg = get_registry()
    if fmt != "auto" and "jsonl" not in {s.strip(".") for s in reg.data_format(fmt).suffixes}:
        pytest.skip(f"{fmt} does not read .jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")
        outcome(_write(tmp, "d.jsonl", body), fmt, len(recs))
        outcome(_write(tmp, "d.jsonl.gz", body), fmt, len(recs))


@FUZZ
@given(recs=st.lists(records, min_size=1, max_size=4), cut=st.integers(0, 200))
def test_json_arrays_whole_and_cut_short(recs, cut):
    with tempfile.TemporaryDirectory() as tmp:
        text = json.dumps(recs, indent=1, ensure_ascii=False)
        outcome(_write(tmp, "d.json", text.encode("utf-8")), "auto", len(recs))
        # a truncated array: a named error (the structure is broken), or what was complete before the cut
        outcome(_write(tmp, "e.json", text[: max(1, len(text) - cut)].encode("utf-8")), "auto", len(recs))


@FUZZ
@given(lines=st.lists(st.binary(max_size=40), min_size=1, max_size=5))
def test_raw_bytes_in_every_line_reader(lines):
    with tempfile.TemporaryDirectory() as tmp:
        data = b"\n".join(lines) + b"\n"
        for name in ("d.jsonl", "d.txt", "d.txt.gz"):
            outcome(_write(tmp, name, data), "auto", len(lines))


@FUZZ
@given(data=st.binary(min_size=1, max_size=120))
def test_corrupt_gzip_is_a_named_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.jsonl.gz")
        with open(path, "wb") as f:  # not gzip-compressed: a corrupt .gz
            f.write(b"\x1f\x8b" + data)
        outcome(path, "auto", 1)


# ------------------------------------------------------------- bounded tokenization keeps the same ids

words = st.lists(st.sampled_from(["alpha", "beta", "12", "苹果", "x", "plus", " ", "\n", "is", "=", "ünï"]),
                 min_size=0, max_size=400).map(" ".join)


@FUZZ
@given(text=words, limit=st.integers(1, 40))
def test_bounded_tokenization_equals_whole_then_cut(text, limit):
    from lmforge.data.prepare import encoder_for_model

    global _ENC
    try:
        enc = _ENC
    except NameError:
        enc = _ENC = encoder_for_model("tiny-llama", max_length=10**9)
    whole = enc._encode_text(text)
    COUNT["records"] += 1
    assert bounded_ids(enc._encode_text, text, limit) == whole[:limit]
