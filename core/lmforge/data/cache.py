"""The token cache: each data file is tokenized once per (content, tokenizer, template, format, max_length).

Where: ``data.cache_dir`` when set, else ``$LMFORGE_CACHE_DIR``, else
``$XDG_CACHE_HOME/lmforge/data``, else ``~/.cache/lmforge/data``. One entry per
file, under ``tokens/<key>/``, in the :mod:`lmforge.data.tokenstore` layout
(memory-mapped when read). The key is a SHA-256 over:

- the file's content (SHA-256 of its bytes; renaming or touching a file does not
  invalidate, editing it does);
- the encoder's identity: encoder class, family name, chat template, the
  tokenizer's fingerprint (its serialized vocabulary, merges, normalizer and
  special tokens), ``train_on_prompt``, and ``encoder.cache_identity()`` when a
  family encoder defines it;
- the requested format, the versions of the installed data-format plugins,
  ``max_length`` and the store layout version.

Entries are written atomically (a temporary directory renamed into place) under
a per-entry file lock, so several processes of one job tokenize a file once.
Bad records skipped under ``data.on_error: skip`` are recorded in the entry: a
later run with ``on_error: raise`` on the same file still fails on them.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

from lmforge import __version__
from lmforge.data.readers import BadRecord, ReadReport, raise_hint, read_examples
from lmforge.data.encoding import EncodeStats
from lmforge.errors import DataError
from lmforge.data.tokenstore import STORE_VERSION, InMemoryStore, TokenStore, TokenStoreWriter, UnstorableFeatures, is_store_dir

ENV_CACHE_DIR = "LMFORGE_CACHE_DIR"


def default_cache_dir() -> str:
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return os.path.expanduser(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "lmforge", "data")


def cache_dir_for(configured: str | None) -> str:
    return os.path.expanduser(configured) if configured else default_cache_dir()


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(chunk)
                if not block:
                    break
                h.update(block)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in a tokenizer that changes token ids (not the pad token: padding is not stored)."""
    size = _vocab_size(tokenizer)
    cached = getattr(tokenizer, "_lmforge_fingerprint", None)
    if cached is not None and cached[0] == size:  # memoized; adding tokens changes the size
        return cached[1]
    h = hashlib.sha256(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    elif hasattr(tokenizer, "get_vocab"):
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    else:  # an unknown tokenizer object: only its class identifies it
        h.update(repr(getattr(tokenizer, "__dict__", {}).keys()).encode())
    specials = {k: str(getattr(tokenizer, k, None)) for k in ("bos_token", "eos_token", "unk_token")}
    specials["added"] = sorted(str(t) for t in (getattr(tokenizer, "additional_special_tokens", None) or []))
    h.update(json.dumps(specials, sort_keys=True).encode())
    fp = h.hexdigest()
    try:
        tokenizer._lmforge_fingerprint = (size, fp)
    except Exception:  # noqa: BLE001 - a read-only object just is not memoized
        pass
    return fp


def encoder_identity(encoder: Any) -> dict[str, Any]:
    """What an encoder's output depends on, besides the text and ``max_length``."""
    family = encoder.family
    ident: dict[str, Any] = {
        "encoder": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "family": family.name if family is not None else None,
        "template": repr(encoder.template),
        "tokenizer": tokenizer_fingerprint(encoder.tokenizer),
        "train_on_prompt": bool(encoder.train_on_prompt),
    }
    extra = encoder.cache_identity()
    if extra:
        ident["extra"] = extra
    return ident


def format_plugins_identity(registry) -> list[str]:
    seen = set()
    for name in registry.names("data_formats"):
        rec = registry.plugin_of("data_formats", name)
        seen.add(f"{rec.distribution}=={rec.version}")
    return sorted(seen)


def cache_key(content_sha: str, identity: dict, fmt_name: str, max_length: int | None, registry) -> str:
    payload = {
        "content": content_sha, "encoder": identity, "format": fmt_name, "max_length": max_length,
        "format_plugins": format_plugins_identity(registry), "store": STORE_VERSION, "lmforge": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``); a no-op where that is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass
class FileResult:
    """One tokenized file: its store, whether it came from the cache, and what reading/encoding saw."""

    path: str
    store: Any
    cache_hit: bool
    report: ReadReport
    encode: EncodeStats
    format: str | None = None
    meta: dict = field(default_factory=dict)


_TEMP_DIRS: list[str] = []


def _temp_store_dir() -> str:
    if not _TEMP_DIRS:
        _TEMP_DIRS.append(tempfile.mkdtemp(prefix="lmforge-tokens-"))
        atexit.register(shutil.rmtree, _TEMP_DIRS[0], True)
    return os.path.join(_TEMP_DIRS[0], os.urandom(8).hex())


def tokenize_file(path: str, encoder: Any, *, fmt_name: str = "auto", on_error: str = "raise", registry=None,
                  cache_dir: str | None = None, use_cache: bool = True) -> FileResult:
    """Tokenize one data file into a token store, or open the cached one.

    On a cache hit nothing is parsed or tokenized (only the file is hashed).
    Raises :class:`DataError` for the first bad record when ``on_error`` is
    ``raise`` (also when the cached entry recorded skipped records).
    """
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    max_length = encoder.max_length
    if not use_cache:
        return _build(path, encoder, fmt_name, on_error, reg, _temp_store_dir(), {})
    sha = file_sha256(path)
    identity = encoder_identity(encoder)
    key = cache_key(sha, identity, fmt_name, max_length, reg)
    entry = os.path.join(cache_dir_for(cache_dir), "tokens", key)
    meta = {"source": {"path": os.path.abspath(path), "sha256": sha, "size": os.path.getsize(path)},
            "requested_format": fmt_name, "encoder": identity, "max_length": max_length}
    if not is_store_dir(entry):
        with file_lock(entry + ".lock"):
            if not is_store_dir(entry):
                result = _build(path, encoder, fmt_name, on_error, reg, entry, meta)
                with contextlib.suppress(OSError):
                    os.remove(entry + ".lock")
                return result
    return _open_hit(path, entry, on_error)


def _open_hit(path: str, entry: str, on_error: str) -> FileResult:
    store = TokenStore(entry)
    m = store.meta
    report = ReadReport(records=m["read"]["records"], examples=m["read"]["examples"], skipped=m["read"]["skipped"],
                        shown=[BadRecord(path, line, problem) for _, line, problem in m["read"]["shown"]],
                        formats={path: m.get("format")})
    if on_error == "raise" and report.skipped:
        raise raise_hint(report.shown[0])
    enc = EncodeStats(**{k: v for k, v in m["encode"].items() if k != "dropped_sources"})
    enc.dropped_sources = [tuple(s) for s in m["encode"].get("dropped_sources", [])]
    return FileResult(path, store, True, report, enc, m.get("format"), m)


def _build(path: str, encoder: Any, fmt_name: str, on_error: str, reg, entry: str, meta: dict) -> FileResult:
    report = ReadReport()
    saved = encoder.stats
    encoder.stats = EncodeStats()
    try:
        try:
            with TokenStoreWriter(entry, vocab_size=_vocab_size(encoder.tokenizer),
                                  files=[os.path.abspath(path)]) as writer:
                for line, examples in read_examples(path, fmt_name, reg, on_error=on_error, report=report):
                    for ex in examples:
                        feats = encoder.encode(ex)
                        if feats is not None:
                            writer.add(feats, 0, line)
                meta = dict(meta, format=report.formats.get(path), read=_report_json(report),
                            encode=_stats_json(encoder.stats))
                full = writer.close(meta)
            store = TokenStore(entry)
            return FileResult(path, store, False, report, encoder.stats, full.get("format"), full)
        except UnstorableFeatures:
            # a family encoder with extra features: tokenize in memory instead (not cached)
            report = ReadReport()
            encoder.stats = EncodeStats()
            feats_list, sources = [], []
            for line, examples in read_examples(path, fmt_name, reg, on_error=on_error, report=report):
                for ex in examples:
                    feats = encoder.encode(ex)
                    if feats is not None:
                        feats_list.append(feats)
                        sources.append((0, line))
            store = InMemoryStore(feats_list, sources, files=[os.path.abspath(path)])
            return FileResult(path, store, False, report, encoder.stats, report.formats.get(path), {})
    finally:
        if saved is not None:
            encoder.stats = saved


def _vocab_size(tokenizer: Any) -> int | None:
    try:
        return len(tokenizer)
    except TypeError:
        return getattr(tokenizer, "vocab_size", None)


def _report_json(report: ReadReport) -> dict:
    return {"records": report.records, "examples": report.examples, "skipped": report.skipped,
            "shown": [[b.path, b.line, b.problem] for b in report.shown]}


def _stats_json(stats: EncodeStats) -> dict:
    return {"examples": stats.examples, "truncated": stats.truncated, "dropped": stats.dropped,
            "tokens": stats.tokens, "trainable_tokens": stats.trainable_tokens,
            "dropped_sources": [list(s) for s in stats.dropped_sources if s]}


def record_store(paths: list[str], *, on_error: str = "raise", cache_dir: str | None = None,
                 use_cache: bool = True) -> tuple[Any, ReadReport]:
    """The parsed records of ``paths`` in a memory-mapped :class:`~lmforge.data.tokenstore.RecordStore`.

    For datasets whose ``transform`` needs raw records; keyed by the files' contents only.
    """
    from lmforge.data.readers import iter_records
    from lmforge.data.tokenstore import RecordStore, RecordStoreWriter, is_record_store

    shas = [file_sha256(p) for p in paths]
    key = hashlib.sha256(json.dumps({"records": shas, "store": STORE_VERSION}).encode()).hexdigest()
    entry = (os.path.join(cache_dir_for(cache_dir), "records", key) if use_cache else _temp_store_dir())
    report = ReadReport()
    with file_lock(entry + ".lock"):
        if not is_record_store(entry):
            with RecordStoreWriter(entry, files=[os.path.abspath(p) for p in paths]) as writer:
                for fi, path in enumerate(paths):
                    for line, record, problem in iter_records(path):
                        report.records += 1
                        if problem is not None:
                            bad = BadRecord(path, line, problem)
                            if on_error == "raise":
                                raise raise_hint(bad)
                            report.add_bad(bad)
                            continue
                        writer.add(record, fi, line)
                writer.close({"read": _report_json(report)})
        else:
            with open(os.path.join(entry, "meta.json"), encoding="utf-8") as f:
                r = json.load(f)["read"]
            report = ReadReport(records=r["records"], skipped=r["skipped"],
                                shown=[BadRecord(*b) for b in r["shown"]])
            if on_error == "raise" and report.skipped:
                raise raise_hint(report.shown[0])
    return RecordStore(entry), report
