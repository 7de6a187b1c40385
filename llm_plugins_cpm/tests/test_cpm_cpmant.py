"""CPM-Ant: the training-ready forward against transformers' class, and the capability claims."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import CapabilityError
from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model(resolve_model("tiny-cpmant"), LoadOptions())
    return model.eval(), tok


def _registry():
    from lmforge.plugins.registry import get_registry

    return get_registry()


def test_unpadded_inference_equals_transformers(tiny):
    from transformers import CpmAntForCausalLM as Original

    model, _ = tiny
    original = Original(model.config).eval()
    original.load_state_dict(model.state_dict())
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, original(input_ids=ids).logits)
        assert model.generate(ids, max_new_tokens=5, do_sample=False).tolist() == \
            original.generate(ids, max_new_tokens=5, do_sample=False).tolist()


def test_loss_is_the_next_token_loss(tiny):
    model, _ = tiny
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    want = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, want)


def test_trained_tokens_never_see_later_tokens(tiny):
    model, _ = tiny
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    labels = torch.tensor([[-100, -100, -100, 42, 43, 44]])
    changed = ids.clone()
    changed[0, 5] = 60
    with torch.no_grad():
        a = model(input_ids=ids, labels=labels).logits
        b = model(input_ids=changed, labels=labels).logits
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)


def test_padding_side_and_pad_id_do_not_matter(tiny):
    model, tok = tiny
    ids = torch.tensor([[2, 40, 41, 42]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        left = model(input_ids=torch.tensor([[7, 7, 2, 40, 41, 42]]),
                     attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]])).logits[:, 2:]
        right = model(input_ids=torch.tensor([[2, 40, 41, 42, 7, 7]]),
                      attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits[:, :4]
    torch.testing.assert_close(left, plain, rtol=0, atol=1e-4)
    torch.testing.assert_close(right, plain, rtol=0, atol=1e-4)


def test_packing_is_refused_because_samples_would_mix(tiny):
    model, _ = tiny
    cap = _registry().family("cpmant").capability("packing")
    assert not cap.usable and "position_ids" in cap.reason
    a, b = torch.tensor([[2, 40, 41, 42]]), torch.tensor([[2, 50, 51]])
    with torch.no_grad():
        alone_b = model(input_ids=b).logits
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]])).logits
    assert (packed[:, 4:] - alone_b).abs().max() > 1e-3


@pytest.mark.parametrize("kwargs,match", [
    (dict(peft="prefix"), "cut the start off every example"),
    (dict(gradient_checkpointing=True), "do not implement gradient checkpointing"),
    (dict(attn_implementation="flash_attention_2"), "eager implementation"),
])
def test_unsupported_features_are_refused_with_the_reason(kwargs, match, data_files, helpers):
    from lmforge import FineTune

    with pytest.raises(CapabilityError, match=match):
        FineTune(model="tiny-cpmant").train_local(train_fpath=data_files[0], output_dir="/nonexistent/never-written",
                                                  max_steps=1, **kwargs)


def test_the_refusals_match_behaviour(tiny):
    from peft import PrefixTuningConfig, get_peft_model

    model, _ = tiny
    with pytest.raises(ValueError, match="checkpointing"):
        model.gradient_checkpointing_enable()
    prefixed = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        out = prefixed(input_ids=ids).logits  # eval: the virtual tokens displace input positions
    assert out.shape[1] != ids.shape[1]
    prefixed.train()
    try:
        with pytest.raises(RuntimeError):
            prefixed(input_ids=ids, labels=ids)
    finally:
        model.eval()


def test_real_tokenizer_reloads_from_a_vocab_txt_directory(tiny, tmp_path):
    from llm_plugins_cpm.loader import load_local_tokenizer

    _, tok = tiny
    tok.save_pretrained(str(tmp_path))
    again = load_local_tokenizer(str(tmp_path))
    text = "What is 1 plus 1?\n今天天气很好"
    assert type(again).__name__ == "CpmAntTokenizer"
    # transformers' own save_vocabulary breaks the saved object's spaces; this plugin's does not
    assert tok.convert_ids_to_tokens(tok.encode(" \n", add_special_tokens=False)) == [" ", "\n"]
    assert again.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert len(tok) == tok.vocab_size == _registry().family("cpmant").preset("tiny-cpmant").config["vocab_size"]


def test_cpm_ant_10b_preset_is_10b():
    fam = _registry().family("cpmant")
    a = fam.arch_from_config(fam.preset("cpm-ant-10b").config)
    per_layer = 4 * a.hidden_size * a.num_attention_heads * a.dim_per_head + 3 * a.hidden_size * a.intermediate_size
    total = a.num_layers * per_layer + 2 * a.vocab_size * a.hidden_size
    assert 9.5e9 < total < 10.5e9
