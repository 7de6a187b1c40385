"""Test helpers for plugin authors: small data, a recorded training run, reload and
batched-generation checks.

Used by the conformance checks (:mod:`lmforge.testing.family`) and by the plugins' own
test suites (``from lmforge.testing import train_run``); imports torch only inside the functions.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

@contextmanager
def single_torch_thread():
    """torch on one intra-op thread inside the block (restored after): the conformance runs are tiny,
    and on a shared CPU one thread per process is steady where more spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


PROBE_TEXT = "What is 2 plus 3?"
PROMPTS = ["What is 2 plus 3?", "What is 7 times 6? Answer briefly.", "Anna has 4 apples."]


def write_data(folder: str) -> tuple[str, str]:
    """48 training and 16 validation arithmetic question/answer records (input/output format)."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(64):
        a, b = i % 9 + 1, (i * 7) % 9 + 1
        rows.append({"input": f"What is {a} plus {b}?", "output": f"{a} + {b} = {a + b}. The answer is {a + b}."})
    train, valid = os.path.join(folder, "train.jsonl"), os.path.join(folder, "valid.jsonl")
    for path, part in ((train, rows[:48]), (valid, rows[48:])):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(json.dumps(r) for r in part) + "\n")
    return train, valid


@dataclass
class Run:
    result: object
    run_dir: str
    probe_ids: list
    saved_logits: object


def train_run(model: str, peft: str, out_dir: str, data: tuple[str, str], *, lr: float, steps: int = 24,
              peft_options: dict | None = None) -> Run:
    """Train with ``FineTune.train_local``; capture the in-memory model's logits on a probe when it is saved."""
    import torch

    import lmforge.train.pipeline as training
    from lmforge import FineTune

    captured = {}
    original = training.save_outputs

    def save_and_probe(model_obj, tokenizer, source, method, out, ctx):
        ids = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
        model_obj.eval()
        with torch.no_grad():
            captured["logits"] = model_obj(input_ids=torch.tensor([ids])).logits.float()
        captured["ids"] = ids
        return original(model_obj, tokenizer, source, method, out, ctx)

    with mock.patch.object(training, "save_outputs", save_and_probe):
        result = FineTune(model=model).train_local(
            train_fpath=data[0], validation_fpath=data[1], output_dir=out_dir, peft=peft, peft_options=peft_options,
            max_steps=steps, learning_rate=lr, per_device_train_batch_size=8, logging_steps=steps,
            save_strategy="no", report_to=[], max_length=64, seed=0,
        )
    return Run(result, out_dir, captured["ids"], captured["logits"])


def reload_logits(run: Run):
    import torch

    import lmforge

    model, _ = lmforge.load(run.run_dir)
    with torch.no_grad():
        return model(input_ids=torch.tensor([run.probe_ids])).logits.float()


def batched_vs_single(run_dir: str, prompts=PROMPTS, max_new_tokens: int = 6):
    from lmforge import Completion

    comp = Completion(run_dir)
    batched = [r.token_ids[0] for r in comp.generate_batch(prompts, max_new_tokens=max_new_tokens)]
    single = [comp.generate(p, max_new_tokens=max_new_tokens).token_ids[0] for p in prompts]
    return batched, single


__all__ = ["PROBE_TEXT", "PROMPTS", "Run", "write_data", "train_run", "reload_logits", "batched_vs_single"]
