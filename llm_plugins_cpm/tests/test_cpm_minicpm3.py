"""MiniCPM3: transformers' model, loaded without checkpoint code; prefix tuning refused for MLA."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from lmforge.errors import CapabilityError


def _registry():
    from lmforge.plugins.registry import get_registry

    return get_registry()


def test_prefix_is_refused_with_the_reason(data_files, helpers):
    from lmforge import FineTune

    with pytest.raises(CapabilityError, match="latent attention"):
        FineTune(model="tiny-minicpm3").train_local(train_fpath=data_files[0], peft="prefix", max_steps=1,
                                                    output_dir="/nonexistent/never-written")


def test_prefix_really_breaks_on_mla():
    from peft import PrefixTuningConfig, get_peft_model

    from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

    model, _ = load_model(resolve_model("tiny-minicpm3"), LoadOptions())
    prefixed = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(RuntimeError):
        prefixed(input_ids=torch.tensor([[5, 6, 7]]))


def test_released_checkpoint_with_custom_tokenizer_code_loads_without_it(tmp_path, sp_tokenizer_dir):
    """Released MiniCPM3 names its own config, model and tokenizer classes in auto_map; none are run."""
    import lmforge
    from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

    model, _ = load_model(resolve_model("tiny-minicpm3"), LoadOptions())
    path = str(tmp_path / "released")
    model.save_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["auto_map"] = {"AutoConfig": "configuration_minicpm.MiniCPM3Config",
                       "AutoModelForCausalLM": "modeling_minicpm.MiniCPM3ForCausalLM"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    for name in ("configuration_minicpm.py", "modeling_minicpm.py", "tokenization_minicpm.py"):
        with open(os.path.join(path, name), "w") as f:
            f.write("raise RuntimeError('checkpoint code was executed')\n")
    shutil.copy(os.path.join(sp_tokenizer_dir, "tokenizer.model"), path)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "MiniCPMTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_minicpm.MiniCPMTokenizer", None]},
                   "add_bos_token": False, "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"}, f)
    assert resolve_model(path).family.name == "minicpm3"
    loaded, tok = lmforge.load(path)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    assert tok.eos_token == "<|im_end|>"
    assert len(tok.encode("<|im_start|>", add_special_tokens=False)) == 1


def test_minicpm3_4b_preset_is_4b():
    fam = _registry().family("minicpm3")
    a = fam.arch_from_config(fam.preset("minicpm3-4b").config)
    x, h, n = a.extra, a.hidden_size, a.num_attention_heads
    attn = (h * x["q_lora_rank"] + x["q_lora_rank"] * n * a.dim_per_head
            + h * (x["kv_lora_rank"] + x["qk_rope_head_dim"])
            + x["kv_lora_rank"] * n * (x["qk_nope_head_dim"] + x["v_head_dim"]) + n * x["v_head_dim"] * h)
    total = a.num_layers * (attn + 3 * h * a.intermediate_size) + a.vocab_size * h
    assert 3.8e9 < total < 4.3e9
