"""Quiet by default: a tiny run prints no warnings and leaves only lmforge's and the model's files."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what a finished LoRA run on a preset holds (DESIGN.md §4): nothing else, e.g. no peft README.md
LORA_RUN_FILES = {"adapter_config.json", "adapter_model.safetensors", "base_model", "chat_template.jinja",
                  "checkpoint-2", "lmforge.yaml", "memory_estimate.json", "runs", "tokenizer.json",
                  "tokenizer_config.json", "train_log.jsonl", "train_results.json", "trainable_params.json",
                  "lmforge_run.json", ".lmforge.lock"}  # the last two: the run state and its lock (rundir.py)


def run(tmp_path, *extra, **train):
    """A tiny LoRA run with a validation file through the CLI; ``train`` overrides the ``train:`` section."""
    out = tmp_path / "run"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": "tiny-llama", "output_dir": str(out), "max_length": 48, "threads": 1,
        "data": {"train_file": os.path.join(REPO, "examples", "data", "train.jsonl"),
                 "valid_file": os.path.join(REPO, "examples", "data", "valid.jsonl"), "max_valid_examples": 8},
        "peft": {"method": "lora"},
        "train": {"max_steps": 2, "eval_steps": 1, "logging_steps": 1, "save_steps": 2,
                  "per_device_train_batch_size": 4, "disable_tqdm": True, **train}}))
    env = {k: v for k, v in os.environ.items() if k not in ("LMFORGE_VERBOSE", "DS_ACCELERATOR", "PYTHONWARNINGS")}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg), *extra], capture_output=True,
                         text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    return res, out


def test_tiny_run_prints_no_warnings_and_holds_only_expected_files(tmp_path):
    res, out = run(tmp_path)
    noisy = [line for line in (res.stdout + res.stderr).splitlines() if "warning" in line.lower()]
    assert noisy == [], noisy
    assert set(os.listdir(out)) == LORA_RUN_FILES
    assert "README.md" not in os.listdir(out / "checkpoint-2")
    assert sorted(os.listdir(tmp_path)) == ["job.yaml", "run"]  # nothing in the current directory


def test_verbose_shows_the_library_warnings(tmp_path):
    res, _ = run(tmp_path, "--verbose")
    text = res.stdout + res.stderr
    assert "FutureWarning" in text or "Setting accelerator to CPU" in text, text[-2000:]


# One progress bar on stderr: eval bars do not interleave with the training bar unless --verbose.
# A run with a validation file evaluates before training and at every step; tqdm's bars on a
# captured stderr are \r-separated updates. The training bar counts to max_steps (3), an evaluation
# bar to its batches (8 records / 2 = 4), so every update names its bar. The evaluations before and
# after training keep their bars.
BAR = re.compile(r"\| *(\d+)/(\d+) \[")  # a tqdm update: "...| 2/3 [00:01<00:00, ...]"


def bar_totals(tmp_path, *extra) -> list[int]:
    """The totals of the bar updates on the run's stderr, in order (3: training bar, 4: an evaluation bar)."""
    res, _ = run(tmp_path, *extra, max_steps=3, save_strategy="no", per_device_train_batch_size=2,
                 per_device_eval_batch_size=2, disable_tqdm=False)
    return [int(m.group(2)) for m in BAR.finditer(res.stderr)]


def training_span(totals: list[int]) -> tuple[int, int]:
    """Indices of the first and one past the last training-bar update."""
    return totals.index(3), len(totals) - totals[::-1].index(3)


def test_no_eval_bar_inside_the_training_bar(tmp_path):
    totals = bar_totals(tmp_path)
    first, end = training_span(totals)
    assert set(totals[:first]) == {4}  # the eval before training keeps its own (finished) bar
    assert set(totals[first:end]) == {3}, totals  # only the training bar, though 3 evaluations ran inside it
    assert 4 in totals[end:]  # and the eval after training its own


def test_verbose_shows_the_eval_bars(tmp_path):
    totals = bar_totals(tmp_path, "--verbose")
    first, end = training_span(totals)
    assert 4 in totals[first:end], totals  # transformers' own behaviour: eval bars inside the training bar
