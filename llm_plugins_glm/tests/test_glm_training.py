"""Every tiny preset through lmforge's pipeline: full, LoRA and prefix training lower the loss; the run
reloads to the same logits; batched (left-padded) generation equals one-prompt-at-a-time generation."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest
import torch

import lmforge
from glm_testing import PRESET, PROMPTS, VARIANTS, encoder_for, generate_ids, load_preset

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)

METHODS = {"full": dict(lr=3e-3), "lora": dict(lr=2e-2, peft_options={"r": 8, "dropout": 0.0}),
           "prefix": dict(lr=1e-1, peft_options={"num_virtual_tokens": 4})}
PROBE = "What is 2 plus 3?"
CASES = [(v, m) for v in VARIANTS for m in METHODS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_file):
    """Trains each (variant, method) once, on first use; records the in-memory model's probe logits at save time."""
    import lmforge.train.pipeline as training

    done: dict = {}

    def get(variant: str, method: str):
        key = (variant, method)
        if key in done:
            return done[key]
        out = str(tmp_path_factory.mktemp(f"{variant}-{method}"))
        captured = {}
        original = training.save_outputs

        def save_and_probe(model, tokenizer, source, meth, out_dir, ctx):
            enc = encoder_for(tokenizer, source.family)
            ids = torch.tensor([enc.encode_prompt(PROBE)])
            model.eval()
            with torch.no_grad():
                captured["logits"] = model(input_ids=ids).logits.float()
            captured["ids"] = ids
            return original(model, tokenizer, source, meth, out_dir, ctx)

        spec = METHODS[method]
        with mock.patch.object(training, "save_outputs", save_and_probe):
            result = lmforge.FineTune(model=PRESET[variant]).train_local(
                train_fpath=data_file, output_dir=out, peft=method, peft_options=spec.get("peft_options"),
                max_steps=9, learning_rate=spec["lr"], per_device_train_batch_size=8, logging_steps=3,
                save_strategy="no", report_to=[], max_length=64, seed=0)
        with open(os.path.join(out, "train_log.jsonl")) as f:
            losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
        done[key] = dict(result=result, dir=out, losses=losses, **captured)
        return done[key]

    return get


@pytest.mark.parametrize("variant, method", CASES)
def test_training_lowers_the_loss(runs, variant, method):
    losses = runs(variant, method)["losses"]
    assert len(losses) >= 3
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("variant, method", CASES)
def test_saved_run_reloads_to_identical_logits(runs, variant, method):
    run = runs(variant, method)
    model, _ = lmforge.load(run["dir"])
    with torch.no_grad():
        logits = model(input_ids=run["ids"]).logits.float()
    torch.testing.assert_close(logits, run["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant, method", CASES)
def test_batched_generation_equals_single_prompt_generation(runs, variant, method):
    run = runs(variant, method)
    model, _ = lmforge.load(run["dir"])
    _, tok, fam = load_preset(variant)  # the family tokenizer (see test_adapter_run_completion_* below)
    enc = encoder_for(tok, fam)
    batched = generate_ids(model, enc, PROMPTS)
    single = [generate_ids(model, enc, [p])[0] for p in PROMPTS]
    assert batched == single
    assert any(batched)


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_run_is_a_released_layout_checkpoint_and_completion_works(runs, variant):
    run = runs(variant, "full")
    with open(os.path.join(run["dir"], "config.json")) as f:
        cfg = json.load(f)
    expected_type = {"glm4": "glm"}.get(variant, "chatglm" if variant.startswith("chatglm") else "glm")
    assert cfg["model_type"] == expected_type
    assert not {"num_key_value_heads", "sop_token_id", "mask_token_ids"} & set(cfg) or variant == "glm4"
    comp = lmforge.Completion(run["dir"])
    batched = [r.token_ids[0] for r in comp.generate_batch(PROMPTS, max_new_tokens=6)]
    single = [comp.generate(p, max_new_tokens=6).token_ids[0] for p in PROMPTS]
    assert batched == single


@pytest.mark.parametrize("variant", ["chatglm2", "chatglm3", "glm4"])
def test_adapter_run_completion_uses_the_family_tokenizer(runs, variant):
    run = runs(variant, "lora")
    comp = lmforge.Completion(run["dir"])
    _, tok, _ = load_preset(variant)
    assert type(comp.tokenizer) is type(tok)
