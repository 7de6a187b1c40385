"""MiniCPM 1/2 (and 9G): the three scalings by hand, released checkpoints, packing, checkpointing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lmforge.plugins.descriptors import SUPPORTED
from lmforge.modeling.loading import LoadOptions, load_model, resolve_model, save_model

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)


def _registry():
    from lmforge.plugins.registry import get_registry

    return get_registry()


def _one_layer(**over):
    from llm_plugins_cpm.minicpm_modeling import MiniCPMConfig, MiniCPMForCausalLM

    cfg = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, scale_emb=12, scale_depth=1.4, dim_model_base=4, rms_norm_eps=1e-5,
               initializer_range=0.1, attn_implementation="eager")
    cfg.update(over)
    torch.manual_seed(0)
    model = MiniCPMForCausalLM(MiniCPMConfig(**cfg)).double().eval()
    with torch.no_grad():  # norms away from 1 so a wrong norm placement shows
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def _hand_logits(model, ids):
    """The released MiniCPM forward written out with plain tensor ops (float64)."""
    c = model.config
    sd = {k: v for k, v in model.state_dict().items()}
    H, n_heads, n_kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    d = H // n_heads
    length = ids.shape[1]

    def rms(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps) * w

    def rope(x):  # x: (heads, length, d)
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        ang = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        rot = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
        return x * cos + rot * sin

    x = sd["model.embed_tokens.weight"][ids[0]] * c.scale_emb  # scaling 1: embeddings x scale_emb
    branch = c.scale_depth / math.sqrt(c.num_hidden_layers)
    p = "model.layers.0."
    h = rms(x, sd[p + "input_layernorm.weight"])
    q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(length, n_heads, d).transpose(0, 1)
    k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(length, n_kv, d).transpose(0, 1)
    v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(length, n_kv, d).transpose(0, 1)
    q, k = rope(q), rope(k)
    k, v = k.repeat_interleave(n_heads // n_kv, 0), v.repeat_interleave(n_heads // n_kv, 0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
    att = (scores.softmax(-1) @ v).transpose(0, 1).reshape(length, H) @ sd[p + "self_attn.o_proj.weight"].T
    x = x + att * branch  # scaling 2: residual branch x scale_depth / sqrt(L)
    h = rms(x, sd[p + "post_attention_layernorm.weight"])
    gate, up = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
    mlp = (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    x = x + mlp * branch
    x = rms(x, sd["model.norm.weight"])
    return (x / (H / c.dim_model_base)) @ sd["model.embed_tokens.weight"].T  # scaling 3, tied head


def test_three_scalings_match_a_hand_computation():
    model = _one_layer()
    ids = torch.tensor([[3, 17, 5, 29, 8]])
    with torch.no_grad():
        got = model(input_ids=ids).logits[0]
    torch.testing.assert_close(got, _hand_logits(model, ids), rtol=1e-6, atol=1e-6)  # RoPE tables are float32


@pytest.mark.parametrize("knob", ["scale_emb", "scale_depth", "dim_model_base"])
def test_each_scaling_changes_the_output_as_computed(knob):
    over = {"scale_emb": 3.0, "scale_depth": 0.5, "dim_model_base": 8}
    model = _one_layer(**{knob: over[knob]})
    ids = torch.tensor([[3, 17, 5, 29, 8]])
    with torch.no_grad():
        got = model(input_ids=ids).logits[0]
        default = _one_layer()(input_ids=ids).logits[0]
    torch.testing.assert_close(got, _hand_logits(model, ids), rtol=1e-6, atol=1e-6)  # RoPE tables are float32
    assert (got - default).abs().max() > 1e-3


def test_neutral_scalings_reduce_to_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = _one_layer(scale_emb=1, scale_depth=1, dim_model_base=16)  # sqrt(1 layer) = 1, 16/16 = 1
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in model.config.to_dict().items()
                                             if k not in ("scale_emb", "scale_depth", "dim_model_base", "model_type",
                                                          "architectures", "transformers_version")})).double().eval()
    llama.load_state_dict(model.state_dict(), strict=False)
    llama.lm_head.weight = llama.model.embed_tokens.weight
    ids = torch.tensor([[3, 17, 5, 29, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, llama(input_ids=ids).logits, rtol=1e-6, atol=1e-6)  # RoPE tables are float32


# ---------------------------------------------------------------- released checkpoints

TRAP = "raise RuntimeError('checkpoint code was executed')\n"


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory, sp_tokenizer_dir):
    """A MiniCPM checkpoint as released: no model_type, auto_map, pytorch_model.bin without lm_head."""
    import shutil

    from llm_plugins_cpm.minicpm_modeling import MiniCPMConfig, MiniCPMForCausalLM

    path = str(tmp_path_factory.mktemp("released-minicpm"))
    cfg = {
        "architectures": ["MiniCPMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                     "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.1,
        "intermediate_size": 96, "max_position_embeddings": 512, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 4, "rms_norm_eps": 1e-05, "rope_scaling": None, "torch_dtype": "bfloat16",
        "transformers_version": "4.36.0", "use_cache": True, "vocab_size": 600, "scale_emb": 12,
        "dim_model_base": 16, "scale_depth": 1.4,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    for name in ("configuration_minicpm.py", "modeling_minicpm.py"):
        with open(os.path.join(path, name), "w") as f:
            f.write(TRAP)
    torch.manual_seed(1)
    ref = MiniCPMForCausalLM(MiniCPMConfig(**{k: v for k, v in cfg.items() if k != "auto_map"})).eval()
    state = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    for name in os.listdir(sp_tokenizer_dir):
        shutil.copy(os.path.join(sp_tokenizer_dir, name), path)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)
    return path, ref


def test_released_checkpoint_loads_without_running_its_code(released_dir):
    import lmforge

    path, ref = released_dir
    assert resolve_model(path).family.name == "minicpm"
    model, tok = lmforge.load(path)
    ids = torch.tensor([[1, 5, 9, 33, 100]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied head
    assert len(tok.encode("<用户>", add_special_tokens=False)) == 1


def test_saver_writes_the_released_layout_back(released_dir, tmp_path):
    import lmforge
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path, ref = released_dir
    model, tok = lmforge.load(path)
    out = str(tmp_path / "saved")
    save_model(model, tok, _registry().family("minicpm"), out)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["MiniCPMForCausalLM"]
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_minicpm.MiniCPMForCausalLM"
    assert os.path.isfile(os.path.join(out, "modeling_minicpm.py"))  # still loadable with the released code
    assert cfg["rope_theta"] == 10000.0 and cfg["rope_scaling"] is None
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    again, _ = lmforge.load(out)
    plain = AutoModelForCausalLM.from_pretrained(out)  # registered with transformers by the plugin
    ids = torch.tensor([[1, 5, 9, 33, 100]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, ref(input_ids=ids).logits)
        torch.testing.assert_close(plain(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_family_claims_released_and_typed_configs():
    reg = _registry()
    assert reg.family_for_config({"architectures": ["MiniCPMForCausalLM"]}).name == "minicpm"
    assert reg.family_for_config({"model_type": "minicpm", "architectures": ["MiniCPMForCausalLM"]}).name == "minicpm"
    assert reg.family("fm9g").name == "minicpm"


def test_minicpm_2b_preset_has_2_4b_non_embedding_parameters():
    fam = _registry().family("minicpm")
    a = fam.arch_from_config(fam.preset("minicpm-2b").config)
    per_layer = 4 * a.hidden_size ** 2 + 3 * a.hidden_size * a.intermediate_size + 2 * a.hidden_size
    assert abs(a.num_layers * per_layer / 1e9 - 2.44) < 0.02
    assert a.tied_embeddings and a.extra == {"scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 256}


def test_registration_imports_no_torch():
    code = "import sys, llm_plugins_cpm.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- packing and gradient checkpointing

@pytest.mark.parametrize("preset", ["tiny-minicpm", "tiny-minicpm3"])
def test_packed_row_matches_samples_run_separately(preset):
    model, _ = load_model(resolve_model(preset), LoadOptions())
    model.eval()
    a, b = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[11, 12, 13]])
    with torch.no_grad():
        alone_a, alone_b = model(input_ids=a).logits, model(input_ids=b).logits
        out = model(input_ids=torch.cat([a, b], 1), position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]]),
                    use_cache=False).logits
    torch.testing.assert_close(out[:, :5], alone_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:, 5:], alone_b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-minicpm", "tiny-minicpm3"])
def test_gradient_checkpointing_gives_the_same_gradients(preset):
    model, _ = load_model(resolve_model(preset), LoadOptions())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model.train()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    for n, p in model.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-5, atol=1e-6)


def test_every_supported_claim_is_covered():
    reg = _registry()
    for name in ("minicpm", "minicpm3"):
        claimed = {k for k, c in reg.family(name).capabilities.items() if c.status == SUPPORTED}
        expected = {"full", "lora", "packing", "gradient_checkpointing", "long_context"} | (
            {"prefix"} if name == "minicpm" else set())
        # full/lora/prefix: test_cpm_training.py; long_context: tests/test_long_context.py; the rest: above
        assert claimed == expected
