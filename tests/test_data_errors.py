"""Bad input: every case names file, line and problem, before the model is loaded; skip mode counts and shows."""

from __future__ import annotations

import json
import re

import pytest

import lmforge.train.pipeline as training
from lmforge.data.readers import ReadReport, load_examples
from lmforge.errors import DataError

GOOD = '{"input": "q", "output": "a"}'

# (second line of a jsonl file whose first line is GOOD, expected message after "FILE:2: ")
CASES = [
    ('{"input": "q", "output": }', r"malformed JSON: Expecting value \(column 26\)"),
    ('{"input": "q"}', r"missing field 'output' \(format 'input_output'\)"),
    ('{"input": 5, "output": "a"}', r"field 'input' must be a string, got int \(format 'input_output'\)"),
    ('{"input": "q", "output": "   "}', r"field 'output' is empty \(format 'input_output'\)"),
    ('["not", "an", "object"]', r"expected a JSON object, got a JSON list \(format 'input_output'\)"),
]


def write(path, text: bytes | str):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


@pytest.mark.parametrize("line,message", CASES)
def test_bad_record_names_file_line_and_problem(tmp_path, line, message):
    p = write(tmp_path / "bad.jsonl", GOOD + "\n" + line + "\n" + GOOD + "\n")
    with pytest.raises(DataError, match=re.escape(p) + ":2: " + message + r".*data.on_error: skip"):
        load_examples(p)


def test_invalid_utf8_names_its_own_line(tmp_path):
    # the bad byte sits on line 3; lines 1-2 and 4 are fine (decoding is per line, not per buffer)
    p = write(tmp_path / "u.jsonl", ((GOOD + "\n") * 2).encode() + b'{"input": "q", "output": "\xff\xfe"}\n'
              + (GOOD + "\n").encode())
    with pytest.raises(DataError, match=re.escape(p) + r":3: invalid UTF-8 \(invalid start byte\) at byte 26"):
        load_examples(p)


@pytest.mark.parametrize("record,message", [
    ({"foo": 1}, r"cannot detect the data format from fields \(foo\); known formats: .*input_output: \{input, output\}"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"'messages' has no assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                   {"role": "user", "content": "q2"}]}, r"'messages' ends with a user turn"),
    ({"messages": [{"role": "wizard", "content": "q"}]}, r"messages\[0\]: unknown role 'wizard'"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, r"missing messages\[0\] field 'content'"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
     r"conversations\[1\].value is empty"),
    ({"src": ["a", "b"], "tgt": ["x"]}, r"'src' has 2 turns but 'tgt' has 1"),
    ({"src": ["a"], "tgt": "x"}, r"fields 'src' and 'tgt' must both be strings or both be lists of turns, got list and str"),
    ({"instruction": "do", "input": "", "output": 3}, r"field 'output' must be a string, got int \(format 'alpaca'\)"),
    ({"title": "t", "content": ""}, r"field 'content' is empty \(format 'title_content'\)"),
    ({"input": ["a", "b"], "output": ["x"]}, r"'input' has 2 entries but 'output' has 1 \(format 'packed'\)"),
])
def test_format_specific_problems(tmp_path, record, message):
    p = write(tmp_path / "f.jsonl", json.dumps(record) + "\n")
    with pytest.raises(DataError, match=re.escape(p) + ":1: " + message):
        load_examples(p)


def test_broken_json_array_stops_even_in_skip_mode(tmp_path):
    p = write(tmp_path / "a.json", '[\n {"input": "q", "output": "a"},\n {"input": "q" "output": "a"}\n]')
    with pytest.raises(DataError, match=re.escape(p) + r":3: malformed JSON: Expecting ',' delimiter"):
        load_examples(p, on_error="skip")


def test_skip_mode_counts_and_shows_the_first_few(tmp_path):
    bad = [line for line, _ in CASES] + ['{"input": "q"}'] * 3
    p = write(tmp_path / "mixed.jsonl", "\n".join([GOOD] + bad + [GOOD]) + "\n")
    report = ReadReport()
    examples = load_examples(p, on_error="skip", report=report)
    assert len(examples) == 2 and report.records == 10
    assert report.skipped == 8
    assert len(report.shown) == 5
    assert str(report.shown[0]).startswith(f"{p}:2: malformed JSON")
    text = report.skipped_text()
    assert text.startswith("skipped 8 bad record(s) (data.on_error: skip); first 5:")
    assert f"{p}:3: missing field 'output'" in text


@pytest.fixture
def no_model_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model must not be loaded when the data is bad")

    monkeypatch.setattr(training, "load_model", boom)


def test_training_fails_on_bad_data_before_loading_the_model(tmp_path, monkeypatch, no_model_load):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    p = write(tmp_path / "t.jsonl", GOOD + "\n" + '{"input": "q", "output": ""}\n')
    cfg = {"model": "tiny-llama", "output_dir": str(tmp_path / "out"), "data": {"train_file": p}}
    with pytest.raises(DataError, match=re.escape(p) + r":2: field 'output' is empty"):
        training.run_training(cfg)


def test_skipped_records_in_the_cache_still_fail_a_raise_run(tmp_path, monkeypatch):
    from lmforge.data.prepare import encoder_for_model
    from lmforge.data.cache import tokenize_file

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    p = write(tmp_path / "t.jsonl", GOOD + "\n" + '{"input": "q"}\n' + GOOD + "\n")
    enc = encoder_for_model("tiny-llama", max_length=64)
    first = tokenize_file(p, enc, on_error="skip")
    assert len(first.store) == 2 and first.report.skipped == 1 and not first.cache_hit
    again = tokenize_file(p, enc, on_error="skip")
    assert again.cache_hit and again.report.skipped == 1 and str(again.report.shown[0]).startswith(f"{p}:2:")
    with pytest.raises(DataError, match=re.escape(p) + r":2: missing field 'output'"):
        tokenize_file(p, enc, on_error="raise")


def test_cli_reports_bad_data_with_exit_status_2(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(training, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    p = write(tmp_path / "t.jsonl", GOOD + "\n{oops\n")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"model: tiny-llama\noutput_dir: {tmp_path}/out\ndata:\n  train_file: {p}\n")
    res = CliRunner().invoke(build_cli(), ["train", str(cfg)])
    assert res.exit_code == 2
    assert f"error: {p}:2: malformed JSON: Expecting property name enclosed in double quotes" in res.output
