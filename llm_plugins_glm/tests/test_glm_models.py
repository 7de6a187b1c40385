"""Modeling: released checkpoints load unchanged (no checkpoint code runs), the forward equals an independent
implementation, positions and masks are built from input_ids, saving writes the released layout back."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import lmforge
from glm_testing import PROMPTS, encoder_for, generate_ids, load_preset
from lmforge.modeling.loading import resolve_model
from llm_plugins_glm.convert import native_glm_config, to_native_state_dict
from llm_plugins_glm.loader import DATA
from llm_plugins_glm.plugin import detect_variant

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)

POISON = 'raise RuntimeError("lmforge executed code from the checkpoint directory")\n'
AUTO_MAP = {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}

ORIGINAL = {
    "chatglm2": dict(name="THUDM/chatglm2-6b", seq_length=32768, rope_ratio=None, tokenizer="chatglm2.model",
                     eos=2, pad=0),
    "chatglm3": dict(name="THUDM/chatglm3-6b", seq_length=8192, rope_ratio=None, tokenizer="chatglm2.model",
                     eos=2, pad=0),
    "glm4": dict(name="THUDM/glm-4-9b-chat", seq_length=131072, rope_ratio=500, tokenizer="glm4_tiktoken.model",
                 eos=[1000, 1007, 1009], pad=1000),
}


def released_chatglm2_state_dict(cfg: dict, seed: int, pre_seq_len: int | None = None) -> dict:
    """Random tensors under the released ChatGLM2/3 / GLM-4 key names and shapes (independent of lmforge's modules)."""
    g = torch.Generator().manual_seed(seed)
    h, d, heads, groups = cfg["hidden_size"], cfg["kv_channels"], cfg["num_attention_heads"], cfg["multi_query_group_num"]
    ffn, vocab = cfg["ffn_hidden_size"], cfg["padded_vocab_size"]

    def rnd(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    sd = {"transformer.embedding.word_embeddings.weight": rnd(vocab, h, scale=1.0),
          "transformer.rotary_pos_emb.inv_freq": 1.0 / (10000 ** (torch.arange(0, d // 2, 2).float() / (d // 2))),
          "transformer.encoder.final_layernorm.weight": 1 + rnd(h),
          "transformer.output_layer.weight": rnd(vocab, h)}
    qkv = heads * d + 2 * groups * d
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1 + rnd(h)
        sd[p + "self_attention.query_key_value.weight"] = rnd(qkv, h)
        sd[p + "self_attention.query_key_value.bias"] = rnd(qkv)
        sd[p + "self_attention.dense.weight"] = rnd(h, heads * d)
        sd[p + "post_attention_layernorm.weight"] = 1 + rnd(h)
        sd[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * ffn, h)
        sd[p + "mlp.dense_4h_to_h.weight"] = rnd(h, ffn)
    if pre_seq_len:
        sd["transformer.prefix_encoder.embedding.weight"] = rnd(pre_seq_len, cfg["num_layers"] * d * groups * 2)
    return sd


def write_original_checkpoint(path, variant: str, *, fmt: str = "safetensors", seed: int = 0,
                              pre_seq_len: int | None = None) -> dict:
    """A random checkpoint in THUDM's original layout: config.json with auto_map, released keys, tokenizer files,
    and *.py files that raise if anything imports them."""
    spec = ORIGINAL[variant]
    os.makedirs(path, exist_ok=True)
    cfg = {"_name_or_path": spec["name"], "model_type": "chatglm", "architectures": ["ChatGLMModel"],
           "auto_map": AUTO_MAP, "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
           "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
           "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "ffn_hidden_size": 96,
           "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 64, "kv_channels": 16,
           "layernorm_epsilon": 1e-5, "multi_query_attention": True, "multi_query_group_num": 2,
           "num_attention_heads": 4, "num_layers": 2, "original_rope": True, "padded_vocab_size": 1024,
           "post_layer_norm": True, "rmsnorm": True, "seq_length": spec["seq_length"], "use_cache": True,
           "torch_dtype": "float32", "transformers_version": "4.30.2", "tie_word_embeddings": False,
           "eos_token_id": spec["eos"], "pad_token_id": spec["pad"], "pre_seq_len": pre_seq_len,
           "prefix_projection": False}
    if spec["rope_ratio"]:
        cfg["rope_ratio"] = spec["rope_ratio"]
    sd = released_chatglm2_state_dict(cfg, seed, pre_seq_len)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:  # the released .bin shards with their index
        keys = sorted(sd)
        half = len(keys) // 2
        index = {"metadata": {"total_size": sum(t.numel() * 4 for t in sd.values())}, "weight_map": {}}
        for n, part in enumerate((keys[:half], keys[half:]), start=1):
            name = f"pytorch_model-0000{n}-of-00002.bin"
            torch.save({k: sd[k] for k in part}, os.path.join(path, name))
            index["weight_map"].update({k: name for k in part})
        with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as f:
            json.dump(index, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copy(os.path.join(DATA, spec["tokenizer"]), os.path.join(path, "tokenizer.model"))
    tok_cls = "ChatGLM4Tokenizer" if variant == "glm4" else "ChatGLMTokenizer"
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"auto_map": {"AutoTokenizer": [f"tokenization_chatglm.{tok_cls}", None]},
                   "tokenizer_class": tok_cls, "padding_side": "left", "clean_up_tokenization_spaces": False,
                   "remove_space": False, "do_lower_case": False}, f)
    tokenization_code = "# role tokens: <|user|> <|assistant|>\n" if variant != "chatglm2" else ""
    for name in ("configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py"):
        with open(os.path.join(path, name), "w") as f:
            f.write((tokenization_code if name.startswith("tokenization") else "") + POISON)
    return {"config": cfg, "state_dict": sd}


def native_model(written: dict):
    from transformers import GlmForCausalLM

    from llm_plugins_glm.configuration import ChatGLM2Config

    cfg = ChatGLM2Config(**{k: v for k, v in written["config"].items() if k not in ("auto_map", "model_type")})
    native = GlmForCausalLM(native_glm_config(cfg))
    missing, unexpected = native.load_state_dict(to_native_state_dict(written["state_dict"], cfg), strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    return native.eval()


# ---------------------------------------------------------------- recognition


RELEASED_CONFIGS = {
    "chatglm": {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "position_encoding_2d": True,
                "vocab_size": 130528, "auto_map": AUTO_MAP},
    "chatglm2": {"_name_or_path": "THUDM/chatglm2-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
                 "padded_vocab_size": 65024, "seq_length": 32768},
    "chatglm3": {"_name_or_path": "THUDM/chatglm3-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
                 "padded_vocab_size": 65024, "seq_length": 8192},
    "glm4": {"_name_or_path": "THUDM/glm-4-9b-chat", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
             "padded_vocab_size": 151552, "eos_token_id": [151329, 151336, 151338]},
    "glm": {"model_type": "glm", "architectures": ["GLMModel"], "block_position_encoding": True},
}


@pytest.mark.parametrize("variant", sorted(RELEASED_CONFIGS))
def test_released_configs_pick_their_family(variant, tmp_path):
    assert detect_variant(RELEASED_CONFIGS[variant]) == variant
    with open(tmp_path / "config.json", "w") as f:
        json.dump(RELEASED_CONFIGS[variant], f)
    assert resolve_model(str(tmp_path)).family.name == variant


def test_hf_layout_glm4_configs_pick_glm4():
    assert detect_variant({"model_type": "glm", "architectures": ["GlmForCausalLM"]}) == "glm4"
    assert detect_variant({"model_type": "glm4", "architectures": ["Glm4ForCausalLM"]}) == "glm4"


# ---------------------------------------------------------------- original layout == transformers' native GLM


@pytest.mark.parametrize("variant", sorted(ORIGINAL))
def test_original_layout_logits_equal_native_glm(variant, tmp_path):
    written = write_original_checkpoint(tmp_path, variant, seed=1)
    model, tok = lmforge.load(str(tmp_path))  # no trust_remote_code: the *.py files would raise
    assert resolve_model(str(tmp_path)).family.name == variant
    assert type(model).__name__ == "ChatGLM2ForConditionalGeneration"
    native = native_model(written)
    ids = torch.tensor([tok.encode("[gMASK]sop 你好 GLM, what is 3 + 4?", add_special_tokens=True)[:24]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, native(input_ids=ids).logits, rtol=0, atol=1e-5)
        # a left-padded batch: rows keep their unpadded positions, like the released tokenizer's _pad
        short = ids[:, 5:]
        batch = torch.cat([ids, torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1)])
        mask = torch.ones_like(batch)
        mask[1, :5] = 0
        out = model(input_ids=batch, attention_mask=mask).logits
        torch.testing.assert_close(out[1, 5:], native(input_ids=short).logits[0], rtol=0, atol=1e-5)


def test_released_bin_shards_load_and_save_back_as_the_released_layout(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    written = write_original_checkpoint(src, "chatglm3", fmt="bin", seed=2)
    model, tok = lmforge.load(str(src))
    fam = resolve_model(str(src)).family
    from lmforge.modeling.loading import save_model

    save_model(model, tok, fam, str(out))
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
            "modeling_chatglm.py", "tokenization_chatglm.py", "configuration_chatglm.py"} <= files
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(written["state_dict"])  # the released key names, nothing added or dropped
    for k, v in written["state_dict"].items():
        assert saved[k].shape == v.shape
        if "inv_freq" not in k:
            assert torch.equal(saved[k], v), k
    with open(out / "config.json") as f:
        cfg = json.load(f)
    for key in ("model_type", "architectures", "auto_map", "_name_or_path", "padded_vocab_size", "seq_length"):
        assert cfg[key] == written["config"][key], key
    assert "num_key_value_heads" not in cfg and "head_dim" not in cfg
    with open(out / "tokenizer_config.json") as f:
        assert json.load(f)["auto_map"]["AutoTokenizer"][0] == "tokenization_chatglm.ChatGLMTokenizer"
    again, _ = lmforge.load(str(out))
    assert resolve_model(str(out)).family.name == "chatglm3"
    ids = torch.tensor([tok.encode("What is 1 plus 1?")])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_ptuning_v2_checkpoint_loads_and_uses_its_prefix(tmp_path):
    write_original_checkpoint(tmp_path / "p", "chatglm2", seed=3, pre_seq_len=4)
    model, tok = lmforge.load(str(tmp_path / "p"))
    assert model.transformer.prefix_encoder.embedding.weight.shape[0] == 4
    write_original_checkpoint(tmp_path / "b", "chatglm2", seed=3)
    base, _ = lmforge.load(str(tmp_path / "b"))
    ids = torch.tensor([tok.encode("What is 1 plus 1?")])
    with torch.no_grad():
        with_prefix, without = model(input_ids=ids).logits, base(input_ids=ids).logits
        assert not torch.allclose(with_prefix, without, atol=1e-3)
        # the prefix is the cache the layers attend over: same logits when handed in explicitly
        prompt = model.transformer.get_prompt(1, ids.device, torch.float32)
        torch.testing.assert_close(base(input_ids=ids, past_key_values=prompt).logits, with_prefix, rtol=0, atol=1e-5)
    enc = encoder_for(tok, resolve_model(str(tmp_path / "p")).family)
    batched = generate_ids(model, enc, PROMPTS)
    assert batched == [generate_ids(model, enc, [p])[0] for p in PROMPTS]


# ---------------------------------------------------------------- ChatGLM-6B and GLM v1 against the released recipe


def reference_chatglm6b(model, ids: list[int]) -> torch.Tensor:
    """ChatGLM-6B's released forward, written out step by step in its own [seq, batch, ...] layout."""
    cfg, sd = model.config, model.state_dict()
    L, nh, hd = len(ids), cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    ctx = ids.index(cfg.bos_token_id)
    mask_pos = ids.index(cfg.gmask_token_id if cfg.gmask_token_id in ids else cfg.mask_token_id)
    pos = list(range(L))
    pos[ctx:] = [mask_pos] * (L - ctx)
    block = [0] * ctx + list(range(1, L - ctx + 1))
    m = torch.ones(L, L).tril()
    m[:, :ctx] = 1
    masked = (m < 0.5)[None, None]
    dim = hd // 2
    inv = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half().float()
    t = torch.arange(max(pos + block) + 1).float()
    emb = torch.cat([torch.outer(t, inv)] * 2, -1)
    cos, sin = emb.cos(), emb.sin()

    def rot(x, p):  # x: [L, 1, nh, dim]
        c, s = F.embedding(torch.tensor(p), cos)[:, None, None], F.embedding(torch.tensor(p), sin)[:, None, None]
        half = torch.cat([-x[..., dim // 2:], x[..., : dim // 2]], -1)
        return x * c + half * s

    h = sd["transformer.word_embeddings.weight"][torch.tensor(ids)][:, None]  # [L, 1, H]
    alpha = math.sqrt(2 * 28)
    for i in range(cfg.num_layers):
        p = f"transformer.layers.{i}."
        ln = F.layer_norm(h, (cfg.hidden_size,), sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"],
                          cfg.layernorm_epsilon)
        qkv = F.linear(ln, sd[p + "attention.query_key_value.weight"], sd[p + "attention.query_key_value.bias"])
        q, k, v = qkv.view(L, 1, nh, 3 * hd).split(hd, -1)
        q = torch.cat([rot(q[..., :dim], pos), rot(q[..., dim:], block)], -1)
        k = torch.cat([rot(k[..., :dim], pos), rot(k[..., dim:], block)], -1)
        coeff = float(i + 1)
        q = q / (math.sqrt(hd) * coeff)
        scores = torch.bmm(q.view(L, nh, hd).transpose(0, 1), k.view(L, nh, hd).permute(1, 2, 0)).view(1, nh, L, L)
        scores = scores.masked_fill(masked, -10000.0).float() * coeff
        probs = F.softmax(scores, -1)
        out = torch.bmm(probs.view(nh, L, L), v.view(L, nh, hd).transpose(0, 1)).permute(1, 0, 2).reshape(L, 1, -1)
        attn = F.linear(out, sd[p + "attention.dense.weight"], sd[p + "attention.dense.bias"])
        h = ln * alpha + attn
        ln2 = F.layer_norm(h, (cfg.hidden_size,), sd[p + "post_attention_layernorm.weight"],
                           sd[p + "post_attention_layernorm.bias"], cfg.layernorm_epsilon)
        x = F.linear(ln2, sd[p + "mlp.dense_h_to_4h.weight"], sd[p + "mlp.dense_h_to_4h.bias"])
        x = 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))
        h = ln2 * alpha + F.linear(x, sd[p + "mlp.dense_4h_to_h.weight"], sd[p + "mlp.dense_4h_to_h.bias"])
    h = F.layer_norm(h, (cfg.hidden_size,), sd["transformer.final_layernorm.weight"],
                     sd["transformer.final_layernorm.bias"], cfg.layernorm_epsilon)
    return F.linear(h, sd["lm_head.weight"]).permute(1, 0, 2)


def reference_glm(model, ids: list[int]) -> torch.Tensor:
    """GLM v1's released forward with the positions/mask its tokenizer's build_inputs_for_generation builds."""
    cfg, sd = model.config, model.state_dict()
    L, nh, hd, H = len(ids), cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.hidden_size
    sep = ids.index(cfg.sop_token_id)
    mask_pos = min(i for i, t in enumerate(ids) if t in cfg.mask_token_ids)
    pos = list(range(sep)) + [mask_pos] * (L - sep)
    block = [0] * sep + list(range(1, L - sep + 1))
    m = torch.ones(1, L, L).tril()
    m[0, :, :sep] = 1
    m = m[None]
    p0 = "glm.transformer."
    h = (sd["glm.word_embeddings.weight"][torch.tensor(ids)] + sd[p0 + "position_embeddings.weight"][torch.tensor(pos)]
         + sd[p0 + "block_position_embeddings.weight"][torch.tensor(block)])[None]
    for i in range(cfg.num_layers):
        p = f"{p0}layers.{i}."
        ln = F.layer_norm(h, (H,), sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"], 1e-5)
        q, k, v = F.linear(ln, sd[p + "attention.query_key_value.weight"],
                           sd[p + "attention.query_key_value.bias"]).split(H, -1)
        q, k, v = (x.view(1, L, nh, hd).permute(0, 2, 1, 3) for x in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2) / math.sqrt(hd))
        scores = torch.mul(scores, m) + (-65504.0) * (1.0 - m)
        out = torch.matmul(torch.softmax(scores, -1), v).permute(0, 2, 1, 3).reshape(1, L, H)
        h = h + F.linear(out, sd[p + "attention.dense.weight"], sd[p + "attention.dense.bias"])
        ln2 = F.layer_norm(h, (H,), sd[p + "post_attention_layernorm.weight"], sd[p + "post_attention_layernorm.bias"],
                           1e-5)
        x = F.gelu(F.linear(ln2, sd[p + "mlp.dense_h_to_4h.weight"], sd[p + "mlp.dense_h_to_4h.bias"]))
        h = h + F.linear(x, sd[p + "mlp.dense_4h_to_h.weight"], sd[p + "mlp.dense_4h_to_h.bias"])
    h = F.layer_norm(h, (H,), sd[p0 + "final_layernorm.weight"], sd[p0 + "final_layernorm.bias"], 1e-5)
    return F.linear(h, sd["glm.word_embeddings.weight"])


def _randomize(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("variant, reference", [("chatglm", reference_chatglm6b), ("glm", reference_glm)])
def test_block_position_models_follow_the_released_recipe(variant, reference):
    model, tok, fam = load_preset(variant)
    _randomize(model, 4)
    ids = encoder_for(tok, fam).encode_prompt("What is 12 plus 30? 请回答。")
    ids = ids + tok.encode(" 12 + 30 = 42", add_special_tokens=False)  # a block part after <sop>
    with torch.no_grad():
        ref = reference(model, ids)
        torch.testing.assert_close(model(input_ids=torch.tensor([ids])).logits, ref, rtol=0, atol=1e-5)


def test_chatglm6b_positions_and_mask_from_input_ids_equal_the_released_tokenizer_inputs():
    model, tok, fam = load_preset("chatglm")
    ids = encoder_for(tok, fam).encode_prompt("你好") + tok.encode("你好！", add_special_tokens=False)
    L, ctx = len(ids), ids.index(tok.bos_token_id)
    mask_pos = ids.index(tok.gmask_token_id)
    # what the released tokenizer's _pad returns: 2D positions and a bool mask (True = masked)
    pos = torch.tensor([list(range(ctx)) + [mask_pos] * (L - ctx), [0] * ctx + list(range(1, L - ctx + 1))])
    m = torch.ones(1, L, L).tril()
    m[..., :ctx] = 1
    with torch.no_grad():
        explicit = model(input_ids=torch.tensor([ids]), position_ids=pos[None], attention_mask=(m < 0.5)[None]).logits
        implicit = model(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)


def test_glm_sep_form_attention_mask_matches_the_built_layout():
    model, tok, fam = load_preset("glm")
    ids = encoder_for(tok, fam).encode_prompt("Tsinghua University is located in [MASK].")
    sep = ids.index(tok.sop_token_id)
    with torch.no_grad():
        a = model(input_ids=torch.tensor([ids])).logits
        pos = model.build_position_ids(torch.tensor([ids]), None)
        b = model(input_ids=torch.tensor([ids]), position_ids=pos, attention_mask=torch.tensor([sep])).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- prefix tuning as peft passes it


@pytest.mark.parametrize("variant", ["glm", "chatglm", "chatglm2"])
def test_peft_prefix_is_read_from_the_cache_and_survives_gradient_checkpointing(variant):
    from peft import PrefixTuningConfig, get_peft_model

    model, tok, fam = load_preset(variant)
    enc = encoder_for(tok, fam)
    pm = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with torch.no_grad():
        for p in pm.prompt_encoder.parameters():
            p.normal_(0, 1.0)
    from lmforge.plugins.descriptors import Example, Message

    feats = [enc.encode(Example(messages=(Message("user", q), Message("assistant", "42")))) for q in PROMPTS[:2]]
    batch = enc.collate(feats)
    pm.eval()
    with torch.no_grad():
        plain = model(**batch).loss
        with_prefix = pm(**batch).loss
    assert not torch.isclose(plain, with_prefix)
    pm.train()
    model.config.use_cache = False
    torch.manual_seed(0)
    loss_a = pm(**batch).loss
    model.gradient_checkpointing_enable()
    torch.manual_seed(0)
    loss_b = pm(**batch).loss
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b)
    assert pm.prompt_encoder.default.embedding.weight.grad.abs().sum() > 0
