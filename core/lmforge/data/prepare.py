"""A job's ``data:`` section -> training and validation datasets, before any weights are loaded.

:func:`prepare_job_data` is what ``run_training`` calls right after the config
is validated. It loads the tokenizer alone (cheap, no weights), then reads,
validates and tokenizes every file through the token cache
(:mod:`lmforge.data.cache`), opens index directories (``lmforge data index``)
and builds weighted mixtures (``data.mix``, :mod:`lmforge.data.mixing`). A bad
record therefore stops the job in seconds, before the model is loaded, and a
second run over the same data does no tokenization at all.

Datasets are map-style and memory-mapped: training reads only the examples it
draws, so corpora larger than memory work.

When a family's tokenizer cannot be loaded without its model (a custom loader
that ``AutoTokenizer`` does not understand), records are still parsed and
validated up front and tokenization happens once the model's tokenizer is
there. When the model's tokenizer turns out to differ from the one loaded
alone, the data is tokenized again with the model's (the cache keys them apart).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from lmforge.data.readers import ReadReport, expand_paths, is_index_dir, read_examples
from lmforge.data.encoding import EncodeStats
from lmforge.errors import DataError, LmforgeError

Log = Callable[[str], None]


def _stderr_log(msg: str) -> None:
    print(f"[lmforge] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# tokenizers and encoders without the model


def load_tokenizer(source, trust_remote_code: bool = False):
    """The tokenizer of a resolved model, loaded without weights (:func:`lmforge.modeling.loading.load_tokenizer`)."""
    from lmforge.modeling.loading import load_tokenizer as _load

    return _load(source, trust_remote_code)


def encoder_for_model(model: str, *, max_length: int | None = None, train_on_prompt: bool = False,
                      template: str = "family", trust_remote_code: bool = False, registry=None):
    """An encoder for a preset or checkpoint directory without loading weights (``lmforge data``)."""
    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import resolve_model

    source = resolve_model(model, registry=registry)
    tok = load_tokenizer(source, trust_remote_code)
    return make_encoder(tok, source.family, max_length=max_length if max_length is not None else sys.maxsize,
                        train_on_prompt=train_on_prompt, template=template)


def job_encoder(cfg: Mapping, tokenizer, family):
    from lmforge.data.encoding import make_encoder

    return make_encoder(tokenizer, family, max_length=cfg["max_length"],
                        train_on_prompt=cfg["data"]["train_on_prompt"], template=cfg["data"]["template"])


# --------------------------------------------------------------------------
# one split


@dataclass
class SplitReport:
    """What preparing one split saw, summed over its files."""

    files: int = 0
    cache_hits: int = 0
    indexes: int = 0
    read: ReadReport = field(default_factory=ReadReport)
    encode: EncodeStats = field(default_factory=EncodeStats)

    def lines(self, what: str, dataset) -> list[str]:
        formats = sorted({f for f in self.read.formats.values() if f})
        capped = getattr(dataset, "limit", None)
        out = [f"{what}: {len(dataset)} examples" + (" (data.max_valid_examples)" if capped else "")
               + f" from {self.files} file(s)"
               + (f" ({self.cache_hits} from the token cache)" if self.cache_hits else "")
               + (f", {self.indexes} index(es)" if self.indexes else "")
               + (f"; format {', '.join(formats)}" if formats else "")]
        e = self.encode
        if self.files > self.indexes:
            out.append(f"{what} tokenized: {e.summary()}")
        truncated = getattr(dataset, "truncated", 0)
        dropped = getattr(dataset, "dropped", 0)
        if truncated or dropped:
            out.append(f"{what}: {truncated} indexed example(s) longer than max_length are cut from the right, "
                       f"{dropped} left out (no trained token within max_length)")
        if e.dropped_sources:
            out.append(f"{what}: dropped examples include " + ", ".join(f"{p}:{n}" for p, n in e.dropped_sources))
        if self.read.skipped:
            out.append(f"{what}: {self.read.skipped_text()}")
        return out


def open_index(path: str, encoder, key: str):
    """A token store written by ``lmforge data index``, checked against the job's tokenizer and template."""
    from lmforge.data.cache import encoder_identity
    from lmforge.data.tokenstore import TokenStore

    store = TokenStore(path)
    built = store.meta.get("encoder") or {}
    mine = encoder_identity(encoder)
    for field_name in ("tokenizer", "template", "encoder", "extra"):
        if built.get(field_name) != mine.get(field_name):
            what = {"tokenizer": "tokenizer", "template": "chat template", "encoder": "encoder class",
                    "extra": "encoder settings"}[field_name]
            raise DataError(f"{key}: {path} was indexed with a different {what} than this job's model uses "
                            f"(index built for {store.meta.get('tokenizer_model')!r}); rebuild it with "
                            f"`lmforge data index ... --tokenizer MODEL` for this model")
    return store


def prepare_split(cfg: Mapping, encoder, split: str = "train", registry=None) -> tuple[Any, SplitReport]:
    """Tokenize (or open from cache/index) the files of ``data.train_file`` or ``data.valid_file``."""
    from lmforge.data.cache import tokenize_file
    from lmforge.data.tokenstore import TokenDataset

    data = cfg["data"]
    key = f"data.{split}_file"
    paths = expand_paths(data[f"{split}_file"], key, allow_index=True)
    rep = SplitReport()
    stores = []
    for path in paths:
        rep.files += 1
        if is_index_dir(path):
            rep.indexes += 1
            stores.append(open_index(path, encoder, key))
            continue
        res = tokenize_file(path, encoder, fmt_name=data["format"], on_error=data.get("on_error", "raise"),
                            registry=registry, cache_dir=data.get("cache_dir"), use_cache=data.get("cache", True))
        rep.cache_hits += res.cache_hit
        rep.read.merge(res.report)
        _add_stats(rep.encode, res.encode)
        stores.append(res.store)
    limit = data.get("max_valid_examples") if split == "valid" else None
    dataset = TokenDataset(stores, max_length=cfg["max_length"], train_on_prompt=data["train_on_prompt"],
                           limit=limit)
    if len(dataset) == 0:
        why = "every example was dropped by truncation; raise max_length" if rep.encode.dropped else "no examples"
        raise DataError(f"{key}: {why} ({data[f'{split}_file']})"
                        + (f"; {rep.read.skipped_text()}" if rep.read.skipped else ""))
    return dataset, rep


def _add_stats(total: EncodeStats, part: EncodeStats) -> None:
    for name in ("examples", "truncated", "dropped", "tokens", "trainable_tokens"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.dropped_sources.extend(part.dropped_sources[: max(0, 5 - len(total.dropped_sources))])


# --------------------------------------------------------------------------
# mixtures


def prepare_mixture(cfg: Mapping, encoder, seed: int, registry=None, log: Log = _stderr_log):
    """The :class:`~lmforge.data.mixing.MixtureDataset` of ``data.mix``; transforms are tried on a few draws."""
    import random

    from lmforge.data.cache import record_store
    from lmforge.data.mixing import MixtureDataset, TransformSource, derive_seed, load_transform, read_mix_file
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    data = cfg["data"]
    entries = read_mix_file(data["mix"])
    sources = []
    for e in entries:
        key = f"data.mix[{e.dataset_name}].path"
        sub = {**cfg, "data": {**data, "train_file": e.path, "format": e.format or data["format"]}}
        if e.transforms:
            paths = expand_paths(e.path, key)
            records, rep = record_store(paths, on_error=data.get("on_error", "raise"),
                                        cache_dir=data.get("cache_dir"), use_cache=data.get("cache", True))
            if not len(records):
                raise DataError(f"{key}: no records in {e.path}")
            src = TransformSource(records, load_transform(e.transforms), encoder, e.format or data["format"], reg,
                                  e.dataset_name)
            if rep.skipped:
                log(f"mix {e.dataset_name}: {rep.skipped_text()}")
        else:
            try:
                src, rep = prepare_split(sub, encoder, "train", reg)
            except DataError as exc:
                raise DataError(f"data.mix dataset {e.dataset_name!r}: {exc}") from None
            for line in rep.lines(f"mix {e.dataset_name}", src):
                log(line)
        if e.nlines is not None and e.nlines != len(src):
            log(f"warning: data.mix dataset {e.dataset_name!r} declares nlines={e.nlines} but {e.path} holds "
                f"{len(src)} usable examples; sampling uses {len(src)}")
        sources.append(src)
    total = data.get("mix_samples") or sum(len(s) for s in sources)
    mix = MixtureDataset(entries, sources, seed, total)
    for d, src in enumerate(sources):
        if isinstance(src, TransformSource):  # run the user's transform on a few draws now, not mid-training
            for n in range(min(4, len(src))):
                src.draw(mix.schedule.row(d, n), n, random.Random(derive_seed(seed, d, n)))
    log(mix.summary())
    return mix


# --------------------------------------------------------------------------
# the job


def validate_records(cfg: Mapping, registry=None) -> ReadReport:
    """Parse and check every record of the job's files without tokenizing (no tokenizer available yet)."""
    data = cfg["data"]
    report = ReadReport()
    splits = [("train", data.get("train_file")), ("valid", data.get("valid_file"))]
    for split, spec in splits:
        if not spec:
            continue
        for path in expand_paths(spec, f"data.{split}_file", allow_index=True):
            if is_index_dir(path):
                continue
            for _ in read_examples(path, data["format"], registry, on_error=data.get("on_error", "raise"),
                                   report=report):
                pass
    if data.get("mix"):
        from lmforge.data.mixing import read_mix_file

        for e in read_mix_file(data["mix"]):
            expand_paths(e.path, f"data.mix[{e.dataset_name}].path", allow_index=True)
    return report


class JobData:
    """The datasets of one job, prepared before the model is loaded (see :func:`prepare_job_data`)."""

    def __init__(self, cfg: Mapping, family, registry, log: Log, seed: int, tokenizer=None) -> None:
        self.cfg = cfg
        self.family = family
        self.registry = registry
        self.log = log
        self.seed = seed
        self.encoder = None
        self.train = self.valid = None
        if tokenizer is not None:
            self.encoder = job_encoder(cfg, tokenizer, family)
            self.train, self.valid = self._build(self.encoder)
        else:
            report = validate_records(cfg, registry)
            log(f"data: {report.records} records checked ({report.examples} examples); tokenizing once the "
                "model's tokenizer is loaded" + (f"; {report.skipped_text()}" if report.skipped else ""))

    @property
    def has_valid(self) -> bool:
        return bool(self.cfg["data"].get("valid_file"))

    def _build(self, encoder):
        cfg = self.cfg
        if cfg["data"].get("mix"):
            train = prepare_mixture(cfg, encoder, self.seed, self.registry, self.log)
        else:
            train, rep = prepare_split(cfg, encoder, "train", self.registry)
            for line in rep.lines("train", train):
                self.log(line)
        valid = None
        if self.has_valid:
            valid, rep = prepare_split(cfg, encoder, "valid", self.registry)
            for line in rep.lines("valid", valid):
                self.log(line)
        return train, valid

    def datasets_for(self, encoder) -> tuple[Any, Any]:
        """``(train, valid or None)`` for the job's final encoder (built on the model's tokenizer).

        Reuses what was prepared before the model was loaded when the tokenizer
        and encoder are the same; otherwise tokenizes again with ``encoder``.
        """
        from lmforge.data.cache import encoder_identity

        if self.encoder is not None and encoder_identity(self.encoder) == encoder_identity(encoder):
            return self.train, self.valid
        if self.encoder is not None:
            self.log("data: the model's tokenizer differs from the one loaded alone; tokenizing with the model's")
        self.encoder = encoder
        self.train, self.valid = self._build(encoder)
        return self.train, self.valid


def prepare_job_data(cfg: Mapping, source, registry=None, log: Log = _stderr_log, seed: int = 42) -> JobData:
    """Read, validate and tokenize a job's data before its model is loaded.

    ``source`` is the resolved model (:func:`lmforge.modeling.loading.resolve_model`).
    Raises :class:`DataError` naming file, line and problem for the first bad
    record (``data.on_error: raise``), or reports skipped ones (``skip``).
    """
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    try:
        tokenizer = load_tokenizer(source, cfg.get("trust_remote_code", False))
    except LmforgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a family tokenizer that needs its own loader
        log(f"data: tokenizer not loadable without the model ({type(exc).__name__}: {exc}); "
            "validating records now, tokenizing after the model is loaded")
        tokenizer = None
    return JobData(cfg, source.family, reg, log, seed, tokenizer)
