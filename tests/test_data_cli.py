"""`lmforge data inspect / convert / cache` and the extensible `data` group."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from lmforge.cli.main import build_cli
from lmforge.data.readers import iter_examples


def run(*args):
    return CliRunner().invoke(build_cli(), list(args))


@pytest.fixture
def sample(tmp_path):
    p = tmp_path / "s.jsonl"
    rows = [{"input": "q" * (i % 5), "output": "answer " * (1 + i % 9)} for i in range(50)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"input": "x", "output": 3}\n')
    return p


def test_inspect_prints_format_counts_percentiles_and_histogram(sample):
    res = run("data", "inspect", str(sample), "--tokenizer", "tiny-llama", "--max-length", "12")
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"{sample}: format input_output, 51 records, 50 examples, 1 bad" in out
    assert f"{sample}:51: field 'output' must be a string, got int" in out
    assert "length (tokens, tiny-llama): mean" in out and "p50" in out and "p99" in out
    assert "histogram:" in out and "#" in out
    assert "would be truncated" in out


def test_inspect_json_and_character_lengths(sample):
    res = run("data", "inspect", str(sample), "--json")
    data = json.loads(res.output)
    assert data["files"][0]["format"] == "input_output" and data["files"][0]["bad_records"] == 1
    lengths = data["lengths"]
    assert lengths["unit"] == "characters" and lengths["count"] == 50
    assert lengths["min"] <= lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"]


def test_inspect_strict_stops_on_the_bad_record(sample):
    res = run("data", "inspect", str(sample), "--strict")
    assert res.exit_code == 2 and f"{sample}:51:" in res.output


def test_inspect_plot(sample, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "h.png"
    res = run("data", "inspect", str(sample), "--tokenizer", "tiny-llama", "--plot", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_convert_txt_to_input_output(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("first doc\n\nsecond doc\n", encoding="utf-8")
    out = tmp_path / "c.jsonl"
    res = run("data", "convert", str(src), "-o", str(out))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"input": "", "output": "first doc"}, {"input": "", "output": "second doc"}]
    assert [ex.text for ex in iter_examples(str(out))] == ["first doc", "second doc"]  # pretraining text
    bad = run("data", "convert", str(out), "-o", str(tmp_path / "x.jsonl"))
    assert bad.exit_code == 2 and "convert reads .txt files" in bad.output


def test_cache_command(tmp_path, sample, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    from lmforge.data.cache import tokenize_file
    from lmforge.data.prepare import encoder_for_model

    tokenize_file(str(sample), encoder_for_model("tiny-llama", max_length=32), on_error="skip")
    assert "1 entries" in run("data", "cache").output
    assert "cleared 1 entries" in run("data", "cache", "--clear").output
    assert "0 entries" in run("data", "cache").output


def test_other_plugins_can_attach_data_subcommands():
    from lmforge.cli.data import data_group

    @click.command("hello-data")
    def hello():
        click.echo("hi from a plugin")

    data_group.add_command(hello)
    try:
        assert run("data", "hello-data").output == "hi from a plugin\n"
    finally:
        data_group.commands.pop("hello-data")
