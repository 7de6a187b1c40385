"""Reading training data: files -> records -> :class:`~lmforge.plugins.descriptors.Example`.

Pure Python. Files are streamed record by record, so memory stays flat however
large a file is: ``.jsonl`` (one JSON object a line), ``.json`` (a top-level
array, parsed incrementally), ``.txt`` (one document a line) and ``.gz`` of
each; a directory or a glob expands to the files in it. Every line is decoded
as strict UTF-8 on its own, so an invalid byte is reported on its own line.

The data format is detected per file from its first good record (or forced).
A bad record (malformed JSON, invalid UTF-8, a missing, mistyped or empty
field, an undetectable shape) is a :class:`BadRecord` naming file, line and
problem. With ``on_error="raise"`` (the default) the first one raises
:class:`DataError`; with ``on_error="skip"`` it is counted in a
:class:`ReadReport`, which keeps the first few for display. Nothing is dropped
silently.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

from lmforge.plugins.descriptors import DataFormat, Example, RecordError
from lmforge.errors import DataError

DATA_SUFFIXES = (".jsonl", ".json", ".txt", ".jsonl.gz", ".json.gz", ".txt.gz")
ON_ERROR = ("raise", "skip")
SHOWN_BAD_RECORDS = 5
_JSON_CHUNK = 1 << 20


@dataclass(frozen=True)
class BadRecord:
    """One unusable record: where it is and what is wrong with it."""

    path: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


@dataclass
class ReadReport:
    """What reading saw: records, examples, skipped bad records (the first few kept) and formats."""

    records: int = 0
    examples: int = 0
    skipped: int = 0
    shown: list[BadRecord] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)

    def add_bad(self, bad: BadRecord) -> None:
        self.skipped += 1
        if len(self.shown) < SHOWN_BAD_RECORDS:
            self.shown.append(bad)

    def merge(self, other: "ReadReport") -> None:
        self.records += other.records
        self.examples += other.examples
        self.skipped += other.skipped
        self.shown.extend(other.shown[: max(0, SHOWN_BAD_RECORDS - len(self.shown))])
        self.formats.update(other.formats)

    def skipped_text(self) -> str:
        """``"skipped N bad records; first K: ..."``, or ``""`` when none were skipped."""
        if not self.skipped:
            return ""
        lines = "\n  ".join(str(b) for b in self.shown)
        return f"skipped {self.skipped} bad record(s) (data.on_error: skip); first {len(self.shown)}:\n  {lines}"


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise DataError(f"data.on_error: expected one of {list(ON_ERROR)}, got {on_error!r}")


def raise_hint(bad: BadRecord | str) -> DataError:
    """The DataError for the first bad record in ``raise`` mode, with the way out."""
    return DataError(f"{bad} (fix the record, or set data.on_error: skip to skip and count bad records)")


# --------------------------------------------------------------------------
# files


def is_index_dir(path: str) -> bool:
    """True for a directory written by ``lmforge data index`` (read directly by training)."""
    from lmforge.data.tokenstore import is_store_dir

    return is_store_dir(path)


def expand_paths(spec: str | list[str], key: str = "data.train_file", *, allow_index: bool = False) -> list[str]:
    """Files named by a path, a list of paths, a directory (its data files, sorted) or a glob.

    With ``allow_index`` a directory written by ``lmforge data index`` is returned as
    itself instead of being searched for data files.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        if os.path.isdir(item):
            if allow_index and is_index_dir(item):
                out.append(item)
                continue
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(item)
                for name in names
                if name.endswith(DATA_SUFFIXES)
            )
            if not found:
                raise DataError(f"{key}: directory {item} holds no data files ({', '.join(DATA_SUFFIXES)})")
            out.extend(found)
        elif any(ch in item for ch in "*?["):
            found = sorted(p for p in glob.glob(item, recursive=True)
                           if os.path.isfile(p) or (allow_index and is_index_dir(p)))
            if not found:
                raise DataError(f"{key}: pattern {item!r} matches no file")
            out.extend(found)
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise DataError(f"{key}: {item}: no such file or directory")
    return out


def _open_binary(path: str) -> BinaryIO:
    try:
        return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open: {exc.strerror or exc}") from None


def file_kind(path: str) -> str:
    """``"txt"``, ``"json"`` or ``"jsonl"`` (the default for any other suffix)."""
    base = path[:-3] if path.endswith(".gz") else path
    if base.endswith(".txt"):
        return "txt"
    if base.endswith(".json"):
        return "json"
    return "jsonl"


# --------------------------------------------------------------------------
# records


def iter_records(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, record, problem)`` for every non-blank record of one file.

    ``problem`` is ``None`` for a good record, else what is wrong (invalid UTF-8,
    malformed JSON) and ``record`` is ``None``. A ``.txt`` record is the line's
    text. A ``.json`` array whose structure is broken cannot be read past the
    break, so that raises :class:`DataError` whatever the error policy.
    """
    kind = file_kind(path)
    if kind == "json":
        yield from _iter_json_array(path)
        return
    with _open_binary(path) as f:
        line_no = 0
        try:
            for raw in f:
                line_no += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield line_no, None, f"invalid UTF-8 ({exc.reason}) at byte {exc.start} of the line"
                    continue
                if line_no == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                text = text.strip()
                if not text:
                    continue
                if kind == "txt":
                    yield line_no, text, None
                    continue
                try:
                    yield line_no, json.loads(text), None
                except json.JSONDecodeError as exc:
                    yield line_no, None, f"malformed JSON: {exc.msg} (column {exc.colno})"
        except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
            raise DataError(f"{path}:{line_no + 1}: cannot read: {exc}") from None


def _iter_json_array(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """Stream the elements of a top-level JSON array with their starting line numbers.

    Reads 1 MiB chunks (more while one element is larger) so memory is bounded by
    the largest element, not the file.
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")("strict")
    buf = ""
    pos = 0  # parse position in buf
    line = 1  # line number at buf[counted]
    counted = 0
    eof = False

    with _open_binary(path) as f:

        def fill(at_least: int = _JSON_CHUNK) -> None:
            nonlocal buf, pos, counted, line, eof
            line += buf.count("\n", counted, pos)
            buf, counted = buf[pos:], 0
            pos = 0
            raw = f.read(max(at_least, _JSON_CHUNK))
            try:
                text = utf8.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                at = line + buf.count("\n") + raw[: exc.start].count(b"\n")
                raise DataError(f"{path}:{at}: invalid UTF-8 ({exc.reason}); a .json array cannot be read past it "
                                "(convert the file to .jsonl to skip single bad lines)") from None
            if not raw:
                eof = True
            buf += text

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    pos += 1
                if pos < len(buf) or eof:
                    return
                fill()

        def here() -> int:
            nonlocal line, counted
            line += buf.count("\n", counted, pos)
            counted = pos
            return line

        fill()
        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            raise DataError(f"{path}:{here()}: a .json data file must hold a JSON array of records")
        pos += 1
        skip_ws()
        if pos < len(buf) and buf[pos] == "]":
            return
        while True:
            start_line = here()
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if not eof:
                        fill(2 * (len(buf) - pos))
                        continue
                    at = start_line + buf.count("\n", pos, exc.pos)
                    raise DataError(f"{path}:{at}: malformed JSON: {exc.msg}; a .json array cannot be read past "
                                    "it (convert the file to .jsonl to skip single bad lines)") from None
                if end == len(buf) and not eof:  # a number or literal may continue in the next chunk
                    fill(2 * (len(buf) - pos))
                    continue
                break
            pos = end
            yield start_line, obj, None
            skip_ws()
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
                skip_ws()
                continue
            if pos < len(buf) and buf[pos] == "]":
                return
            raise DataError(f"{path}:{here()}: malformed JSON: expected ',' or ']' after an array element")


# --------------------------------------------------------------------------
# formats and examples


def detect_format(record: Any, formats: list[DataFormat], where: str) -> DataFormat:
    """The highest-priority format whose ``detect`` accepts ``record``; raises :class:`DataError`."""
    for fmt in sorted(formats, key=lambda f: -f.priority):
        try:
            if fmt.detect(record):
                return fmt
        except Exception:  # noqa: BLE001 - a detector that trips is just a no
            continue
    raise DataError(f"{where}: {undetectable(record, formats)}")


def undetectable(record: Any, formats: list[DataFormat]) -> str:
    if isinstance(record, dict):
        fields = ", ".join(sorted(record)) or "none"
        shapes = "; ".join(f"{f.name}: {{{', '.join(f.required_fields)}}}" for f in formats if f.required_fields)
        return f"cannot detect the data format from fields ({fields}); known formats: {shapes}"
    return f"cannot detect the data format of a JSON {type(record).__name__} record (expected an object)"


def formats_for(path: str, registry) -> list[DataFormat]:
    """The installed formats that read this kind of file (by suffix)."""
    kind = file_kind(path)
    return [f for f in registry.all("data_formats") if kind in {s.strip(".") for s in f.suffixes}]


def convert_record(fmt: DataFormat, record: Any) -> list[Example]:
    """``fmt.convert(record)``; a plugin's RecordError (or a type slip on a wrong shape) becomes RecordError."""
    try:
        examples = fmt.convert(record)
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise RecordError(f"{type(exc).__name__}: {exc}") from None
    if not examples:
        raise RecordError("the record holds no example")
    return examples


def read_examples(path: str, fmt_name: str = "auto", registry=None, *, on_error: str = "raise",
                  report: ReadReport | None = None) -> Iterator[tuple[int, list[Example]]]:
    """Stream ``(line, examples)`` per good record of one file (a ``packed`` line gives several).

    Examples carry ``source=(path, line)``, so samples of one packed line share
    it. Bad records raise :class:`DataError` (``on_error="raise"``) or are
    counted in ``report`` (``"skip"``).
    """
    from lmforge.plugins.registry import get_registry

    check_on_error(on_error)
    reg = registry or get_registry()
    report = report if report is not None else ReadReport()
    candidates = formats_for(path, reg)
    fmt: DataFormat | None = reg.data_format(fmt_name) if fmt_name != "auto" else None
    if fmt is None and file_kind(path) == "txt":
        if not candidates:
            raise DataError(f"{path}: no installed data format reads .txt files")
        fmt = max(candidates, key=lambda f: f.priority)
    if fmt is not None:
        report.formats[path] = fmt.name

    def bad(line_no: int, problem: str) -> None:
        b = BadRecord(path, line_no, problem)
        if on_error == "raise":
            raise raise_hint(b)
        report.add_bad(b)

    for line_no, record, problem in iter_records(path):
        report.records += 1
        if problem is not None:
            bad(line_no, problem)
            continue
        if fmt is None:
            try:
                fmt = detect_format(record, candidates, f"{path}:{line_no}")
            except DataError:
                bad(line_no, undetectable(record, candidates))
                continue
            report.formats[path] = fmt.name
        try:
            examples = convert_record(fmt, record)
        except RecordError as exc:
            bad(line_no, f"{exc} (format {fmt.name!r})")
            continue
        src = (path, line_no)
        out = [ex if ex.source == src else Example(messages=ex.messages, text=ex.text, source=src) for ex in examples]
        report.examples += len(out)
        yield line_no, out


def iter_examples(path: str, fmt_name: str = "auto", registry=None, *, on_error: str = "raise",
                  report: ReadReport | None = None) -> Iterator[Example]:
    """Stream the examples of one file (see :func:`read_examples`)."""
    for _, examples in read_examples(path, fmt_name, registry, on_error=on_error, report=report):
        yield from examples


def load_examples(spec: str | list[str], fmt_name: str = "auto", registry=None,
                  key: str = "data.train_file", *, on_error: str = "raise",
                  report: ReadReport | None = None) -> list[Example]:
    """All examples of the files named by ``spec`` in memory (small data, tests, ``inspect``).

    Training does not use this: it streams through the token cache
    (:func:`lmforge.data.prepare.prepare_dataset`). Raises :class:`DataError`.
    """
    report = report if report is not None else ReadReport()
    out: list[Example] = []
    for path in expand_paths(spec, key):
        out.extend(iter_examples(path, fmt_name, registry, on_error=on_error, report=report))
    if not out:
        raise DataError(f"{key}: no examples in {spec}" + (f"; {report.skipped_text()}" if report.skipped else ""))
    return out
