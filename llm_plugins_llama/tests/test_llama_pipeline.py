"""tiny-llama end to end: full and LoRA training, outputs that load in plain transformers/peft,
generation from the run directory, resume, atomic checkpoints, reproducing a run from lmforge.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lmforge import Completion, FineTune
from lmforge.config.schema import load_yaml

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "examples", "data", "train.jsonl")
VALID = os.path.join(ROOT, "examples", "data", "valid.jsonl")
COMMON = dict(max_length=64, per_device_train_batch_size=8, logging_steps=5, report_to=[], save_steps=1000)


def losses(run_dir: str) -> list[float]:
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def probe_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode("What is 3 plus 4? 小明有5个苹果", add_special_tokens=False)])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    res = FineTune(model="tiny-llama", data={"max_valid_examples": 64}).train_local(
        train_fpath=TRAIN, validation_fpath=VALID, output_dir=out, peft="full", max_steps=30,
        learning_rate=2e-3, **{**COMMON, "report_to": ["tensorboard"]})
    return res


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lora"))
    return FineTune(model="tiny-llama").train_local(
        train_fpath=TRAIN, output_dir=out, peft="lora", peft_options={"r": 8, "dropout": 0.0},
        max_steps=30, learning_rate=1e-2, **COMMON)


def test_full_loss_falls_and_everything_trains(full_run):
    ls = losses(full_run.output_dir)
    assert ls[-1] < ls[0] - 1.0, ls
    assert full_run.eval_loss_after < full_run.eval_loss_before - 1.0
    p = full_run.params
    assert p["trainable_params"] == p["total_params"] > 3_000_000
    names = set(p["trainable_names"])
    assert {n for n, _ in full_run.model.named_parameters()} == names


def test_full_output_is_a_plain_hf_checkpoint_with_same_logits(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = full_run.output_dir
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "lmforge.yaml", "train_log.jsonl",
            "trainable_params.json"} <= files
    assert not any(f.endswith(".bin") for f in files)
    assert os.path.isdir(os.path.join(out, "runs")) and os.listdir(os.path.join(out, "runs"))  # tensorboard
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = probe_ids(tok)
    mem = full_run.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, mem(ids).logits, rtol=0, atol=1e-5)
    import lmforge

    loaded, _ = lmforge.load(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, mem(ids).logits, rtol=0, atol=1e-5)


def test_lora_trains_only_adapter_and_loss_falls(lora_run):
    ls = losses(lora_run.output_dir)
    assert ls[-1] < ls[0] - 0.3, ls
    names = set(lora_run.params["trainable_names"])
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    expected = {f"base_model.model.model.layers.{i}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}.lora_{ab}.default.weight"
                for i in range(4) for t in targets for ab in "AB"}
    assert names == expected


def test_lora_output_loads_in_plain_peft_with_same_logits(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = lora_run.output_dir
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(out))
    acfg = json.load(open(os.path.join(out, "adapter_config.json")))
    base = AutoModelForCausalLM.from_pretrained(os.path.join(out, acfg["base_model_name_or_path"]), dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = probe_ids(tok)
    with torch.no_grad():
        ref = lora_run.model.eval()(ids).logits
        torch.testing.assert_close(plain(ids).logits, ref, rtol=0, atol=1e-5)
        import lmforge

        loaded, _ = lmforge.load(out)
        torch.testing.assert_close(loaded(ids).logits, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", ["full_run", "lora_run"])
def test_generate_from_run_dir(which, request):
    run = request.getfixturevalue(which)
    comp = Completion(run.output_dir)
    one = comp.generate("What is 2 plus 3?", max_new_tokens=12)
    assert len(one.texts) == 1 and one.finish_reasons[0] in ("stop", "length")
    batch = comp.generate_batch(["What is 2 plus 3?", "小红有4个苹果，又买了3个。现在有多少个苹果？"], max_new_tokens=12)
    assert len(batch) == 2
    assert batch[0].token_ids == one.token_ids  # left padding does not change greedy output
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "generate", run.output_dir, "What is 2 plus 3?",
                          "--max-new-tokens", "8", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)[0]["text"] == comp.generate("What is 2 plus 3?", max_new_tokens=8).text


def test_prompt_is_masked_and_eos_appended():
    from lmforge.plugins.descriptors import Example, Message
    from lmforge.data.encoding import IGNORE_INDEX, make_encoder
    from lmforge.plugins.registry import get_registry
    from llm_plugins_llama.loader import tiny_tokenizer

    tok = tiny_tokenizer()
    fam = get_registry().family("llama")
    enc = make_encoder(tok, fam, max_length=512)
    ex = Example(messages=(Message("user", "What is 1 plus 1?"), Message("assistant", "2")))
    feat = enc.encode(ex)
    prompt = enc.encode_prompt("What is 1 plus 1?")
    n = len(prompt)
    assert feat["input_ids"][:n] == prompt  # training and generation see the same prompt ids
    assert feat["input_ids"][0] == tok.bos_token_id and feat["input_ids"][-1] == tok.eos_token_id
    assert feat["labels"][:n] == [IGNORE_INDEX] * n
    assert feat["labels"][n:] == feat["input_ids"][n:]
    assert tok.decode(feat["input_ids"][n:-1]).strip() == "2"
    enc2 = make_encoder(tok, fam, max_length=512, train_on_prompt=True)
    assert enc2.encode(ex)["labels"] == feat["input_ids"]


def _train(out, steps, save_steps, **kw):
    return FineTune(model="tiny-llama").train_local(
        train_fpath=TRAIN, output_dir=out, peft="lora", peft_options={"dropout": 0.0}, max_steps=steps,
        learning_rate=5e-3, max_length=64, per_device_train_batch_size=4, logging_steps=1, report_to=[],
        save_steps=save_steps, **kw)


def test_resume_continues_where_it_stopped_and_crash_during_save_keeps_last_checkpoint(tmp_path, monkeypatch):
    straight = _train(str(tmp_path / "straight"), 8, 4)
    out = str(tmp_path / "crashy")
    from transformers import Trainer

    real = Trainer._save_optimizer_and_scheduler
    calls = {"n": 0}

    def crash_on_second_save(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill during checkpoint save")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        _train(out, 8, 4)
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", real)
    ckpts = sorted(d for d in os.listdir(out) if d.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-4"], "the interrupted checkpoint-8 must not appear half-written"
    assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(os.listdir(os.path.join(out, "checkpoint-4")))
    resumed = _train(out, 8, 4, resume=True)
    assert resumed.global_step == 8
    steps = [r["step"] for r in map(json.loads, open(os.path.join(out, "train_log.jsonl"))) if "loss" in r]
    assert steps[-4:] == [5, 6, 7, 8]
    a, b = losses(str(tmp_path / "straight")), losses(out)
    assert b[-4:] == pytest.approx(a[-4:], rel=1e-4, abs=1e-5)


def test_lmforge_yaml_reproduces_the_run(full_run, tmp_path):
    resolved = load_yaml(os.path.join(full_run.output_dir, "lmforge.yaml"))
    assert resolved["plugins"]["family"]["distribution"] == "llm-plugins-llama"
    assert resolved["plugins"]["peft"] == {"name": "full", "distribution": "lmforge", "version": resolved["lmforge_version"]}
    out = str(tmp_path / "again")
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", os.path.join(full_run.output_dir, "lmforge.yaml"),
                          "-o", out], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert losses(out) == pytest.approx(losses(full_run.output_dir), rel=1e-4)


def test_multi_turn_prompt_equals_training_prefix():
    from lmforge.plugins.descriptors import Example, Message
    from lmforge.data.encoding import make_encoder
    from lmforge.plugins.registry import get_registry
    from llm_plugins_llama.loader import tiny_tokenizer

    tok = tiny_tokenizer()
    enc = make_encoder(tok, get_registry().family("llama"), max_length=512)
    history = (Message("system", "Be brief."), Message("user", "What is 1 plus 1?"), Message("assistant", "2"),
               Message("user", "And 2 plus 2?"))
    full = enc.encode(Example(messages=history + (Message("assistant", "4"),)))
    prompt = enc.encode_prompt(list(history))
    assert full["input_ids"][: len(prompt)] == prompt
    assert prompt.count(tok.eos_token_id) == 1  # the first answer is closed in the prompt too
