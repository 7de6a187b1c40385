"""Run directories: TensorBoard events inside them, relocatable adapters, nothing stray."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "examples", "data", "train.jsonl")
VALID = os.path.join(REPO, "examples", "data", "valid.jsonl")


def tiny_job(out: str, *, valid: bool, peft: str = "full", **train) -> dict:
    data = {"train_file": TRAIN, "max_valid_examples": 16}
    if valid:
        data["valid_file"] = VALID
    return {"model": "tiny-llama", "output_dir": out, "max_length": 48, "threads": 1, "data": data,
            "peft": {"method": peft},
            "train": {"max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 1, "eval_steps": 2,
                      "save_strategy": "no", "disable_tqdm": True, "report_to": ["tensorboard"], **train}}


def scalars(run_dir: str) -> dict[str, list[int]]:
    """tag -> steps, over every event file under ``run_dir`` (tensorboard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[int]] = {}
    for events in glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True):
        acc = EventAccumulator(events)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return out


@pytest.mark.parametrize("valid", [True, False], ids=["with-valid", "without-valid"])
def test_every_tensorboard_event_lands_in_the_run(valid, tmp_path, monkeypatch):
    from lmforge.train.pipeline import run_training

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = str(tmp_path / "run")
    run_training(tiny_job(out, valid=valid))
    assert not (cwd / "runs").exists(), os.listdir(cwd / "runs")
    assert os.listdir(cwd) == []
    tags = scalars(os.path.join(out, "runs"))
    assert sorted(tags["train/loss"]) == [1, 2, 3, 4]
    assert "train/learning_rate" in tags and "train/grad_norm" in tags
    if valid:
        # the eval before training (step 0), the periodic ones, the one after training
        assert 0 in tags["eval/loss"] and 4 in tags["eval/loss"], tags["eval/loss"]
    else:
        assert "eval/loss" not in tags


def test_lora_run_directory_is_relocatable(tmp_path, monkeypatch):
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lmforge
    from lmforge.train.pipeline import run_training

    first = str(tmp_path / "first")
    run_training(tiny_job(first, valid=False, peft="lora", report_to=[]))
    with open(os.path.join(first, "adapter_config.json"), encoding="utf-8") as f:
        assert json.load(f)["base_model_name_or_path"] == "base_model"
    moved = str(tmp_path / "elsewhere" / "moved")
    os.makedirs(os.path.dirname(moved))
    shutil.move(first, moved)
    assert not os.path.exists(first)

    tok = AutoTokenizer.from_pretrained(moved)
    ids = torch.tensor([tok.encode("What is 3 plus 4?", add_special_tokens=False)])
    ref_model, _ = lmforge.load(moved)
    with torch.no_grad():
        ref = ref_model.eval()(ids).logits
        # plain peft from inside the moved run: the relative reference resolves there
        monkeypatch.chdir(moved)
        auto = AutoPeftModelForCausalLM.from_pretrained(".", dtype=torch.float32).eval()
        torch.testing.assert_close(auto(ids).logits, ref, rtol=0, atol=1e-5)
        # from anywhere else, with the base named explicitly (what docs/getting-started.md shows)
        monkeypatch.chdir(tmp_path)
        base = AutoModelForCausalLM.from_pretrained(os.path.join(moved, "base_model"), dtype=torch.float32)
        plain = PeftModel.from_pretrained(base, moved).eval()
        torch.testing.assert_close(plain(ids).logits, ref, rtol=0, atol=1e-5)
    assert not os.path.exists(os.path.join(moved, "README.md"))  # no peft model card
    # the run's tokenizer renders the training prompt in plain transformers
    from lmforge.inference.generation import Completion

    msgs = [{"role": "user", "content": "What is 3 plus 4?"}]
    got = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    got = list(got["input_ids"] if hasattr(got, "keys") else got)
    assert got == Completion(moved).encode(msgs)
