"""Long context for the GLM families (llm_plugins_glm.longctx): formulas, refusals, round trips, long forwards.

``extend(config, lc)`` is called the way core's loader calls it: on the config object the family
loader is about to build the model with (here by patching the loader's ``_apply_long_context``, the
one place it calls core), with ``lc`` already resolved.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lmforge.errors import CapabilityError
from lmforge.modeling.loading import LoadOptions, ModelSource, resolve_model
from lmforge.plugins.descriptors import resolve_ref
from lmforge.config.spec import LongContextSpec

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)


LC = LongContextSpec  # a resolved long_context section, built by hand


def _source(preset_name: str, **config_over) -> ModelSource:
    src = resolve_model(preset_name)
    return dataclasses.replace(src, config={**dict(src.config), **config_over})


def _load(monkeypatch, source: ModelSource, lc: LC | None):
    """The GLM loader with ``lc`` applied where core applies it."""
    import llm_plugins_glm.loader as loader

    def apply(cfg, src, options):
        if lc is not None:
            resolve_ref(src.family.extend_context)(cfg, lc)

    monkeypatch.setattr(loader, "_apply_long_context", apply)
    model, tok = loader.load(source, LoadOptions(dtype="float32"))
    return model.eval(), tok


def _roundtrip(monkeypatch, tmp_path, model, tok, input_ids, **forward):
    import llm_plugins_glm.loader as loader

    with torch.no_grad():
        before = model(input_ids=input_ids, **forward).logits
    loader.save(model, tok, str(tmp_path))
    reloaded, _ = _load(monkeypatch, resolve_model(str(tmp_path)), None)  # a saved run needs nothing passed
    with torch.no_grad():
        after = reloaded(input_ids=input_ids, **forward).logits
    torch.testing.assert_close(after, before)
    return reloaded


def _plain_ids(tok, n: int, seed: int = 0) -> torch.Tensor:
    special = set(tok.all_special_ids)
    pool = [i for i in range(10, 200) if i not in special]
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([pool[j] for j in torch.randint(len(pool), (n,), generator=g).tolist()])[None]


# ------------------------------------------------------------------ declarations


def test_families_declare_methods_and_extend():
    from llm_plugins_glm import plugin

    for fam, first in ((plugin.CHATGLM2, "ntk"), (plugin.CHATGLM3, "ntk"), (plugin.GLM4, "ntk"),
                       (plugin.GLM, "linear"), (plugin.CHATGLM, "linear")):
        assert fam.long_context_methods[0] == first
        assert callable(resolve_ref(fam.extend_context))
        assert fam.capability("long_context").status == "supported"


# ------------------------------------------------------------------ ChatGLM2/3, GLM-4 THUDM layout: rope_ratio


@pytest.mark.parametrize("preset,ratio0", [("tiny-chatglm3", 1.0), ("tiny-chatglm2", 1.0)])
def test_chatglm2_rope_ratio_is_ntk_formula(preset, ratio0):
    from llm_plugins_glm.configuration import ChatGLM2Config
    from llm_plugins_glm.longctx import extend_chatglm2
    from llm_plugins_glm.modeling_chatglm2 import ChatGLM2ForConditionalGeneration

    cfg = ChatGLM2Config(**{k: v for k, v in resolve_model(preset).config.items()
                            if k not in ("model_type", "_name_or_path")})
    orig = cfg.seq_length
    extend_chatglm2(cfg, LC("ntk", 4.0, orig))
    d = cfg.kv_channels // 2  # ChatGLM2 rotates half of each head
    assert cfg.rope_ratio == pytest.approx(ratio0 * 4.0 ** (d / (d - 2)))
    assert cfg.seq_length == 4 * orig
    torch.manual_seed(0)
    model = ChatGLM2ForConditionalGeneration(cfg)
    pos = torch.arange(0, 300, 7)[None]
    cache = model.transformer.rotary_pos_emb(pos)
    base = 10000 * cfg.rope_ratio
    theta = torch.tensor([base ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angle = pos[0].double()[:, None] * theta
    torch.testing.assert_close(cache[0, :, :, 0].double(), torch.cos(angle), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache[0, :, :, 1].double(), torch.sin(angle), rtol=1e-5, atol=1e-5)


def test_chatglm2_ratio_stacks_on_released_ratio():
    """chatglm3-6b-32k's rope_ratio 50 (base 500,000) is multiplied, not replaced."""
    from llm_plugins_glm.configuration import ChatGLM2Config
    from llm_plugins_glm.longctx import extend_chatglm2

    cfg = ChatGLM2Config(**{k: v for k, v in resolve_model("chatglm3-6b-32k").config.items()
                            if k not in ("model_type", "_name_or_path")})
    extend_chatglm2(cfg, LC("ntk", 2.0, 32768))
    assert cfg.rope_ratio == pytest.approx(50 * 2.0 ** (64 / 62))
    assert cfg.seq_length == 65536


@pytest.mark.parametrize("method", ["linear", "dynamic", "yarn", "llama3"])
def test_chatglm2_refuses_other_methods_with_reason(method):
    from llm_plugins_glm.configuration import ChatGLM2Config
    from llm_plugins_glm.longctx import extend_chatglm2, extend_glm4

    cfg = ChatGLM2Config(seq_length=8192)
    with pytest.raises(CapabilityError, match="reads only rope_ratio"):
        extend_chatglm2(cfg, LC(method, 2.0, 8192))
    cfg = ChatGLM2Config(seq_length=8192)  # GLM-4 in THUDM's layout: the same modeling, the same refusal
    with pytest.raises(CapabilityError, match="reads only rope_ratio"):
        extend_glm4(cfg, LC(method, 2.0, 8192))
    assert cfg.rope_ratio == 1 and cfg.seq_length == 8192


def test_chatglm3_roundtrip_and_forward_beyond_original(monkeypatch, tmp_path):
    lc = LC("ntk", 2.0, 64)
    model, tok = _load(monkeypatch, _source("tiny-chatglm3", seq_length=64), lc)
    assert model.config.seq_length == 128 and model.config.rope_ratio == pytest.approx(2.0 ** (8 / 6))
    ids = _plain_ids(tok, 160)  # beyond the extended window too: rotary positions have no table
    reloaded = _roundtrip(monkeypatch, tmp_path, model, tok, ids)
    import json

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["seq_length"] == 128 and saved["rope_ratio"] == pytest.approx(2.0 ** (8 / 6))
    assert reloaded.transformer.rotary_pos_emb.rope_ratio == pytest.approx(2.0 ** (8 / 6))
    with torch.no_grad():
        out = reloaded.generate(input_ids=ids[:, :120], max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert out.shape[1] == 132


def test_glm4_thudm_layout_uses_rope_ratio():
    from llm_plugins_glm.configuration import ChatGLM2Config
    from llm_plugins_glm.longctx import extend_glm4

    cfg = ChatGLM2Config(**{k: v for k, v in resolve_model("glm-4-9b").config.items()
                            if k not in ("model_type", "_name_or_path")})
    extend_glm4(cfg, LC("ntk", 2.0, 131072))
    assert cfg.rope_ratio == pytest.approx(500 * 2.0 ** (64 / 62)) and cfg.seq_length == 262144


# ------------------------------------------------------------------ GLM-4, transformers' layout


def _glm4_hf(lc: LC):
    from transformers import GlmConfig, GlmForCausalLM

    from llm_plugins_glm.longctx import extend_glm4

    cfg = GlmConfig(**{**{k: v for k, v in resolve_model("tiny-glm4").config.items() if k != "model_type"},
                       "max_position_embeddings": 64})
    base = cfg.rope_parameters["rope_theta"]
    extend_glm4(cfg, lc)
    torch.manual_seed(0)
    return cfg, base, GlmForCausalLM(cfg).eval()


@pytest.mark.parametrize("method", ["linear", "ntk"])
def test_glm4_hf_inv_freq_formula(method):
    cfg, theta, model = _glm4_hf(LC(method, 2.0, 64))
    d = 8  # head_dim 16 x partial_rotary_factor 0.5
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    if method == "linear":
        assert cfg.rope_parameters["rope_type"] == "linear" and cfg.rope_parameters["factor"] == 2.0
        want = inv / 2.0
    else:
        want = 1.0 / (theta * 2.0 ** (d / (d - 2))) ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    assert cfg.max_position_embeddings == 128
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.double(), want, rtol=1e-6, atol=0)


def test_glm4_hf_yarn_roundtrip_beyond_original(tmp_path):
    from transformers import GlmForCausalLM

    cfg, _, model = _glm4_hf(LC("yarn", 2.0, 64))
    assert cfg.rope_parameters["rope_type"] == "yarn"
    ids = torch.randint(10, 900, (1, 150))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    again = GlmForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.rope_parameters["rope_type"] == "yarn"
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, before)


# ------------------------------------------------------------------ GLM v1: learned tables, interpolated


def test_glm_v1_interpolated_positions_equal_formula(monkeypatch):
    from llm_plugins_glm.modeling_glm import interpolated_embedding

    table = torch.nn.Embedding(65, 8)
    pos = torch.tensor([[0, 1, 2, 3, 7, 100, 127]])
    got = interpolated_embedding(table, pos, 2.0)
    w = table.weight.detach()
    for k, p in enumerate(pos[0].tolist()):
        lo, frac = p // 2, (p % 2) / 2
        want = w[lo] * (1 - frac) + w[min(lo + 1, 64)] * frac
        torch.testing.assert_close(got[0, k].detach(), want)
    torch.testing.assert_close(interpolated_embedding(table, pos[:, :3], 1.0), table(pos[:, :3]))


def test_glm_v1_extends_both_channels_roundtrip(monkeypatch, tmp_path):
    import json

    lc = LC("linear", 2.0, 64)
    model, tok = _load(monkeypatch, _source("tiny-glm", max_sequence_length=64), lc)
    stack = model.glm.transformer
    assert model.config.max_sequence_length == 128 and stack.position_factor == 2.0
    assert stack.position_embeddings.num_embeddings == 65  # the trained rows, unchanged in shape
    assert stack.block_position_embeddings.num_embeddings == 65
    n = 128  # factor x the trained length
    ids = _plain_ids(tok, n)
    pos = torch.stack([torch.arange(n), torch.arange(n) % 7], dim=0)[None]
    mask = torch.ones(1, 1, n, n).tril()
    _roundtrip(monkeypatch, tmp_path, model, tok, ids, position_ids=pos, attention_mask=mask)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["max_sequence_length"] == 128 and saved["position_interpolation_factor"] == 2.0
    assert saved["original_max_sequence_length"] == 64
    # without the extension the same positions are past the learned table
    plain, _ = _load(monkeypatch, _source("tiny-glm", max_sequence_length=64), None)
    with pytest.raises(IndexError):
        plain(input_ids=ids, position_ids=pos, attention_mask=mask)


def test_glm_v1_refuses_frequency_methods():
    from llm_plugins_glm.configuration import GLMConfig
    from llm_plugins_glm.longctx import extend_block_positions

    with pytest.raises(CapabilityError, match="position interpolation"):
        extend_block_positions(GLMConfig(max_sequence_length=512), LC("ntk", 2.0, 512))


# ------------------------------------------------------------------ ChatGLM-6B: 2D rotary, interpolated


def test_chatglm6b_rotary_positions_equal_formula(monkeypatch, tmp_path):
    import json

    lc = LC("linear", 4.0, 64)
    model, tok = _load(monkeypatch, _source("tiny-chatglm", max_sequence_length=64), lc)
    assert model.config.max_sequence_length == 256
    rot = model.transformer.layers[0].attention.rotary_emb
    pos = torch.arange(0, 250, 9)[None]
    cos, sin = rot(pos, torch.float32)
    angle = (pos[0].float() / 4.0)[:, None] * rot.inv_freq
    angle = torch.cat([angle, angle], dim=-1)
    torch.testing.assert_close(cos[0, :, 0], angle.cos())
    torch.testing.assert_close(sin[0, :, 0], angle.sin())
    ids = torch.cat([_plain_ids(tok, 200), torch.tensor([[tok.convert_tokens_to_ids("[gMASK]"),
                                                           tok.convert_tokens_to_ids("<sop>")]])], dim=1)
    _roundtrip(monkeypatch, tmp_path, model, tok, ids)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["position_interpolation_factor"] == 4.0 and saved["max_sequence_length"] == 256


def test_unextended_save_writes_no_long_context_keys(monkeypatch, tmp_path):
    import json

    import llm_plugins_glm.loader as loader

    model, tok = _load(monkeypatch, resolve_model("tiny-chatglm3"), None)
    loader.save(model, tok, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "rope_ratio" not in saved and "position_interpolation_factor" not in saved
    assert math.isclose(saved["seq_length"], 8192)
