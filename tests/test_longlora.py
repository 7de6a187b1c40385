"""LongLoRA's shifted sparse attention (``long_context.shift_attn``): the paper's grouping, and the job wiring.

`reference` below is the paper's S²-Attn written plainly (loops over heads and groups,
``torch.roll`` by G/2 in the second half of the heads, causal by original position
within a group); the attention function must equal it. Then: full attention where the
paper uses it (eval mode, one group), a short LoRA run with ``shift_attn: true`` on
tiny-llama whose grouped path really runs, and the refusals.
"""

from __future__ import annotations

import glob
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import CapabilityError, ConfigError
from lmforge.modeling import longlora
from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "examples", "data", "train.jsonl")
VALID = os.path.join(ROOT, "examples", "data", "valid.jsonl")
TOL = 1e-5


def reference(q, k, v, group, key_valid=None):
    """S²-Attn of (B, H, L, D) tensors (L a multiple of ``group``), one head and one group at a time.

    Heads ``H//2 ..`` see the sequence rolled by ``-group/2``; within a group, query i sees
    key j when j's original position is not after i's (and ``key_valid[b, j]``)."""
    batch, heads, length, dim = q.shape
    if k.shape[1] != heads:
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    out = torch.zeros(batch, heads, length, dim, dtype=q.dtype)
    for h in range(heads):
        shift = group // 2 if h >= heads // 2 else 0
        qh, kh, vh = (torch.roll(t[:, h], -shift, dims=1) for t in (q, k, v))
        pos = torch.roll(torch.arange(length), -shift)
        oh = torch.zeros(batch, length, dim, dtype=q.dtype)
        for g in range(length // group):
            sl = slice(g * group, (g + 1) * group)
            scores = qh[:, sl] @ kh[:, sl].transpose(1, 2) / math.sqrt(dim)
            allowed = (pos[sl][None, :] <= pos[sl][:, None]).expand(batch, group, group).clone()
            if key_valid is not None:
                allowed &= key_valid[:, pos[sl]][:, None, :]
            allowed |= torch.eye(group, dtype=torch.bool)
            scores = scores.masked_fill(~allowed, float("-inf"))
            oh[:, sl] = scores.softmax(-1) @ vh[:, sl]
        out[:, h] = torch.roll(oh, shift, dims=1)
    return out.transpose(1, 2)  # (B, L, H, D), like the attention function


class Layer(torch.nn.Module):
    """What the attention function reads from an attention layer."""

    is_causal = True

    def __init__(self, group, kv_groups=1):
        super().__init__()
        self.num_key_value_groups = kv_groups  # read by transformers' sdpa for grouped-query attention
        setattr(self, longlora.GROUP_ATTR, group)


def qkv(batch=2, heads=4, kv_heads=4, length=16, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, length, dim, generator=g), torch.randn(batch, kv_heads, length, dim, generator=g),
            torch.randn(batch, kv_heads, length, dim, generator=g))


def s2(q, k, v, group, mask=None, training=True):
    layer = Layer(group, q.shape[1] // k.shape[1]).train(training)
    return longlora.shift_attention_forward(layer, q, k, v, mask, scaling=q.shape[-1] ** -0.5)[0]


def full_causal(q, k, v):
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


# ---------------------------------------------------------------- the paper's grouping


@pytest.mark.parametrize("heads,kv_heads,group", [(4, 4, 4), (8, 4, 4), (3, 3, 8), (4, 1, 2), (1, 1, 4)])
def test_attention_equals_the_papers_grouping(heads, kv_heads, group):
    q, k, v = qkv(heads=heads, kv_heads=kv_heads, length=16)
    out = s2(q, k, v, group)
    assert out.shape == (2, 16, heads, 8)
    torch.testing.assert_close(out, reference(q, k, v, group), atol=TOL, rtol=TOL)
    assert (out - full_causal(q, k, v)).abs().max() > 1e-2  # it is sparse: not full attention


def test_shifted_heads_connect_neighbouring_groups():
    """The last token of group 0 reaches the first token of group 1 only through the shifted heads."""
    q, k, v = qkv(heads=2, kv_heads=2, length=8)
    v2 = v.clone()
    v2[:, :, 3] += 10.0  # token 3: last of group 0 (G=4)
    delta = (s2(q, k, v2, 4) - s2(q, k, v, 4)).abs()  # (B, L, H, D)
    assert delta[:, 4, 0].max() < TOL  # unshifted head: token 4 (group 1) does not see token 3
    assert delta[:, 4, 1].max() > 1e-3  # shifted head: groups [2, 6) contain both


def test_lengths_not_a_multiple_of_the_group_are_padded_at_the_end():
    q, k, v = qkv(length=14)
    extra = qkv(length=2, seed=1)
    longer = [torch.cat([a, b], dim=2) for a, b in zip((q, k, v), extra)]
    torch.testing.assert_close(s2(q, k, v, 4), reference(*longer, 4)[:, :14], atol=TOL, rtol=TOL)


def test_padding_mask_is_honoured_per_group():
    q, k, v = qkv(length=16)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, :3] = False  # row 1 is left-padded by 3 tokens
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    mask = (causal[None] & valid[:, None, :])[:, None]  # (B, 1, L, L), as sdpa's mask builder makes it
    out, ref = s2(q, k, v, 4, mask), reference(q, k, v, 4, key_valid=valid)
    torch.testing.assert_close(out[0], ref[0], atol=TOL, rtol=TOL)
    torch.testing.assert_close(out[1, 3:], ref[1, 3:], atol=TOL, rtol=TOL)  # the real tokens of row 1
    assert (out[1, 3:] - s2(q, k, v, 4)[1, 3:]).abs().max() > 1e-3  # the pad tokens were hidden


def test_one_group_of_the_full_length_is_full_causal_attention():
    q, k, v = qkv(length=16)
    torch.testing.assert_close(s2(q, k, v, 16), full_causal(q, k, v), atol=TOL, rtol=TOL)
    # the grouped computation itself, with one group: the shifted heads' wrap-around keeps causality
    for shift in (0, 8):
        out = longlora._grouped_attention(q, k, v, None, 16, 16, shift, 0.0, None).transpose(1, 2)
        torch.testing.assert_close(out, full_causal(q, k, v), atol=TOL, rtol=TOL)


def test_eval_mode_uses_full_attention():
    q, k, v = qkv(heads=8, kv_heads=4, length=16)
    torch.testing.assert_close(s2(q, k, v, 4, training=False), full_causal(q, k, v), atol=TOL, rtol=TOL)


def test_gradients_flow_through_the_groups():
    q, k, v = (t.requires_grad_() for t in qkv(length=12))
    s2(q, k, v, 4).square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (q, k, v))


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-glm4", "tiny-minicpm", "tiny-minicpm3"])
def test_on_a_model_trains_sparse_evaluates_full_and_restores_the_attention(preset, monkeypatch):
    """LLaMA (GQA), GLM-4 (transformers' Glm), MiniCPM (plugin modeling), MiniCPM3 (MLA: v dim != qk dim)."""
    model, _ = load_model(resolve_model(preset), LoadOptions(dtype="fp32"))
    for m in model.modules():  # dropout off: train mode differs from eval mode only by the attention
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.0
    ids = torch.randint(5, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    grouped = []
    real = longlora._grouped_attention
    monkeypatch.setattr(longlora, "_grouped_attention", lambda q, *a: grouped.append(q.shape) or real(q, *a))
    model.train()
    with torch.no_grad():
        sdpa = model(input_ids=ids).logits
        assert longlora.enable_shift_attn(model, 32) == "sdpa"  # one group covers 24 tokens: full attention
        assert model.config._attn_implementation == longlora.ATTN_NAME
        torch.testing.assert_close(model(input_ids=ids).logits, sdpa, atol=TOL, rtol=TOL)
        assert not grouped
        longlora.disable_shift_attn(model)
        longlora.enable_shift_attn(model, 8)
        sparse = model(input_ids=ids).logits
        assert len(grouped) == 2 * model.config.num_hidden_layers  # unshifted and shifted heads, every layer
        model.eval()
        torch.testing.assert_close(model(input_ids=ids).logits, sdpa, atol=TOL, rtol=TOL)  # inference: full
        model.train()
        longlora.disable_shift_attn(model)
        torch.testing.assert_close(model(input_ids=ids).logits, sdpa, atol=TOL, rtol=TOL)
    assert (sparse - sdpa).abs().max() > 1e-4
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, longlora.GROUP_ATTR) for m in model.modules())


@pytest.mark.parametrize("preset", ["tiny-bloom", "tiny-chatglm3"])
def test_a_family_without_transformers_attention_interface_is_refused(preset):
    source = resolve_model(preset)
    model, _ = load_model(source, LoadOptions(dtype="fp32"))
    with pytest.raises(CapabilityError, match=r"long_context.shift_attn: the '.*' family's model .* does not run "
                                              r"its attention through transformers' AttentionInterface"):
        longlora.enable_shift_attn(model, 8, source.family.name)


def _spec(tmp_path, **extra):
    from lmforge.config.spec import build_spec

    raw = {"model": "tiny-llama", "output_dir": str(tmp_path / "run"), "max_length": 64,
           "data": {"train_file": TRAIN, "valid_file": VALID, "max_valid_examples": 16},
           "peft": {"method": "lora", "r": 8}, "long_context": {"shift_attn": True, "group_size_ratio": 0.25},
           "train": {"max_steps": 30, "learning_rate": 3e-3, "per_device_train_batch_size": 4, "logging_steps": 5,
                     "save_steps": 1000, "report_to": [], "eval_strategy": "no"}}
    for key, value in extra.items():
        raw[key] = value
    return build_spec(raw)


def test_config_refusals(tmp_path):
    assert longlora.check_shift_attn(_spec(tmp_path)) == 16
    with pytest.raises(ConfigError, match="long_context.shift_attn: .* cannot be combined with packing"):
        longlora.check_shift_attn(_spec(tmp_path, packing=True))
    for ratio in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"long_context.group_size_ratio: expected a number in \(0, 1\]"):
            longlora.check_shift_attn(_spec(tmp_path, long_context={"shift_attn": True, "group_size_ratio": ratio}))
    with pytest.raises(ConfigError, match="long_context.group_size_ratio: .* needs at least 2"):
        longlora.check_shift_attn(_spec(tmp_path, long_context={"shift_attn": True, "group_size_ratio": 0.01}))
    assert longlora.check_shift_attn(_spec(tmp_path, long_context={"shift_attn": False})) is None


@pytest.mark.slow
def test_lora_training_with_shift_attn_lowers_the_loss_and_saves_normal_attention(tmp_path, monkeypatch):
    from lmforge.train.pipeline import run_training

    grouped = []
    real = longlora._grouped_attention

    def counting(q, *args, **kwargs):
        grouped.append(q.shape[2])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(longlora, "_grouped_attention", counting)
    res = run_training(_spec(tmp_path))
    assert grouped and min(grouped) >= 32  # batches longer than one group (16) ran the S² path
    assert res.eval_loss_after < res.eval_loss_before - 0.5, (res.eval_loss_before, res.eval_loss_after)
    assert res.model.get_base_model().config._attn_implementation == "sdpa"
    configs = glob.glob(os.path.join(res.output_dir, "**", "*.json"), recursive=True)
    assert any(os.path.basename(p) == "config.json" for p in configs)
    for path in configs:
        with open(path, encoding="utf-8") as f:
            assert longlora.ATTN_NAME not in f.read(), path
    with open(glob.glob(os.path.join(res.output_dir, "**", "config.json"), recursive=True)[0]) as f:
        assert json.load(f).get("model_type") == "llama"
