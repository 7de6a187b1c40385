"""Trainable parameters, step time and peak RSS of every built-in PEFT method.

    .venv/bin/python benchmarks/peft_methods.py                  # both models, all methods
    .venv/bin/python benchmarks/peft_methods.py --models tiny-llama --methods lora,qlora

Models: the ``tiny-llama`` preset (4M parameters) and ``llama-100m``, a
LLaMA-architecture checkpoint of ~100M random parameters written to a
temporary directory (12 layers, hidden 768, 2560 MLP, the tiny tokenizer's 2k
vocabulary), so qlora quantizes it while loading as it would a real checkpoint.

Each (model, method) runs the real training pipeline (``FineTune.train_local``,
transformers ``Trainer``) in its own process, so the peak resident set size
(``ru_maxrss``) is that job's alone: model load, wrapping, optimizer state and
``--steps`` optimizer steps on examples/data/train.jsonl. Step time is the
median wall time of the steps after the first (forward, backward, optimizer);
"RSS while training" is the largest ``VmRSS`` seen at the end of a step (peak
RSS also covers loading, e.g. the full-precision weights qlora quantizes).
torch runs on one thread (``--threads``): the machine is shared and two
OpenMP threads per process make timings erratic. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "examples", "data", "train.jsonl")
METHODS = ["full", "freeze", "lora", "dora", "qlora", "adalora", "ia3", "prefix", "prompt", "ptuning", "bitfit",
           "unipelt"]
OPTIONS = {"bitfit": {"add_biases": True}}  # LLaMA has no biases; see docs/peft.md
LLAMA_100M = dict(hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=12)
SETTINGS = {  # model -> (steps, batch size, max_length)
    "tiny-llama": (12, 8, 64),
    "llama-100m": (6, 4, 64),
}


def write_llama_100m(path: str) -> str:
    """Save a random ~100M-parameter LLaMA with the tiny-llama tokenizer to ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.plugins.registry import get_registry

    _, preset = get_registry().find_preset("tiny-llama")
    cfg = {k: v for k, v in preset.config.items() if k != "model_type"}
    cfg.update(LLAMA_100M)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.save_pretrained(path)
    from llm_plugins_llama.loader import tiny_tokenizer

    tiny_tokenizer().save_pretrained(path)
    return path


def run_one(model: str, method: str, steps: int, batch: int, max_length: int, out: str) -> dict:
    """Train ``method`` on ``model`` for ``steps`` steps in this process; return the measurements."""
    import resource

    import lmforge.train.pipeline as training
    from transformers import TrainerCallback

    from lmforge.api import FineTune

    times: list[float] = []
    rss: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            rss.append(current_rss_mb())

    original = training._trainer_classes

    def timed_classes():
        trainer_cls, log_cb, torch_mod = original()

        class TimedTrainer(trainer_cls):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                self.add_callback(StepTimer())

        return TimedTrainer, log_cb, torch_mod

    training._trainer_classes = timed_classes
    res = FineTune(model=model).train_local(
        train_fpath=DATA, output_dir=out, peft=method, peft_options=OPTIONS.get(method), max_steps=steps,
        per_device_train_batch_size=batch, max_length=max_length, learning_rate=1e-4, report_to=[],
        save_strategy="no", logging_steps=steps, disable_tqdm=True, seed=0,
    )
    return {
        "model": os.path.basename(model.rstrip("/")),
        "method": method,
        "trainable_params": res.params["trainable_params"],
        "total_params": res.params["total_params"],
        "trainable_percent": res.params["trainable_percent"],
        "step_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_rss_mb": max(rss) if rss else float("nan"),
    }


def current_rss_mb() -> float:
    """This process's resident set size now (``VmRSS``), in MB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def table(rows: list[dict]) -> str:
    lines = ["| model | method | trainable params | trainable % | step time (s) | peak RSS (MB) | RSS while training (MB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {_fmt_params(r['trainable_params'])} | "
                     f"{r['trainable_percent']:.3f} | {r['step_s']:.3f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['train_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny-llama,llama-100m")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--one", nargs=6, metavar=("MODEL", "METHOD", "STEPS", "BATCH", "MAXLEN", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        model, method, steps, batch, max_length, out = args.one
        row = run_one(model, method, int(steps), int(batch), int(max_length), out)
        print("ROW " + json.dumps(row), flush=True)
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        for model in args.models.split(","):
            path = model
            if model == "llama-100m":
                path = write_llama_100m(os.path.join(tmp, "llama-100m"))
            steps, batch, max_length = SETTINGS[model]
            for method in args.methods.split(","):
                out = os.path.join(tmp, f"run-{model}-{method}")
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--one", path, method,
                       str(steps), str(batch), str(max_length), out]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
                if proc.returncode != 0 or not found:
                    print(f"{model} {method}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                row = json.loads(found[-1][4:])
                row["model"] = model
                rows.append(row)
                print(f"{model:10} {method:8} {row['trainable_params']:>11,} {row['step_s']:.3f}s "
                      f"{row['peak_rss_mb']:.0f}MB", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    print(f"torch threads: {args.threads}; steps/batch/max_length: "
          + "; ".join(f"{m} {s[0]}/{s[1]}/{s[2]}" for m, s in SETTINGS.items() if m in args.models))
    print(table(rows))


if __name__ == "__main__":
    main()
