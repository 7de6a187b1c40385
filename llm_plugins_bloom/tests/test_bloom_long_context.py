"""Long context for BLOOM: ALiBi needs no table, so ``method: family`` only raises ``seq_length``.

The bias at twice the trained length is the published ALiBi formula, a model extended this way
runs and generates past its trained length, and its saved config reloads to the same logits.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import CapabilityError
from lmforge.modeling.loading import LoadOptions, load_model, resolve_model
from lmforge.config.spec import LongContextSpec

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)


LC = LongContextSpec  # a resolved long_context section, built by hand


def _extended(seq_length: int, factor: float):
    from transformers import BloomConfig

    from llm_plugins_bloom.loader import extend
    from llm_plugins_bloom.modeling import BloomForCausalLM

    cfg = BloomConfig(**{**{k: v for k, v in resolve_model("tiny-bloom").config.items() if k != "model_type"},
                         "seq_length": seq_length})
    extend(cfg, LC("family", factor, seq_length))
    torch.manual_seed(0)
    return cfg, BloomForCausalLM(cfg).eval()


def test_family_declares_the_no_op_method():
    from llm_plugins_bloom.plugin import BLOOM

    assert BLOOM.long_context_methods == ("family",)
    assert BLOOM.capability("long_context").status == "supported"


def test_extend_raises_seq_length_only():
    cfg, model = _extended(64, 2.0)
    assert cfg.seq_length == 128
    assert not any("position" in name for name, _ in model.named_parameters())  # nothing to rescale


@pytest.mark.parametrize("method", ["linear", "dynamic", "yarn", "llama3", "ntk"])
def test_rope_methods_are_refused_with_reason(method):
    from transformers import BloomConfig

    from llm_plugins_bloom.loader import extend

    cfg = BloomConfig(seq_length=2048)
    with pytest.raises(CapabilityError, match="ALiBi"):
        extend(cfg, LC(method, 2.0, 2048))
    assert cfg.seq_length == 2048


def test_alibi_at_twice_the_length_is_the_published_formula():
    """ALiBi (Press et al.): head h of H adds m_h * j to key j's score, m_h = 2^(-8h/H); no length limit."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    heads, length = 4, 256
    alibi = build_alibi_tensor(torch.ones(1, length), heads, torch.float32).view(heads, length)
    slopes = torch.tensor([2.0 ** (-8 * h / heads) for h in range(1, heads + 1)])
    torch.testing.assert_close(alibi, slopes[:, None] * torch.arange(length, dtype=torch.float32)[None])


def test_forward_and_generate_at_twice_the_trained_length_and_roundtrip(tmp_path):
    cfg, model = _extended(64, 2.0)
    ids = torch.randint(10, 1000, (1, 2 * 64))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        out = model.generate(input_ids=ids[:, :120], max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert logits.shape[1] == 128 and torch.isfinite(logits).all()
    assert out.shape[1] == 136
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["seq_length"] == 128
    from llm_plugins_bloom.loader import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path)
    again, _ = load_model(resolve_model(str(tmp_path)), LoadOptions(dtype="float32"))
    assert again.config.seq_length == 128
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(input_ids=ids).logits, logits)
