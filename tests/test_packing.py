"""Packed training: bin packing, packed batches, and the proof that packing changes nothing but speed.

The central check (`test_packed_batch_equals_examples_one_by_one`) runs, for every installed
family that claims packing, a packed batch and the same examples one at a time, and compares
per-token losses and every parameter gradient within 1e-5 (fp32). `test_equality_check_has_teeth`
runs the same comparison with samples allowed to see each other and requires it to fail.
"""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch

from lmforge.plugins.descriptors import Example, Message
from lmforge.data.encoding import IGNORE_INDEX, make_encoder
from lmforge.errors import CapabilityError
from lmforge.modeling.loading import LoadOptions, load_model, resolve_model
from lmforge.packing import (
    ATTN_NAME,
    PACKED_KEY,
    collate_packed_rows,
    group_features,
    pack_features,
    pack_lengths,
    prepare_packed_training,
    register_packed_attention,
    segment_attention_forward,
    verify_no_cross_attention,
)
from lmforge.plugins.registry import get_registry
from lmforge.data.collate import make_collator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "examples", "data", "train.jsonl")
TOL = 1e-5


# ---------------------------------------------------------------- bin packing


def test_pack_lengths_places_every_item_once_within_capacity():
    rng = random.Random(0)
    lengths = [max(1, min(512, int(rng.lognormvariate(math.log(60), 1.0)))) for _ in range(3000)]
    bins = pack_lengths(lengths, 512)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    lower_bound = math.ceil(sum(lengths) / 512)
    assert len(bins) <= lower_bound * 1.01 + 1  # best-fit decreasing is within 1% of the bound here
    assert pack_lengths(lengths, 512) == bins  # deterministic


def test_pack_lengths_rejects_items_that_cannot_fit():
    with pytest.raises(ValueError, match="outside 1..8"):
        pack_lengths([3, 9], 8)


def test_offline_groups_keep_records_together_and_split_overlong_ones():
    feats = [{"input_ids": [1] * n, "labels": [1] * n} for n in (3, 4, 5, 6, 2)]
    groups = [("f", 1), ("f", 1), ("f", 2), ("f", 2), ("f", 3)]
    ds, stats = group_features(feats, groups, max_length=10)
    assert ds.rows == [[0, 1], [2], [3], [4]]  # record 2 (5 + 6 tokens) does not fit 10 slots
    assert stats.split_groups == 1 and stats.real_tokens == 20
    assert len(ds[0][PACKED_KEY]) == 2


# ---------------------------------------------------------------- packed batches


def test_collated_row_restarts_positions_and_ignores_each_first_label():
    a = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}
    b = {"input_ids": [8, 9], "labels": [8, 9]}
    c = {"input_ids": [10, 11, 12, 13], "labels": [10, 11, 12, 13]}
    batch = collate_packed_rows([[a, b], [c]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    # the first token of each example is never a prediction target (the causal shift drops it alone)
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 11, 12, 13, -100]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9, 10]  # the padding tail is its own segment
    assert batch["max_length_q"] == 4
    assert batch["use_cache"] is False and "attention_mask" not in batch


def test_segments_from_positions_match_segments_from_cu_seq_lens():
    torch.manual_seed(0)
    batch = collate_packed_rows([[{"input_ids": [1] * 5}, {"input_ids": [1] * 3}], [{"input_ids": [1] * 8}]], 0)

    class Attn:
        num_key_value_groups = 2
        is_causal = True

    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    by_cu, _ = segment_attention_forward(Attn(), q, k, v, None, cu_seq_lens_q=batch["cu_seq_lens_q"])
    by_pos, _ = segment_attention_forward(Attn(), q, k, v, None, position_ids=batch["position_ids"])
    alone = torch.nn.functional.scaled_dot_product_attention(q[:1, :, 5:], k[:1, :, 5:], v[:1, :, 5:],
                                                              is_causal=True, enable_gqa=True)
    torch.testing.assert_close(by_cu, by_pos, rtol=0, atol=0)
    torch.testing.assert_close(by_cu[:1, 5:], alone.transpose(1, 2), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the proof


def packing_families() -> list[tuple[str, str]]:
    out = []
    for fam in get_registry().families():
        tiny = next((p.name for p in fam.presets if p.tiny), None)
        if tiny and fam.capability("packing").usable:
            out.append((fam.name, tiny))
    return out


WORDS = ("alpha beta gamma delta apples seven nine plus answer river stone the of and 17 42 "
         "你好 计算 苹果").split()


def make_examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))
        if i % 4 == 3:
            out.append(Example(text=prompt + " " + answer, source=("mem", i)))
        else:
            out.append(Example(messages=(Message("user", prompt), Message("assistant", answer)), source=("mem", i)))
    return out


def setup_family(preset: str, n_examples: int = 7, max_length: int = 128):
    source = resolve_model(preset)
    model, tokenizer = load_model(source, LoadOptions(dtype="fp32"))
    model.train()  # tiny presets have no dropout; train mode is what packing runs in
    encoder = make_encoder(tokenizer, source.family, max_length=max_length)
    feats = [f for f in (encoder.encode(ex) for ex in make_examples(n_examples)) if f is not None]
    assert len(feats) >= 4
    return source, model, tokenizer, encoder, feats


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position loss of predicting ``labels[t + 1]`` (the causal shift), 0 where ignored."""
    target = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="none").view(target.shape)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def packed_vs_one_by_one(model, batch: dict, rows: list[list[dict]], single_collate, reference_setup=None):
    """Largest per-token-loss and gradient differences between a packed batch and its examples run alone.

    The packed loss is the model's own (mean over every trained token of the batch); the
    unpacked reference sums each example's token losses and divides by the same count,
    i.e. the per-token mean of an unpacked batch.
    """
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    packed_grads = grads(model)
    packed_tok = token_losses(out.logits.detach(), batch["labels"])
    packed_loss = out.loss.detach()

    if reference_setup is not None:
        reference_setup()
    model.zero_grad()
    n_trained = sum(sum(1 for lab in f["labels"][1:] if lab != IGNORE_INDEX) for row in rows for f in row)
    # Trainer's num_items_in_batch (trained labels after the shift) is the same packed or not
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == n_trained
    loss_diff, total = 0.0, 0.0
    for r, row in enumerate(rows):
        start = 0
        for f in row:
            n = len(f["input_ids"])
            single = single_collate([f])
            assert single["input_ids"].shape[1] == n  # one example alone: no padding
            o = model(**single, use_cache=False)
            tok = token_losses(o.logits, single["labels"])
            (tok.sum() / n_trained).backward()
            total += float(tok.sum().detach())
            loss_diff = max(loss_diff, float((tok.detach()[0] - packed_tok[r, start:start + n]).abs().max()))
            start += n
    single_grads = grads(model)
    assert packed_grads.keys() == single_grads.keys()
    grad_diff = max(float((packed_grads[k] - single_grads[k]).abs().max()) for k in packed_grads)
    mean_diff = abs(float(packed_loss) - total / n_trained)
    return max(loss_diff, mean_diff), grad_diff


@pytest.mark.parametrize("family,preset", packing_families())
def test_packed_batch_equals_examples_one_by_one(family, preset):
    source, model, tokenizer, encoder, feats = setup_family(preset)
    unpacked = make_collator(encoder, tokenizer)
    setup = prepare_packed_training(model, encoder, tokenizer, feats, max_length=128, fallback=unpacked)
    assert len(setup.dataset) >= 2
    rows = [setup.dataset[i][PACKED_KEY] for i in range(len(setup.dataset))]
    batch = setup.collator([setup.dataset[i] for i in range(len(setup.dataset))])
    assert sum(len(r) > 1 for r in rows) >= 1  # at least one row really holds several examples
    loss_diff, grad_diff = packed_vs_one_by_one(model, batch, rows, unpacked,
                                                reference_setup=lambda: setup.restore(model))
    assert model.config._attn_implementation == setup.previous_attention  # restore() undid the swap
    assert loss_diff <= TOL, f"{family}: per-token losses differ by {loss_diff:.3g}"
    assert grad_diff <= TOL, f"{family}: gradients differ by {grad_diff:.3g}"


def test_equality_check_has_teeth():
    """The same comparison with samples allowed to see each other (plain causal rows) must fail."""
    source, model, tokenizer, encoder, feats = setup_family("tiny-llama")
    unpacked = make_collator(encoder, tokenizer)
    ds, _ = pack_features(feats, 128)
    rows = [ds[i][PACKED_KEY] for i in range(len(ds))]
    clean = collate_packed_rows(rows, tokenizer.pad_token_id)
    # LLaMA-Factory's `packing`: the same rows and labels, but ordinary causal attention over the whole row
    leaky = {"input_ids": clean["input_ids"], "labels": clean["labels"], "use_cache": False}
    loss_diff, grad_diff = packed_vs_one_by_one(model, leaky, rows, unpacked)
    assert loss_diff > 1e3 * TOL and grad_diff > 10 * TOL


def test_runtime_probe_refuses_a_model_that_lets_samples_mix():
    source, model, tokenizer, encoder, feats = setup_family("tiny-llama")

    def leaky_collate(items):  # drops the example boundaries: plain causal attention over the row
        batch = collate_packed_rows([it[PACKED_KEY] for it in items], tokenizer.pad_token_id)
        return {"input_ids": batch["input_ids"], "labels": batch["labels"], "use_cache": False}

    with pytest.raises(CapabilityError, match="influence each other"):
        verify_no_cross_attention(model, leaky_collate, feats)
    register_packed_attention()
    model.set_attn_implementation(ATTN_NAME)
    good = lambda items: collate_packed_rows([it[PACKED_KEY] for it in items], tokenizer.pad_token_id)  # noqa: E731
    assert verify_no_cross_attention(model, good, feats) <= 1e-4


def test_padded_batches_through_packed_attention_match_sdpa():
    """Eval batches stay padded: the packed attention must then behave exactly like sdpa."""
    source, model, tokenizer, encoder, feats = setup_family("tiny-llama")
    model.eval()
    batch = make_collator(encoder, tokenizer)(feats[:4])
    assert not bool(batch["attention_mask"].all())
    with torch.no_grad():
        ref = model(**batch).logits
        register_packed_attention()
        model.set_attn_implementation(ATTN_NAME)
        got = model(**batch).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], ref[mask], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- capability and job wiring


def test_packing_is_refused_with_the_family_reason():
    from lmforge.config.schema import validate
    from lmforge.modeling.loading import ModelSource
    from lmforge.train.pipeline import check_capabilities

    reg = get_registry()
    generic = reg.family("causal-lm")
    cfg = validate({"model": "tiny-llama", "data": {"train_file": TRAIN}, "packing": True}, reg)
    with pytest.raises(CapabilityError, match="packing: the 'causal-lm' family cannot be packed safely: the generic"):
        check_capabilities(cfg, ModelSource(family=generic, config={}), reg)
    check_capabilities(cfg, resolve_model("tiny-llama", registry=reg), reg)  # LLaMA claims packing


def test_train_local_packed_logs_efficiency_and_saves_a_plain_model(tmp_path):
    from lmforge import FineTune

    out = str(tmp_path / "run")
    res = FineTune(model="tiny-llama").train_local(
        train_fpath=TRAIN, output_dir=out, peft="full", max_steps=2, max_length=256, per_device_train_batch_size=2,
        report_to=[], logging_steps=1, save_steps=1000, use_packed_training=True)
    assert math.isfinite(res.train_loss)
    with open(os.path.join(out, "train_results.json")) as f:
        packing = json.load(f)["packing"]
    assert packing["mode"] == "online" and packing["examples"] == 2000 and packing["efficiency"] > 0.9
    with open(os.path.join(out, "config.json")) as f:
        assert ATTN_NAME not in f.read()  # the packed attention is a training detail, not part of the model


def test_data_pack_file_trains_as_the_same_rows(tmp_path):
    """`lmforge data pack` writes rows that, read back with online_packing: false, are the online rows."""
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli
    from lmforge.packing import feature_lengths

    out = str(tmp_path / "packed.jsonl")
    result = CliRunner().invoke(build_cli(), ["data", "pack", TRAIN, "-m", "tiny-llama", "-o", out,
                                              "--max-length", "256"])
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert sum(len(r["output"]) for r in records) == 2000

    from lmforge.data.readers import load_examples

    source = resolve_model("tiny-llama")
    _, tokenizer = load_model(source, LoadOptions(dtype="fp32"))
    encoder = make_encoder(tokenizer, source.family, max_length=256)
    online = [f for f in (encoder.encode(e) for e in load_examples(TRAIN)) if f is not None]
    packed_examples = load_examples(out, "packed")
    offline = [encoder.encode(e) for e in packed_examples]
    ds_off, stats_off = group_features(offline, [e.source for e in packed_examples], 256)
    ds_on, stats_on = pack_features(online, 256)
    assert stats_off.split_groups == 0 and stats_off.rows == stats_on.rows == len(records)
    assert [feature_lengths(ds_off[i][PACKED_KEY]) for i in range(len(ds_off))] == \
        [feature_lengths(ds_on[i][PACKED_KEY]) for i in range(len(ds_on))]
