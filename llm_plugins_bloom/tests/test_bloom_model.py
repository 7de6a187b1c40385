"""BLOOM behaviour the capability map claims: packing with per-sample ALiBi, prefix tuning's cache
layout, gradient checkpointing, refused flash attention; plus presets and registration."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lmforge.plugins.descriptors import SUPPORTED, UNSUPPORTED
from lmforge.errors import CapabilityError
from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model(resolve_model("tiny-bloom"), LoadOptions())
    return model.eval(), tok


def _family():
    from lmforge.plugins.registry import get_registry

    return get_registry().family("bloom")


# ---------------------------------------------------------------- registration and presets

def test_registration_imports_no_torch():
    code = "import sys, llm_plugins_bloom.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_family_claims_bloom_checkpoints():
    from lmforge.plugins.registry import get_registry

    reg = get_registry()
    assert reg.family_for_config({"model_type": "bloom", "architectures": ["BloomForCausalLM"]}).name == "bloom"
    assert reg.family("bloomz").name == "bloom"


@pytest.mark.parametrize("name,billions", [("bloom-560m", 0.56), ("bloom-1b1", 1.07), ("bloom-1b7", 1.72),
                                           ("bloom-3b", 3.0), ("bloom-7b1", 7.07), ("bloomz-7b1", 7.07),
                                           ("bloom-176b", 176.2)])
def test_published_presets_have_the_published_sizes(name, billions):
    fam = _family()
    arch = fam.arch_from_config(fam.preset(name).config)
    h, n, v = arch.hidden_size, arch.num_layers, arch.vocab_size
    per_layer = 4 * h * h + 4 * h + 2 * h * arch.intermediate_size + arch.intermediate_size + h + 4 * h
    params = v * h + 2 * h + n * per_layer + 2 * h  # embeddings (+LN), layers, final LN; lm_head is tied
    assert abs(params / 1e9 - billions) / billions < 0.03, f"{name}: {params / 1e9:.2f}B"


def test_tiny_tokenizer_fits_the_vocab(tiny):
    model, tok = tiny
    assert len(tok) <= model.config.vocab_size
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)


# ---------------------------------------------------------------- packing: ALiBi restarts per sample

def test_packed_row_matches_samples_run_separately(tiny):
    model, _ = tiny
    a, b = torch.tensor([[5, 6, 7, 8, 9, 10]]), torch.tensor([[11, 12, 13]])
    packed = torch.cat([a, b], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2]])
    with torch.no_grad():
        alone_a, alone_b = model(input_ids=a).logits, model(input_ids=b).logits
        out = model(input_ids=packed, position_ids=positions, use_cache=False).logits
        naive = model(input_ids=packed, use_cache=False).logits
    torch.testing.assert_close(out[:, :6], alone_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:, 6:], alone_b, rtol=0, atol=1e-5)
    # transformers' own path lets the second sample see the first one: what packing must avoid
    assert (naive[:, 6:] - alone_b).abs().max() > 1e-3


def test_packed_alibi_restarts_at_each_sample():
    from llm_plugins_bloom.modeling import alibi_slopes, packed_alibi_and_mask

    pos = torch.tensor([[0, 1, 2, 0, 1]])
    alibi, mask = packed_alibi_and_mask(pos, num_heads=4, dtype=torch.float32)
    slopes = alibi_slopes(4)
    torch.testing.assert_close(alibi.view(4, 5), slopes[:, None] * pos.float())
    visible = mask[0, 0] == 0
    assert visible[3].tolist() == [False, False, False, True, False]  # sample 2 starts fresh
    assert visible[2].tolist() == [True, True, True, False, False]


def test_packed_loss_equals_separate_losses(tiny):
    model, _ = tiny
    a, b = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[11, 12, 13, 14]])
    packed = torch.cat([a, b], dim=1)
    labels = packed.clone()
    labels[0, 4] = -100  # the first token of sample 2 is not predicted from sample 1
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    with torch.no_grad():
        loss_packed = model(input_ids=packed, position_ids=pos, labels=labels, use_cache=False).loss
        la, lb = model(input_ids=a, labels=a).loss, model(input_ids=b, labels=b).loss
    torch.testing.assert_close(loss_packed, (la + lb) / 2, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- prefix tuning: the cache layout

def test_prefix_cache_uses_standard_layout_and_is_attended_as_past_tokens(tiny):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers.cache_utils import Cache

    model, _ = tiny
    cfg = model.config
    torch.manual_seed(0)
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    peft_model.eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        past = peft_model.get_prompt(batch_size=2)
        assert isinstance(past, Cache)
        head_dim = cfg.hidden_size // cfg.n_head
        # (batch, heads, virtual tokens, head_dim) for keys and values alike -- not Bloom's old
        # (batch*heads, head_dim, tokens) key layout that peft used to convert to
        assert tuple(past.layers[0].keys.shape) == (2, cfg.n_head, 5, head_dim)
        assert tuple(past.layers[0].values.shape) == (2, cfg.n_head, 5, head_dim)
        got = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        # the same keys/values fed to the bare model as a 5-token past give the same logits
        base = peft_model.get_base_model()
        past = peft_model.get_prompt(batch_size=2)
        want = base(input_ids=ids, past_key_values=past, attention_mask=torch.ones(2, 9, dtype=torch.long)).logits
        plain = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - plain).abs().max() > 1e-4  # the prefix changes the output


# ---------------------------------------------------------------- gradient checkpointing, flash attention

def test_gradient_checkpointing_gives_the_same_gradients():
    model, _ = load_model(resolve_model("tiny-bloom"), LoadOptions())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model.train()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-5, atol=1e-6)


def test_flash_attention_is_refused_with_the_reason(data_files):
    from lmforge import FineTune

    assert _family().capability("flash_attention").status == UNSUPPORTED
    with pytest.raises(CapabilityError, match="eager only"):
        FineTune(model="tiny-bloom").train_local(train_fpath=data_files[0], output_dir="/nonexistent/never-written",
                                                 attn_implementation="flash_attention_2", max_steps=1)


def test_unipelt_is_refused_before_loading_with_the_reason(data_files):
    from lmforge import FineTune

    assert _family().capability("unipelt").status == UNSUPPORTED
    with pytest.raises(CapabilityError, match="'unipelt' is not supported by the 'bloom' family: .*ALiBi"):
        FineTune(model="tiny-bloom").train_local(train_fpath=data_files[0], output_dir="/nonexistent/never-written",
                                                 peft="unipelt", max_steps=1)


def test_every_supported_claim_is_covered():
    caps = _family().capabilities
    claimed = {k for k, c in caps.items() if c.status == SUPPORTED}
    # full/lora/prefix: test_bloom_training.py; packing and gradient_checkpointing: above;
    # long_context: test_bloom_long_context.py
    assert claimed == {"full", "lora", "prefix", "packing", "gradient_checkpointing", "long_context"}
