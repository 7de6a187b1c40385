"""Weighted mixtures of datasets (``data.mix: mix.json``).

The mix file is a JSON list, one object per dataset::

    [{"dataset_name": "wiki", "path": "indexes/wiki", "abs_weight": 3, "allow_repeat": true,
      "nlines": 120000, "ave_tokens_per_line": 812.5, "total_tokens": 97500000,
      "transforms": "wiki_transform.py"}, ...]

``path`` is an index directory (``lmforge data index``) or data files (a file,
directory or glob, tokenized through the cache); relative paths are relative to
the mix file. ``abs_weight`` is a non-negative weight; draw probabilities are
the weights normalized over the datasets still in play. ``nlines``,
``ave_tokens_per_line`` and ``total_tokens`` are what ``lmforge data index``
prints; they are checked against the data and a mismatch is reported.
``transforms`` names a Python file defining ``transform(data, num_sample, rng)``
that rewrites each raw record as it is drawn (see :class:`TransformSource`).
``format`` optionally forces the dataset's data format.

Sampling (:class:`MixSchedule`): draw ``i`` of the mixture picks a dataset with
the weights, then that dataset's next example in a seeded pseudo-random order
(a fresh order each pass). Everything is a pure function of ``(seed, i)``, so
the mixture is a map-style dataset: the same seed gives the same sequence,
and a restarted job that skips the draws it already consumed (as
``transformers.Trainer`` does on resume) continues exactly where it stopped. A
dataset with ``allow_repeat: false`` that runs out leaves the mixture at that
draw, the remaining weights are renormalized, and this is reported; it is never
recycled. When every dataset has run out, the mixture ends there.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from lmforge.errors import ConfigError, DataError, did_you_mean

MIX_KEYS = ("dataset_name", "path", "abs_weight", "allow_repeat", "nlines", "ave_tokens_per_line",
            "total_tokens", "transforms", "format")
_CHUNK = 1 << 16
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class MixEntry:
    """One dataset of a mixture, as the mix file declares it (paths resolved)."""

    dataset_name: str
    path: str
    abs_weight: float
    allow_repeat: bool = False
    nlines: int | None = None
    ave_tokens_per_line: float | None = None
    total_tokens: int | None = None
    transforms: str | None = None
    format: str | None = None


def read_mix_file(path: str) -> list[MixEntry]:
    """Parse and check a mix file; errors name ``FILE[i].key``. Pure Python."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"data.mix: {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"data.mix: {path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"data.mix: {path}: invalid UTF-8 ({exc.reason})") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"data.mix: {path}: expected a non-empty JSON list of datasets")
    base = os.path.dirname(os.path.abspath(path))
    out: list[MixEntry] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"data.mix: {path}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected an object, got {type(item).__name__}")
        for key in item:
            if key not in MIX_KEYS:
                raise ConfigError(f"{where}.{key}: unknown key{did_you_mean(key, MIX_KEYS)}; "
                                  f"known keys: {', '.join(MIX_KEYS)}")
        for key in ("dataset_name", "path", "abs_weight"):
            if key not in item:
                raise ConfigError(f"{where}: missing key {key!r}")
        name = item["dataset_name"]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.dataset_name: expected a non-empty string")
        if name in names:
            raise ConfigError(f"{where}.dataset_name: {name!r} appears twice")
        names.add(name)
        weight = item["abs_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"{where}.abs_weight: expected a number >= 0, got {weight!r}")
        repeat = item.get("allow_repeat", False)
        if not isinstance(repeat, bool):
            raise ConfigError(f"{where}.allow_repeat: expected true or false, got {repeat!r}")
        for key, typ in (("nlines", int), ("total_tokens", int), ("ave_tokens_per_line", (int, float))):
            v = item.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, typ)):
                raise ConfigError(f"{where}.{key}: expected a number, got {v!r}")
        for key in ("path", "transforms", "format"):
            v = item.get(key)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{where}.{key}: expected a string, got {v!r}")
        transforms = item.get("transforms")
        if transforms:
            transforms = os.path.join(base, os.path.expanduser(transforms))
            if not os.path.isfile(transforms):
                raise ConfigError(f"{where}.transforms: {transforms}: no such file")
        out.append(MixEntry(
            dataset_name=name, path=os.path.join(base, os.path.expanduser(item["path"])), abs_weight=float(weight),
            allow_repeat=repeat, nlines=item.get("nlines"), ave_tokens_per_line=item.get("ave_tokens_per_line"),
            total_tokens=item.get("total_tokens"), transforms=transforms, format=item.get("format"),
        ))
    if sum(e.abs_weight for e in out) <= 0:
        raise ConfigError(f"data.mix: {path}: every abs_weight is 0")
    return out


def load_transform(path: str) -> Callable:
    """Import a transforms file and return its ``transform(data, num_sample, rng)``."""
    import importlib.util

    name = "lmforge_transform_" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"transforms: {path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: say which and why
        raise ConfigError(f"transforms: {path}: importing it failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, "transform", None)
    if not callable(fn):
        raise ConfigError(f"transforms: {path}: defines no function transform(data, num_sample, rng)")
    return fn


# --------------------------------------------------------------------------
# deterministic helpers


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed from integers (stable across processes, unlike ``hash``)."""
    x = 0
    for p in parts:
        x = _splitmix(x ^ (p & _MASK64))
    return x


def permute(i: int, n: int, key: int) -> int:
    """Position ``i`` of a pseudo-random permutation of ``range(n)`` chosen by ``key``.

    A 4-round Feistel network over the next even power of two, cycle-walking
    back into ``range(n)``: a true bijection in O(1) memory, so a dataset of any
    size is shuffled without materializing its order.
    """
    if n <= 1:
        return 0
    bits = max(2, (n - 1).bit_length())
    bits += bits & 1
    half = bits // 2
    mask = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for rnd in range(4):
            left, right = right, left ^ (_splitmix(key ^ (rnd << 56) ^ right) & mask)
        x = (left << half) | right
        if x < n:
            return x


class MixSchedule:
    """Which dataset, and which of its draws, mixture position ``i`` is.

    Positions are generated in chunks of 65,536 with a generator seeded by
    ``(seed, chunk)``; a pass at construction records each chunk's starting
    counts, so :meth:`lookup` regenerates only the chunk it needs.
    """

    def __init__(self, weights: Sequence[float], sizes: Sequence[int], allow_repeat: Sequence[bool], seed: int,
                 total: int, chunk: int = _CHUNK) -> None:
        import numpy as np

        self.np = np
        self.weights = np.asarray(weights, dtype=np.float64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.repeat = np.asarray(allow_repeat, dtype=bool)
        self.seed = int(seed)
        self.chunk = chunk
        self.exhausted: list[tuple[int, int]] = []  # (position, dataset) when a non-repeating dataset ran out
        k = len(self.weights)
        counts = np.zeros(k, dtype=np.int64)
        active = (self.weights > 0) & (self.sizes > 0)
        self._starts: list[tuple[Any, Any]] = []
        self.total = 0
        pos = 0
        while pos < total and active.any():
            self._starts.append((counts.copy(), active.copy()))
            n = min(chunk, total - pos)
            choices, counts, active, events = self._generate(len(self._starts) - 1, counts, active, n)
            self.exhausted.extend((pos + p, d) for p, d in events)
            pos += len(choices)
            if len(choices) < n:
                break
        self.total = pos
        self.final_counts = counts
        self._cache: OrderedDict[int, tuple[Any, Any]] = OrderedDict()

    def _generate(self, c: int, counts, active, n: int):
        np = self.np
        rng = np.random.Generator(np.random.PCG64([self.seed & _MASK64, c]))
        counts, active = counts.copy(), active.copy()
        out = np.empty(n, dtype=np.int32)
        events: list[tuple[int, int]] = []
        pos = 0
        while pos < n and active.any():
            p = np.where(active, self.weights, 0.0)
            draw = rng.choice(len(p), size=n - pos, p=p / p.sum())
            cut = len(draw)
            for d in np.nonzero(active & ~self.repeat)[0]:
                left = int(self.sizes[d] - counts[d])
                occ = np.flatnonzero(draw == d)
                if len(occ) > left:
                    cut = min(cut, int(occ[left]))
            take = draw[:cut]
            out[pos:pos + cut] = take
            counts += np.bincount(take, minlength=len(counts))
            pos += cut
            if cut < len(draw):
                for d in np.nonzero(active & ~self.repeat & (counts >= self.sizes))[0]:
                    active[d] = False
                    events.append((pos, int(d)))
        return out[:pos], counts, active, events

    def _chunk(self, c: int):
        hit = self._cache.get(c)
        if hit is not None:
            self._cache.move_to_end(c)
            return hit
        np = self.np
        counts, active = self._starts[c]
        n = min(self.chunk, self.total - c * self.chunk)
        choices, _, _, _ = self._generate(c, counts, active, n)
        local = np.empty(len(choices), dtype=np.int64)
        for d in range(len(self.weights)):
            idx = np.flatnonzero(choices == d)
            local[idx] = counts[d] + np.arange(len(idx))
        self._cache[c] = (choices, local)
        if len(self._cache) > 4:
            self._cache.popitem(last=False)
        return choices, local

    def lookup(self, i: int) -> tuple[int, int]:
        """``(dataset, n)``: position ``i`` is the ``n``-th draw (0-based, repeats counted) of ``dataset``."""
        if not 0 <= i < self.total:
            raise IndexError(i)
        c, r = divmod(i, self.chunk)
        choices, local = self._chunk(c)
        return int(choices[r]), int(local[r])

    def row(self, dataset: int, n: int) -> int:
        """The dataset row of its ``n``-th draw: a fresh seeded order for every pass over the dataset."""
        size = int(self.sizes[dataset])
        epoch, r = divmod(n, size)
        return permute(r, size, derive_seed(self.seed, dataset, epoch))


# --------------------------------------------------------------------------
# sources and the dataset


class TransformSource:
    """Raw records read back from a record store, rewritten by the user's ``transform`` when drawn.

    ``transform(data, num_sample, rng)`` receives a copy of the parsed record
    (a dict, or the line for ``.txt``), ``num_sample``: how many draws of this
    dataset came before this one (repeats counted), and ``rng``: a
    ``random.Random`` seeded from (seed, dataset, num_sample), so a draw is the
    same in every run. It returns a record of any data format, which is
    converted and tokenized on the spot.
    """

    def __init__(self, records, transform: Callable, encoder, fmt_name: str, registry, name: str) -> None:
        self.records = records
        self.transform = transform
        self.encoder = encoder
        self.fmt_name = fmt_name
        self.registry = registry
        self.name = name
        self._warned = False

    def __len__(self) -> int:
        return len(self.records)

    def get(self, row: int, num_sample: int, rng: random.Random) -> dict | None:
        from lmforge.data.readers import convert_record, detect_format
        from lmforge.plugins.descriptors import RecordError

        record, (path, line) = self.records.get(row)
        where = f"{path}:{line} (dataset {self.name!r}, after transform)"
        try:
            data = self.transform(record, num_sample, rng)
        except Exception as exc:  # noqa: BLE001 - the user's code: point at it and the record
            raise DataError(f"{path}:{line}: transform of dataset {self.name!r} failed: "
                            f"{type(exc).__name__}: {exc}") from None
        reg = self.registry
        fmt = (reg.data_format(self.fmt_name) if self.fmt_name != "auto"
               else detect_format(data, reg.all("data_formats"), where))
        try:
            examples = convert_record(fmt, data)
        except RecordError as exc:
            raise DataError(f"{where}: {exc} (format {fmt.name!r})") from None
        if len(examples) != 1:
            raise DataError(f"{where}: a transformed record must make one example, it makes {len(examples)}")
        return self.encoder.encode(examples[0])

    def draw(self, row: int, num_sample: int, rng: random.Random) -> dict:
        """Features of ``row`` after the transform; a record with no trained token left after
        truncation is replaced by the next row (reported once per dataset)."""
        for step in range(len(self)):
            feats = self.get((row + step) % len(self), num_sample, rng)
            if feats is not None:
                return feats
            if not self._warned:
                self._warned = True
                import sys

                print(f"[lmforge] warning: dataset {self.name!r}: a transformed record has no trained token "
                      "within max_length; the next record is used instead", file=sys.stderr, flush=True)
        raise DataError(f"dataset {self.name!r}: no transformed record keeps a trained token within max_length")


class MixtureDataset:
    """A map-style dataset: item ``i`` is mixture draw ``i`` (see the module docstring)."""

    def __init__(self, entries: Sequence[MixEntry], sources: Sequence[Any], seed: int, total: int) -> None:
        self.entries = list(entries)
        self.sources = list(sources)
        self.seed = seed
        sizes = [len(s) for s in self.sources]
        self.schedule = MixSchedule([e.abs_weight for e in self.entries], sizes,
                                    [e.allow_repeat for e in self.entries], seed, total)

    def __len__(self) -> int:
        return self.schedule.total

    def draw(self, i: int) -> tuple[int, int, int]:
        """``(dataset, n, row)`` of position ``i``."""
        d, n = self.schedule.lookup(i)
        return d, n, self.schedule.row(d, n)

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        d, n, row = self.draw(i)
        src = self.sources[d]
        if isinstance(src, TransformSource):
            return src.draw(row, n, random.Random(derive_seed(self.seed, d, n)))
        return src[row]

    def line_groups(self):
        raise ConfigError("data.online_packing: false keeps the rows of an offline-packed file; it does not apply "
                          "to a data.mix mixture (use online packing)")

    def summary(self) -> str:
        total_w = sum(e.abs_weight for e in self.entries) or 1.0
        lines = [f"mixture of {len(self.entries)} datasets, {len(self)} draws (seed {self.seed}):"]
        for d, e in enumerate(self.entries):
            drawn = int(self.schedule.final_counts[d])
            size = len(self.sources[d])
            passes = drawn / size if size else 0.0
            lines.append(f"  {e.dataset_name}: weight {e.abs_weight / total_w:.3f}, {size} examples, "
                         f"{drawn} draws ({passes:.2f} passes){', repeats allowed' if e.allow_repeat else ''}")
        for pos, d in self.schedule.exhausted:
            e = self.entries[d]
            lines.append(f"  warning: dataset {e.dataset_name!r} (allow_repeat: false) ran out at draw {pos} after "
                         f"{len(self.sources[d])} examples; it is left out of the rest of the mixture "
                         "(set allow_repeat: true to recycle it)")
        return "\n".join(lines)
