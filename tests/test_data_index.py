"""`lmforge data index`: a memory-mapped tokenized corpus that reads back equal to direct tokenization."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lmforge.cli.main import build_cli
from lmforge.data.readers import iter_examples
from lmforge.data.prepare import encoder_for_model, prepare_split
from lmforge.errors import DataError
from lmforge.data.indexed import length_distribute
from lmforge.data.tokenstore import TokenStore

ROWS = ([{"input": "", "output": "plain pretraining text number %d " % i * (1 + i % 7)} for i in range(20)]
        + [{"input": "question %d" % i, "output": "answer %d" % i} for i in range(10)])


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    for part in range(2):
        rows = ROWS[part::2]
        (tmp_path / "corpus" / f"part{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "corpus"


def build(tmp_path, corpus, *extra):
    out = tmp_path / "idx"
    res = CliRunner().invoke(build_cli(), ["data", "index", str(corpus), "-o", str(out), "--tokenizer", "tiny-llama",
                                           *extra])
    assert res.exit_code == 0, res.output
    return out, res


def test_index_meta_and_read_back_equal_direct_tokenization(tmp_path, corpus):
    out, res = build(tmp_path, corpus)
    store = TokenStore(str(out))
    meta = store.meta
    for key in ("language", "nlines", "nbytes", "length_distribute", "avg_token_per_line", "data_sample"):
        assert key in meta
    assert meta["nlines"] == 30 and meta["language"] == "en"
    assert sum(meta["length_distribute"].values()) == 30
    assert list(meta["length_distribute"]) == ["less_4k", "4k-8k", "8k-16k", "16k-32k", "32k-64k", "64k-128k",
                                               "128k-256k", "more_256k"]
    assert meta["data_sample"] == ROWS[0]
    assert meta["avg_token_per_line"] == pytest.approx(meta["num_tokens"] / 30, abs=1e-3)
    enc = encoder_for_model("tiny-llama")  # no truncation, like the index
    direct = [enc.encode(ex) for p in sorted(corpus.iterdir()) for ex in iter_examples(str(p))]
    assert [store[i] for i in range(len(store))] == direct
    assert '"dataset_name": "idx"' in res.output  # the data.mix entry to paste


def test_training_reads_an_index_directory_directly(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    out, _ = build(tmp_path, corpus)
    cfg = {"max_length": 12, "data": {"train_file": str(out), "format": "auto", "train_on_prompt": False}}
    enc = encoder_for_model("tiny-llama", max_length=12)
    ds, rep = prepare_split(cfg, enc)
    direct = [enc.encode(ex) for p in sorted(corpus.iterdir()) for ex in iter_examples(str(p))]
    kept = [d for d in direct if d is not None]  # same truncation and dropping as tokenizing the files
    assert [ds[i] for i in range(len(ds))] == kept
    assert ds.truncated == enc.stats.truncated > 0 and ds.dropped == enc.stats.dropped > 0
    assert rep.indexes == 1 and not (tmp_path / "cache").exists()  # nothing re-tokenized


def test_index_built_for_another_template_is_refused(tmp_path, corpus):
    out, _ = build(tmp_path, corpus, "--template", "raw")
    cfg = {"max_length": 64, "data": {"train_file": str(out), "format": "auto", "train_on_prompt": False}}
    with pytest.raises(DataError, match=r"indexed with a different chat template.*lmforge data index"):
        prepare_split(cfg, encoder_for_model("tiny-llama", max_length=64))


def test_length_buckets():
    k = 1024
    got = length_distribute(np.array([1, 4 * k - 1, 4 * k, 8 * k, 20 * k, 40 * k, 100 * k, 200 * k, 256 * k, 10**7]))
    assert got == {"less_4k": 2, "4k-8k": 1, "8k-16k": 1, "16k-32k": 1, "32k-64k": 1, "64k-128k": 1,
                   "128k-256k": 1, "more_256k": 2}


def test_index_refuses_a_non_index_output_directory(tmp_path, corpus):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    res = CliRunner().invoke(build_cli(), ["data", "index", str(corpus), "-o", str(tmp_path / "busy"),
                                           "--tokenizer", "tiny-llama"])
    assert res.exit_code == 2 and "is not an lmforge index" in res.output
    assert (tmp_path / "busy" / "keep.txt").exists()


def test_datasets_pickle_without_their_arrays(tmp_path, corpus):
    """DataLoader workers started with spawn receive paths, not copies of the memory-mapped data."""
    import pickle

    from lmforge.data.tokenstore import TokenDataset

    out, _ = build(tmp_path, corpus)
    ds = TokenDataset([TokenStore(str(out))], max_length=16)
    before = [ds[i] for i in range(len(ds))]
    blob = pickle.dumps(ds)
    assert len(blob) < 8000 + 8 * len(ds)
    again = pickle.loads(blob)
    assert [again[i] for i in range(len(again))] == before


def test_dataset_lengths_match_items(tmp_path, corpus):
    from lmforge.data.tokenstore import TokenDataset

    out, _ = build(tmp_path, corpus)
    ds = TokenDataset([TokenStore(str(out)), TokenStore(str(out))], max_length=12, limit=50)
    assert ds.lengths().tolist() == [len(ds[i]["input_ids"]) for i in range(len(ds))]
    groups = ds.line_groups()
    assert len(groups) == len(ds) and groups[0][0] == 0 and groups[-1][0] == 1


def test_rebuilding_an_index_replaces_it(tmp_path, corpus):
    out, _ = build(tmp_path, corpus)
    assert TokenStore(str(out)).meta["encoder"]["template"].startswith("ChatTemplate(name='llama2'")
    build(tmp_path, corpus, "--template", "raw")
    assert TokenStore(str(out)).meta["encoder"]["template"].startswith("ChatTemplate(name='raw'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "idx"]  # no temporary leftovers
