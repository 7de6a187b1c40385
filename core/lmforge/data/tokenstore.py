"""The on-disk layout of tokenized examples, shared by the token cache and ``lmforge data index``.

A token store is a directory::

    meta.json          counts, dtypes, how it was made (tokenizer, template, format) and stats
    input_ids.bin      every example's token ids, concatenated (uint16/uint32/int32)
    labels_mask.bin    one byte per token: 1 where the token is trained (labels = input_ids), else 0
    offsets.bin        int64, num_examples + 1: example i is tokens offsets[i]:offsets[i+1]
    sources.bin        int32 pairs (file index into meta["files"], line number) per example
    first_trained.bin  int32 per example: position of its first trained token (-1: none)

Arrays are raw little-endian binaries read with ``numpy.memmap``, so opening a
store costs nothing and training reads only the examples it draws: a corpus
larger than memory trains as easily as a small one. Stores are written into a
temporary sibling directory and renamed into place when complete, so a crash
never leaves a half-written store that looks valid.

Labels are kept as a mask because the default encoder's labels are the input
ids with prompt positions set to -100; an encoder whose labels are something
else raises :class:`UnstorableFeatures` and the caller tokenizes in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Iterable, Sequence

from lmforge.errors import DataError

STORE_KIND = "lmforge-token-store"
STORE_VERSION = 1
META = "meta.json"
IGNORE_INDEX = -100
_FLUSH_TOKENS = 1 << 20


class UnstorableFeatures(Exception):
    """An encoder produced features this layout cannot hold (labels that are not a mask of input_ids)."""


def is_store_dir(path: str) -> bool:
    meta = os.path.join(path, META)
    if not os.path.isfile(meta):
        return False
    try:
        with open(meta, encoding="utf-8") as f:
            return json.load(f).get("kind") == STORE_KIND
    except (OSError, ValueError):
        return False


def _np():
    import numpy as np

    return np


def staging_dir(path: str) -> str:
    """A new empty directory beside ``path`` (same filesystem) that a writer fills, then renames to ``path``."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    # not tempfile.mkdtemp: its 0700 mode would stay on the renamed store (os.makedirs follows the umask)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    return tmp


def id_dtype(vocab_size: int | None) -> str:
    """The smallest unsigned dtype that holds every token id."""
    if vocab_size is not None and vocab_size <= 1 << 16:
        return "uint16"
    return "uint32"


class TokenStoreWriter:
    """Streams examples into a new store at ``path``; :meth:`close` makes it appear atomically.

    Use as a context manager: leaving the block by an exception removes the
    partial store. ``add(features, file_index, line)`` takes an encoder's output
    dict (``input_ids`` and ``labels``).
    """

    def __init__(self, path: str, *, vocab_size: int | None = None, files: Sequence[str] = (),
                 replace: bool = False) -> None:
        self.path = path
        self.replace = replace
        self.tmp = staging_dir(path)
        self.dtype = id_dtype(vocab_size)
        self.files = list(files)
        self.n_examples = 0
        self.n_tokens = 0
        self.n_trained = 0
        self._ids: list[int] = []
        self._labels: list[int] = []
        self._offsets: list[int] = []
        self._sources: list[int] = []
        self._flushed_tokens = 0
        self._fh = {name: open(os.path.join(self.tmp, name), "wb")
                    for name in ("input_ids.bin", "labels_mask.bin", "offsets.bin", "sources.bin",
                                 "first_trained.bin")}
        self._fh["offsets.bin"].write(b"\0" * 8)  # offsets[0] = 0

    def __enter__(self) -> "TokenStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def add(self, features: dict[str, Any], file_index: int = 0, line: int = 0) -> None:
        ids = features["input_ids"]
        labels = features.get("labels", ids)
        if len(labels) != len(ids) or set(features) - {"input_ids", "labels", "attention_mask"}:
            raise UnstorableFeatures(f"features {sorted(features)} do not fit a token store")
        # buffered as lists; masks and checks are computed per megatoken with numpy in _flush
        self._ids.extend(ids)
        self._labels.extend(labels)
        self.n_tokens += len(ids)
        self.n_examples += 1
        self._offsets.append(self.n_tokens)
        self._sources.extend((file_index, line))
        if len(self._ids) >= _FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        np = _np()
        ends = np.asarray(self._offsets, dtype=np.int64)
        if len(ends):
            starts = np.concatenate([[self._flushed_tokens], ends[:-1]]) - self._flushed_tokens
            ends_local = ends - self._flushed_tokens
            ids = np.asarray(self._ids, dtype=np.int64)
            labels = np.asarray(self._labels, dtype=np.int64)
            mask = labels == ids
            if not (mask | (labels == IGNORE_INDEX)).all():
                raise UnstorableFeatures("labels differ from input_ids at a trained position")
            if len(ids):
                if ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max:
                    raise UnstorableFeatures(f"token id outside the {self.dtype} range")
            trained = np.flatnonzero(mask)
            pos = np.searchsorted(trained, starts)
            first = np.full(len(starts), -1, dtype=np.int64)
            hit = pos < len(trained)
            hit[hit] = trained[pos[hit]] < ends_local[hit]
            first[hit] = trained[pos[hit]] - starts[hit]
            self.n_trained += int(mask.sum())
            self._fh["input_ids.bin"].write(ids.astype(self.dtype).tobytes())
            self._fh["labels_mask.bin"].write(mask.astype(np.uint8).tobytes())
            self._fh["offsets.bin"].write(ends.tobytes())
            self._fh["first_trained.bin"].write(first.astype(np.int32).tobytes())
            self._flushed_tokens = int(ends[-1])
        self._fh["sources.bin"].write(np.asarray(self._sources, dtype=np.int32).tobytes())
        self._ids, self._labels, self._offsets, self._sources = [], [], [], []

    def close(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Flush, write ``meta.json`` (``meta`` plus the layout fields) and rename into place.

        An existing store at ``path`` is kept (the cache: another process wrote the same
        entry first) or, with ``replace=True``, swapped out (rebuilding an index). Returns the full meta.
        """
        self._flush()
        for fh in self._fh.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        full = dict(meta)
        full.update({
            "kind": STORE_KIND, "version": STORE_VERSION, "dtype": self.dtype,
            "num_examples": self.n_examples, "num_tokens": self.n_tokens, "num_trained_tokens": self.n_trained,
            "files": self.files,
        })
        with open(os.path.join(self.tmp, META), "w", encoding="utf-8") as f:
            json.dump(full, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(self.path):
            if is_store_dir(self.path) and not self.replace:  # lost a race to an identical store
                shutil.rmtree(self.tmp, ignore_errors=True)
                return full
            old = f"{self.tmp}.old"
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
            return full
        os.replace(self.tmp, self.path)
        return full

    def abort(self) -> None:
        for fh in self._fh.values():
            if not fh.closed:
                fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class TokenStore:
    """A store opened for reading; arrays are memory-mapped on first use.

    ``store[i]`` is ``{"input_ids": [...], "labels": [...]}``; ``lengths()`` the
    token count of every example (a numpy array); ``input_ids``,
    ``labels_mask``, ``offsets`` and ``sources`` the raw arrays, for code that
    builds its own batches (packing).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(os.path.join(path, META), encoding="utf-8") as f:
                self.meta = json.load(f)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable token store ({exc})") from None
        if self.meta.get("kind") != STORE_KIND:
            raise DataError(f"{path}: {META} is not an lmforge token store")
        if self.meta.get("version") != STORE_VERSION:
            raise DataError(f"{path}: token store version {self.meta.get('version')} is not "
                            f"{STORE_VERSION}; rebuild it with this lmforge")
        self._arrays: dict[str, Any] = {}

    def _array(self, name: str, dtype: str):
        arr = self._arrays.get(name)
        if arr is None:
            np = _np()
            file = os.path.join(self.path, name)
            arr = np.memmap(file, dtype=dtype, mode="r") if os.path.getsize(file) else np.zeros(0, dtype=dtype)
            self._arrays[name] = arr
        return arr

    def __getstate__(self) -> dict:
        # DataLoader workers started with spawn get the path, not a copy of the arrays
        return {"path": self.path, "meta": self.meta, "_arrays": {}}

    @property
    def input_ids(self):
        return self._array("input_ids.bin", self.meta["dtype"])

    @property
    def labels_mask(self):
        return self._array("labels_mask.bin", "uint8")

    @property
    def offsets(self):
        return self._array("offsets.bin", "int64")

    @property
    def sources(self):
        return self._array("sources.bin", "int32").reshape(-1, 2)

    @property
    def files(self) -> list[str]:
        return self.meta.get("files", [])

    def __len__(self) -> int:
        return int(self.meta["num_examples"])

    def lengths(self):
        return _np().diff(self.offsets)

    def first_trained(self):
        return self._array("first_trained.bin", "int32")

    def source(self, i: int) -> tuple[str, int]:
        f, line = self.sources[i]
        files = self.files
        return (files[f] if 0 <= f < len(files) else "?", int(line))

    def get(self, i: int, max_length: int | None = None, train_on_prompt: bool = False) -> dict[str, list[int]]:
        """Example ``i`` as ``input_ids``/``labels`` lists, cut to ``max_length`` tokens from the right."""
        np = _np()
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        if max_length is not None:
            b = min(b, a + max_length)
        ids = np.asarray(self.input_ids[a:b], dtype=np.int64)
        if train_on_prompt:
            labels = ids
        else:
            labels = np.where(self.labels_mask[a:b].astype(bool), ids, IGNORE_INDEX)
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.get(i)


class InMemoryStore:
    """The same reading interface over a list of feature dicts (encoders the store cannot hold)."""

    def __init__(self, features: list[dict], sources: Sequence[tuple[int, int]] = (), meta: dict | None = None,
                 files: Sequence[str] = ()) -> None:
        self.features = features
        self.meta = meta or {}
        self.files = list(files)
        np = _np()
        self.sources = (np.asarray(sources, dtype=np.int64).reshape(-1, 2) if len(sources)
                        else np.zeros((len(features), 2), dtype=np.int64))

    def source(self, i: int) -> tuple[str, int]:
        f, line = self.sources[i]
        return (self.files[f] if 0 <= f < len(self.files) else "?", int(line))

    def __len__(self) -> int:
        return len(self.features)

    def lengths(self):
        return _np().asarray([len(f["input_ids"]) for f in self.features], dtype="int64")

    def first_trained(self):
        return _np().asarray([next((n for n, lab in enumerate(f["labels"]) if lab != IGNORE_INDEX), -1)
                              for f in self.features], dtype="int64")

    def get(self, i: int, max_length: int | None = None, train_on_prompt: bool = False) -> dict:
        f = self.features[i]
        if max_length is None or len(f["input_ids"]) <= max_length:
            return f
        return {k: (v[:max_length] if isinstance(v, list) and len(v) == len(f["input_ids"]) else v)
                for k, v in f.items()}

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


class TokenDataset:
    """A map-style dataset over one or more stores, as ``transformers.Trainer`` wants it.

    Examples longer than ``max_length`` are cut from the right when read (stores
    built by ``lmforge data index`` keep whole documents); examples left with no
    trained token are left out (``dropped``). ``limit`` caps the size
    (``data.max_valid_examples``).
    """

    def __init__(self, stores: Iterable, max_length: int | None = None, train_on_prompt: bool = False,
                 limit: int | None = None) -> None:
        np = _np()
        self.stores = list(stores)
        self.max_length = max_length
        self.train_on_prompt = train_on_prompt
        sizes = [len(s) for s in self.stores]
        self._starts = np.cumsum([0] + sizes)
        self.truncated = 0
        self._keep = None
        self.dropped_sources: list[tuple[str, int]] = []
        if max_length is not None:
            self._scan_lengths(max_length)
        n = int(self._starts[-1]) if self._keep is None else len(self._keep)
        self._len = min(n, limit) if limit is not None else n
        self.limit = limit if limit is not None and limit < n else None

    def _scan_lengths(self, max_length: int, chunk: int = 1 << 22) -> None:
        np = _np()
        drop = []
        for si, store in enumerate(self.stores):
            n = len(store)
            for a in range(0, n, chunk):  # bounded memory on corpora of any size
                b = min(n, a + chunk)
                if isinstance(store, TokenStore):
                    lengths = np.diff(np.asarray(store.offsets[a:b + 1]))
                    first = np.asarray(store.first_trained()[a:b])
                else:
                    lengths, first = store.lengths()[a:b], store.first_trained()[a:b]
                self.truncated += int((lengths > max_length).sum())
                if self.train_on_prompt:
                    continue
                gone = np.nonzero((first < 0) | (first >= max_length))[0] + a
                if len(gone):
                    drop.append(gone + int(self._starts[si]))
                    for i in gone[: max(0, 5 - len(self.dropped_sources))].tolist():
                        self.dropped_sources.append(store.source(i))
        if drop:
            keep = np.ones(int(self._starts[-1]), dtype=bool)
            keep[np.concatenate(drop)] = False
            self._keep = np.nonzero(keep)[0]

    @property
    def dropped(self) -> int:
        return 0 if self._keep is None else int(self._starts[-1]) - len(self._keep)

    def __len__(self) -> int:
        return self._len

    def locate(self, idx: int) -> tuple[int, int]:
        """(store index, example index in that store) of dataset item ``idx``."""
        if idx < 0:
            idx += self._len
        if not 0 <= idx < self._len:
            raise IndexError(idx)
        if self._keep is not None:
            idx = int(self._keep[idx])
        si = int(_np().searchsorted(self._starts, idx, side="right")) - 1
        return si, idx - int(self._starts[si])

    def __getitem__(self, idx: int) -> dict:
        si, i = self.locate(idx)
        return self.stores[si].get(i, self.max_length, self.train_on_prompt)

    def lengths(self):
        """Token count of every item as read (cut to ``max_length``), without reading the tokens."""
        np = _np()
        parts = [np.asarray(s.lengths(), dtype=np.int64) for s in self.stores]
        allv = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if self.max_length is not None:
            allv = np.minimum(allv, self.max_length)
        if self._keep is not None:
            allv = allv[self._keep]
        return allv[: self._len]

    def line_groups(self) -> list[tuple[int, int, int]]:
        """Per item, the record it came from as ``(store, file, line)``: the samples of one
        ``packed`` line share a key (offline packing keeps them one row)."""
        np = _np()
        keys = [np.column_stack([np.full(len(s), si, dtype=np.int64), np.asarray(s.sources, dtype=np.int64)])
                for si, s in enumerate(self.stores)]
        allk = np.concatenate(keys) if keys else np.zeros((0, 3), dtype=np.int64)
        if self._keep is not None:
            allk = allk[self._keep]
        return [tuple(k) for k in allk[: self._len].tolist()]


# --------------------------------------------------------------------------
# raw records (datasets with a transform read records, not tokens)

RECORD_STORE_KIND = "lmforge-record-store"


class RecordStoreWriter:
    """Streams parsed records (as compact JSON) into a record store; atomic like :class:`TokenStoreWriter`."""

    def __init__(self, path: str, files: Sequence[str] = ()) -> None:
        self.path = path
        self.tmp = staging_dir(path)
        self.files = list(files)
        self.n = 0
        self.nbytes = 0
        self._offsets = [0]
        self._sources: list[int] = []
        self._data = open(os.path.join(self.tmp, "records.bin"), "wb")
        self._off = open(os.path.join(self.tmp, "offsets.bin"), "wb")
        self._src = open(os.path.join(self.tmp, "sources.bin"), "wb")

    def __enter__(self) -> "RecordStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for fh in (self._data, self._off, self._src):
                fh.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, record: Any, file_index: int, line: int) -> None:
        blob = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._data.write(blob)
        self.nbytes += len(blob)
        self.n += 1
        self._offsets.append(self.nbytes)
        self._sources.extend((file_index, line))
        if len(self._offsets) >= 65536:
            self._flush()

    def _flush(self) -> None:
        np = _np()
        self._off.write(np.asarray(self._offsets, dtype=np.int64).tobytes())
        self._src.write(np.asarray(self._sources, dtype=np.int32).tobytes())
        self._offsets, self._sources = [], []

    def close(self, meta: dict[str, Any]) -> None:
        self._flush()
        for fh in (self._data, self._off, self._src):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        full = dict(meta, kind=RECORD_STORE_KIND, version=STORE_VERSION, num_records=self.n, files=self.files)
        with open(os.path.join(self.tmp, META), "w", encoding="utf-8") as f:
            json.dump(full, f, ensure_ascii=False, indent=1)
        if os.path.exists(self.path):
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.replace(self.tmp, self.path)


def is_record_store(path: str) -> bool:
    try:
        with open(os.path.join(path, META), encoding="utf-8") as f:
            return json.load(f).get("kind") == RECORD_STORE_KIND
    except (OSError, ValueError):
        return False


class RecordStore:
    """Parsed records read back by row: ``store.get(i) -> (record, (file, line))``."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(os.path.join(path, META), encoding="utf-8") as f:
            self.meta = json.load(f)
        self._arrays: dict[str, Any] = {}

    def _array(self, name: str, dtype: str):
        arr = self._arrays.get(name)
        if arr is None:
            file = os.path.join(self.path, name)
            np = _np()
            arr = np.memmap(file, dtype=dtype, mode="r") if os.path.getsize(file) else np.zeros(0, dtype=dtype)
            self._arrays[name] = arr
        return arr

    def __getstate__(self) -> dict:
        return {"path": self.path, "meta": self.meta, "_arrays": {}}

    def __len__(self) -> int:
        return int(self.meta["num_records"])

    def get(self, i: int) -> tuple[Any, tuple[str, int]]:
        offsets = self._array("offsets.bin", "int64")
        a, b = int(offsets[i]), int(offsets[i + 1])
        record = json.loads(bytes(self._array("records.bin", "uint8")[a:b]).decode("utf-8"))
        f, line = self._array("sources.bin", "int32").reshape(-1, 2)[i]
        files = self.meta.get("files", [])
        return record, (files[f] if 0 <= f < len(files) else "?", int(line))
