"""``lmforge predict``, the generation metrics, ``eval_with_generation`` and ``lmforge chat``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("jieba")

from click.testing import CliRunner  # noqa: E402

from lmforge_testing import torch_threads  # noqa: E402

pytestmark = pytest.mark.latest

ROWS = [{"input": f"What is {a} plus {b}?", "output": f"{a} + {b} = {a + b}. The answer is {a + b}."}
        for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (7, 1), (4, 4), (6, 3)]]


def _cli(*args):
    from lmforge.cli.main import build_cli

    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


# ---------------------------------------------------------------- metrics
def test_metrics_follow_the_chatglm_scripts():
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    from lmforge.inference.metrics import corpus_scores, score

    pred, ref = "小明有5个苹果，吃了2个。", "小明有5个苹果，又吃了2个，还剩3个。"
    s = score(pred, ref)
    hyp, gold = list(jieba.cut(pred)), list(jieba.cut(ref))
    want = Rouge().get_scores(" ".join(hyp), " ".join(gold))[0]
    assert s["rouge-l"] == pytest.approx(want["rouge-l"]["f"] * 100)
    assert s["rouge-1"] == pytest.approx(want["rouge-1"]["f"] * 100)
    assert s["bleu-4"] == pytest.approx(
        sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3) * 100)
    assert s["exact_match"] == 0.0 and score(" 42 ", "42")["exact_match"] == 100.0
    assert 0 < s["rouge-l"] < 100
    assert score("", ref) == {"exact_match": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    both = corpus_scores([(pred, ref), (ref, ref)])
    assert both["count"] == 2 and both["exact_match"] == 50.0
    assert both["rouge-l"] == pytest.approx((s["rouge-l"] + 100) / 2, abs=1e-3)


# ---------------------------------------------------------------- predict
def test_predict_writes_one_line_per_input_with_metrics(trained_tiny_llama, tmp_path):
    from lmforge import Completion

    data = _write(tmp_path / "in.jsonl", ROWS)
    out = str(tmp_path / "pred.jsonl")
    res = _cli("predict", trained_tiny_llama, "--data", data, "--output", out, "--batch-size", "3",
               "--max-new-tokens", "12")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert [r["id"] for r in rows] == [f"in.jsonl:{i + 1}" for i in range(len(ROWS))]
    comp = Completion(trained_tiny_llama)
    want = comp.generate_batch([r["input"] for r in ROWS], max_new_tokens=12)
    assert [r["prediction"] for r in rows] == [w.text for w in want]
    assert [r["finish_reason"] for r in rows] == [w.finish_reason for w in want]
    assert [r["reference"] for r in rows] == [r["output"] for r in ROWS]
    assert rows[0]["prompt"] == ROWS[0]["input"]
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert metrics["count"] == len(ROWS) and set(metrics) >= {"exact_match", "bleu-4", "rouge-l"}
    assert "metrics" in res.output


def test_predict_resumes_after_a_kill_mid_write(trained_tiny_llama, tmp_path):
    data = _write(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "pred.jsonl"
    assert _cli("predict", trained_tiny_llama, "--data", data, "-o", str(out), "--max-new-tokens", "6",
                "-q").exit_code == 0
    full = out.read_text(encoding="utf-8").splitlines()
    # as if killed after three complete lines and half a fourth
    out.write_text("\n".join(full[:3]) + "\n" + full[3][:10], encoding="utf-8")
    res = _cli("predict", trained_tiny_llama, "--data", data, "-o", str(out), "--max-new-tokens", "6", "-q")
    assert res.exit_code == 0 and "3 already there" in res.output
    assert out.read_text(encoding="utf-8").splitlines() == full


def test_predict_reads_other_formats_and_multi_turn(trained_tiny_llama, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "What is 1 plus 1?"}, {"from": "gpt", "value": "2"},
                               {"from": "human", "value": "And 2 plus 2?"}, {"from": "gpt", "value": "4"}]}]
    data = _write(tmp_path / "sharegpt.jsonl", rows)
    out = tmp_path / "p.jsonl"
    res = _cli("predict", trained_tiny_llama, "--data", data, "-o", str(out), "--max-new-tokens", "4", "-q")
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text(encoding="utf-8"))
    assert row["reference"] == "4" and [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]


def test_predict_errors_name_the_option(trained_tiny_llama, tmp_path):
    data = _write(tmp_path / "in.jsonl", ROWS)
    cases = [(["--data", str(tmp_path / "missing.jsonl")], "--data"),
             (["--data", data, "--batch-size", "0"], "--batch-size"),
             (["--data", data, "--top-p", "1.5"], "--top-p"),
             (["--data", data, "--max-new-tokens", "0"], "--max-new-tokens")]
    for extra, name in cases:
        res = _cli("predict", trained_tiny_llama, "-o", str(tmp_path / "o.jsonl"), *extra)
        assert res.exit_code == 2 and res.output.startswith(f"error: {name}"), (extra, res.output)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x", "output": "y"}\n{oops\n', encoding="utf-8")
    res = _cli("predict", trained_tiny_llama, "--data", str(bad), "-o", str(tmp_path / "o2.jsonl"), "-q")
    assert res.exit_code == 2 and "bad.jsonl:2" in res.output


# ---------------------------------------------------------------- during training
def test_eval_with_generation_logs_metrics(trained_tiny_llama, tmp_path):
    from lmforge import FineTune
    from lmforge.errors import ConfigError

    train = _write(tmp_path / "train.jsonl", ROWS * 4)
    valid = _write(tmp_path / "valid.jsonl", ROWS[:4])
    out = str(tmp_path / "run")
    with torch_threads(1):
        res = FineTune(model=trained_tiny_llama, config={"eval_with_generation": True,
                                                        "eval_generation": {"max_new_tokens": 8}}).train_local(
            train_fpath=train, validation_fpath=valid, output_dir=out, peft="lora", max_steps=2, eval_steps=1,
            per_device_train_batch_size=4, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True)
    assert res.global_step == 2
    rows = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    scored = [r for r in rows if "eval_rouge-l" in r]
    assert len(scored) >= 3  # before training, at each of the 2 steps, after (HF may merge some)
    assert all(0 <= r["eval_exact_match"] <= 100 and "eval_bleu-4" in r for r in scored)
    with pytest.raises(ConfigError, match="eval_with_generation: needs data.valid_file"):
        FineTune(model="tiny-llama", config={"eval_with_generation": True}).train_local(
            train_fpath=train, output_dir=str(tmp_path / "run2"), max_steps=1)


# ---------------------------------------------------------------- chat
def test_chat_keeps_history_and_clears_it(trained_tiny_llama):
    from lmforge import Completion
    from lmforge.plugins.descriptors import Message

    comp = Completion(trained_tiny_llama)
    q1, q2 = "What is 2 plus 3?", "And 4 plus 4?"
    a1 = comp.generate(q1, max_new_tokens=10).text
    a2 = comp.generate([Message("user", q1), Message("assistant", a1), Message("user", q2)], max_new_tokens=10).text
    fresh = comp.generate(q2, max_new_tokens=10).text
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "chat", trained_tiny_llama, "--max-new-tokens", "10"],
                          input=f"{q1}\n{q2}\n/clear\n{q2}\n/exit\n", capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [a1, a2, "[history cleared]", fresh]
