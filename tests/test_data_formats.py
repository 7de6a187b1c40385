"""Every built-in data format, read from disk, to exact token ids and label masks."""

from __future__ import annotations

import gzip
import json

import pytest

from lmforge.data.readers import ReadReport, iter_examples, load_examples, read_examples
from lmforge.data.cache import tokenize_file
from lmforge.data.encoding import IGNORE_INDEX, TemplateEncoder
from lmforge.plugins.registry import get_registry

BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def tok():
    from llm_plugins_llama.loader import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def raw(tok):
    return TemplateEncoder(tok, None, max_length=10_000, template="raw")


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def turns(tok, *segments):
    """Expected (input_ids, labels) for raw-template segments ``(text, trained)``; EOS closes each trained run."""
    input_ids, labels = [BOS], [IGNORE_INDEX]
    for n, (text, trained) in enumerate(segments):
        t = ids(tok, text)
        input_ids += t
        labels += t if trained else [IGNORE_INDEX] * len(t)
        if trained and (n + 1 == len(segments) or not segments[n + 1][1]):
            input_ids.append(EOS)
            labels.append(EOS)
    return input_ids, labels


def encode_file(path, raw, fmt="auto"):
    report = ReadReport()
    feats = [raw.encode(ex) for ex in iter_examples(path, fmt, report=report)]
    return [(f["input_ids"], f["labels"]) for f in feats], report


CASES = {
    "input_output": (
        [{"input": "What is 2 plus 2?", "output": "4"}, {"input": "", "output": "Pretraining text."}],
        lambda t: [turns(t, ("What is 2 plus 2?", False), ("4", True)), turns(t, ("Pretraining text.", True))],
    ),
    "src_tgt": (
        [{"src": "Hi", "tgt": "Hello!"}, {"src": ["a b", "c"], "tgt": ["x", "y z"]}],
        lambda t: [turns(t, ("Hi", False), ("Hello!", True)),
                   turns(t, ("a b", False), ("x", True), ("c", False), ("y z", True))],
    ),
    "instruction": (
        [{"input": "Translate: cat", "target": "gato"}],
        lambda t: [turns(t, ("Translate: cat", False), ("gato", True))],
    ),
    "alpaca": (
        [{"instruction": "Add", "input": "2 and 3", "output": "5"}, {"instruction": "Say hi", "input": "", "output": "hi"}],
        lambda t: [turns(t, ("Add\n\n2 and 3", False), ("5", True)), turns(t, ("Say hi", False), ("hi", True))],
    ),
    "title_content": (
        [{"title": "Cats", "content": "Cats purr."}, {"title": "", "content": "No title."}],
        lambda t: [turns(t, ("Cats\nCats purr.", True)), turns(t, ("No title.", True))],
    ),
    "messages": (
        [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "U1"},
                       {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                       {"role": "assistant", "content": "A2"}]},
         {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "R"}]}],
        lambda t: [turns(t, ("Be brief.", False), ("U1", False), ("A1", True), ("U2", False), ("A2", True)),
                   turns(t, ("Q", False), ("R", True))],
    ),
    "packed": (
        [{"input": ["p1", ""], "output": ["r1", "free text"]}],
        lambda t: [turns(t, ("p1", False), ("r1", True)), turns(t, ("free text", True))],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_format_detected_and_encoded_exactly(tmp_path, tok, raw, name):
    rows, expected = CASES[name]
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    got, report = encode_file(path, raw)
    assert report.formats[path] == name
    assert got == expected(tok)
    # forcing the format gives the same result
    assert encode_file(path, raw, name)[0] == expected(tok)


def test_text_file_one_document_per_line(tmp_path, tok, raw):
    p = tmp_path / "corpus.txt"
    p.write_text("first document\n\n  second one  \n", encoding="utf-8")
    got, report = encode_file(str(p), raw)
    assert report.formats[str(p)] == "text"
    assert got == [turns(tok, ("first document", True)), turns(tok, ("second one", True))]
    assert [ex.source[1] for ex in iter_examples(str(p))] == [1, 3]


def test_messages_use_the_family_chat_template(tmp_path, tok):
    llama = get_registry().family("llama")
    enc = TemplateEncoder(tok, llama, max_length=10_000)
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                             {"role": "assistant", "content": "Yo"}]}])
    (ex,) = iter_examples(path)
    f = enc.encode(ex)
    prompt, answer = ids(tok, "[INST] Hi [/INST]"), ids(tok, " Yo")
    assert f["input_ids"] == [BOS] + prompt + answer + [EOS]
    assert f["labels"] == [IGNORE_INDEX] * (1 + len(prompt)) + answer + [EOS]


def test_train_on_prompt_keeps_prompt_labels(tmp_path, tok):
    enc = TemplateEncoder(tok, None, max_length=10_000, template="raw", train_on_prompt=True)
    path = write_jsonl(tmp_path / "a.jsonl", [{"input": "q", "output": "a"}])
    (ex,) = iter_examples(path)
    f = enc.encode(ex)
    assert f["labels"] == f["input_ids"]


def test_packed_samples_share_their_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"input": ["a", "b"], "output": ["x", "y"]},
                                              {"input": ["c"], "output": ["z"]}])
    groups = [(line, len(exs)) for line, exs in read_examples(path)]
    assert groups == [(1, 2), (2, 1)]
    assert {ex.source for ex in iter_examples(path)} == {(path, 1), (path, 2)}


def test_json_array_gz_directory_and_glob(tmp_path, tok, raw):
    rows = [{"input": f"q{i}", "output": f"a{i}"} for i in range(5)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "arr.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    with gzip.open(tmp_path / "d" / "z.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    by_dir = load_examples(str(tmp_path / "d"))
    by_glob = load_examples(str(tmp_path / "d" / "*"))
    assert len(by_dir) == len(by_glob) == 10
    assert [raw.encode(e) for e in by_dir[:5]] == [raw.encode(e) for e in by_dir[5:]]
    # records of an indented .json array carry the line they start on
    assert [e.source[1] for e in by_dir[:5]] == [2, 6, 10, 14, 18]


def test_json_array_is_parsed_incrementally(tmp_path, monkeypatch):
    import lmforge.data.readers as data

    monkeypatch.setattr(data, "_JSON_CHUNK", 7)  # every element and number straddles chunk boundaries
    rows = [{"input": "x" * n, "output": "é" * (n + 1)} for n in range(1, 30)]
    p = tmp_path / "a.json"
    p.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n", encoding="utf-8")
    got = list(data.iter_records(str(p)))
    assert [r for _, r, _ in got] == rows
    assert [n for n, _, _ in got] == list(range(2, 31))
    q = tmp_path / "n.json"
    q.write_text("[1234567890123, 42]", encoding="utf-8")
    assert [r for _, r, _ in data.iter_records(str(q))] == [1234567890123, 42]


def test_store_round_trip_equals_direct_encoding(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    enc = TemplateEncoder(tok, get_registry().family("llama"), max_length=16)
    rows = [{"input": "a question that is rather long " * 2, "output": "an answer"}, {"input": "", "output": "text " * 9},
            {"input": "q", "output": "short"}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    res = tokenize_file(path, enc)
    direct = [enc.encode(ex) for ex in iter_examples(path)]
    direct = [d for d in direct if d is not None]
    assert [res.store[i] for i in range(len(res.store))] == direct
    assert len(direct) == 2  # the long prompt leaves no answer token within max_length: dropped
    assert (res.encode.examples, res.encode.truncated, res.encode.dropped) == (3, 2, 1)
    assert res.encode.dropped_sources == [(path, 1)]


def test_encoder_fast_path_gives_the_tokenizer_ids(tok, raw):
    texts = ["plain text", " leading space", "中文和English混合", "a </s> special <s> token", "tabs\tand\nnewlines ",
             "émoji 🙂 ok", "   "]
    for t in texts:
        assert raw._ids(t) == tok.encode(t, add_special_tokens=False)
