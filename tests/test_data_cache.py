"""The token cache: a second run over the same inputs does no tokenization; any input change re-tokenizes."""

from __future__ import annotations

import json
import os

import pytest

import lmforge.data.encoding as encoding
from lmforge.data.cache import tokenize_file
from lmforge.data.prepare import encoder_for_model, prepare_split

ROWS = [{"input": f"What is {i} plus {i}?", "output": f"{2 * i}"} for i in range(30)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(d))
    return d


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts every TemplateEncoder.encode call (what tokenization is)."""
    calls = {"n": 0}
    original = encoding.TemplateEncoder.encode

    def counting(self, example):
        calls["n"] += 1
        return original(self, example)

    monkeypatch.setattr(encoding.TemplateEncoder, "encode", counting)
    return calls


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_second_run_is_a_cache_hit_with_no_tokenization(tmp_path, cache, encode_calls):
    p = write(tmp_path / "t.jsonl", ROWS)
    enc = encoder_for_model("tiny-llama", max_length=64)
    first = tokenize_file(p, enc)
    assert not first.cache_hit and encode_calls["n"] == 30
    items = [first.store[i] for i in range(len(first.store))]
    encode_calls["n"] = 0
    second = tokenize_file(p, encoder_for_model("tiny-llama", max_length=64))  # a fresh process would do the same
    assert second.cache_hit and encode_calls["n"] == 0
    assert [second.store[i] for i in range(len(second.store))] == items
    assert (second.encode.examples, second.encode.tokens) == (first.encode.examples, first.encode.tokens)
    assert os.listdir(cache / "tokens") == [os.path.basename(second.store.path)]


def test_key_follows_content_not_name_or_mtime(tmp_path, cache, encode_calls):
    p = write(tmp_path / "t.jsonl", ROWS)
    enc = encoder_for_model("tiny-llama", max_length=64)
    tokenize_file(p, enc)
    copy = write(tmp_path / "renamed.jsonl", ROWS)
    os.utime(copy, (1, 1))
    assert tokenize_file(copy, enc).cache_hit
    write(tmp_path / "t.jsonl", ROWS[:-1] + [{"input": "changed", "output": "yes"}])
    assert not tokenize_file(p, enc).cache_hit


@pytest.mark.parametrize("change", [
    {"max_length": 32},
    {"train_on_prompt": True},
    {"template": "raw"},
    {"fmt_name": "input_output"},
])
def test_key_covers_encoder_format_and_max_length(tmp_path, cache, change):
    p = write(tmp_path / "t.jsonl", ROWS)
    tokenize_file(p, encoder_for_model("tiny-llama", max_length=64))
    enc_kw = {k: v for k, v in change.items() if k != "fmt_name"}
    enc = encoder_for_model("tiny-llama", **{"max_length": 64, **enc_kw})
    assert not tokenize_file(p, enc, fmt_name=change.get("fmt_name", "auto")).cache_hit


def test_tokenizer_identity_is_in_the_key(tmp_path, cache):
    p = write(tmp_path / "t.jsonl", ROWS)
    enc = encoder_for_model("tiny-llama", max_length=64)
    tokenize_file(p, enc)
    enc.tokenizer.add_tokens(["<newtok>"])
    assert not tokenize_file(p, enc).cache_hit


def test_cache_off_writes_nothing(tmp_path, cache, encode_calls):
    p = write(tmp_path / "t.jsonl", ROWS)
    cfg = {"max_length": 64, "data": {"train_file": p, "format": "auto", "train_on_prompt": False,
                                      "cache": False, "on_error": "raise"}}
    enc = encoder_for_model("tiny-llama", max_length=64)
    ds, rep = prepare_split(cfg, enc)
    ds2, _ = prepare_split(cfg, enc)
    assert len(ds) == len(ds2) == 30 and encode_calls["n"] == 60 and rep.cache_hits == 0
    assert not cache.exists()


def test_training_twice_tokenizes_once(tmp_path, cache, encode_calls):
    from lmforge.train.pipeline import run_training

    p = write(tmp_path / "t.jsonl", ROWS)
    cfg = {"model": "tiny-llama", "max_length": 32, "data": {"train_file": p},
           "train": {"max_steps": 1, "per_device_train_batch_size": 2, "report_to": [], "save_strategy": "no",
                     "disable_tqdm": True}}
    run_training({**cfg, "output_dir": str(tmp_path / "a")})
    assert encode_calls["n"] == 30
    encode_calls["n"] = 0
    res = run_training({**cfg, "output_dir": str(tmp_path / "b")})
    assert encode_calls["n"] == 0 and res.global_step == 1


def _job_cfg(p):
    from lmforge.config.schema import validate

    return validate({"model": "tiny-llama", "output_dir": "/tmp/unused", "max_length": 64, "data": {"train_file": p}})


def test_model_tokenizer_differing_from_the_early_one_retokenizes(tmp_path, cache):
    from lmforge.data.prepare import prepare_job_data
    from lmforge.modeling.loading import resolve_model

    p = write(tmp_path / "t.jsonl", ROWS)
    cfg = _job_cfg(p)
    source = resolve_model("tiny-llama")
    log: list[str] = []
    job = prepare_job_data(cfg, source, log=log.append)
    same = encoder_for_model("tiny-llama", max_length=64)
    assert job.datasets_for(same)[0] is job.train  # same tokenizer and template: reused as is
    other = encoder_for_model("tiny-llama", max_length=64)
    other.tokenizer.add_tokens(["<extra>"])
    train, _ = job.datasets_for(other)
    assert train is job.train and len(train) == 30
    assert any("differs from the one loaded alone" in line for line in log)


def test_tokenizer_not_loadable_alone_validates_first_and_tokenizes_later(tmp_path, cache, monkeypatch):
    import lmforge.data.prepare as dataprep
    from lmforge.errors import DataError
    from lmforge.modeling.loading import resolve_model

    def no_tokenizer(*a, **k):
        raise OSError("this family's tokenizer needs its own loader")

    model_encoder = encoder_for_model("tiny-llama", max_length=64)  # what the model's loader will give
    monkeypatch.setattr(dataprep, "load_tokenizer", no_tokenizer)
    bad = write(tmp_path / "bad.jsonl", ROWS[:3] + [{"input": "q"}])
    with pytest.raises(DataError, match=r"bad.jsonl:4: missing field 'output'"):
        dataprep.prepare_job_data(_job_cfg(bad), resolve_model("tiny-llama"), log=lambda m: None)
    p = write(tmp_path / "t.jsonl", ROWS)
    log: list[str] = []
    job = dataprep.prepare_job_data(_job_cfg(p), resolve_model("tiny-llama"), log=log.append)
    assert job.train is None and "30 records checked" in log[-1]
    train, valid = job.datasets_for(model_encoder)
    assert len(train) == 30 and valid is None
