"""Tokenizers and prompt encoding: round trips, command-token ids at the right places, released file layout,
and training/inference prompt identity for every variant."""

from __future__ import annotations

import json
import os

import pytest

from glm_testing import VARIANTS, encoder_for, load_preset
from lmforge.plugins.descriptors import Example, Message
from lmforge.data.encoding import IGNORE_INDEX

TEXT = "你好，Hello  world!\n\tGLM-4 说：3 + 4 = 7。   emoji 😀 ünïcode"


@pytest.fixture(scope="module")
def presets():
    return {v: load_preset(v) for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_encode_decode_round_trip(presets, variant):
    _, tok, _ = presets[variant]
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert tok.decode(ids) == TEXT
    assert max(ids) < tok.vocab_size


def test_chatglm6b_whitespace_pieces(presets):
    _, tok, _ = presets["chatglm"]
    pieces = tok.convert_ids_to_tokens(tok.encode("a\nb\tc   d", add_special_tokens=False))
    assert "<n>" in pieces and "<|tab|>" in pieces and "<|blank_3|>" in pieces


def test_special_token_ids_in_rendered_prompts(presets):
    q = "What is 1 plus 1?"
    # GLM v1: [CLS] prompt [gMASK] <|endoftext|> <|startofpiece|>
    _, tok, fam = presets["glm"]
    ids = encoder_for(tok, fam).encode_prompt(q)
    assert ids[0] == tok.cls_token_id
    assert ids[-3:] == [tok.gmask_token_id, tok.eos_token_id, tok.sop_token_id]
    assert ids[1:-3] == tok.encode(q, add_special_tokens=False)
    # a prompt with its own mask token gets no extra [gMASK]
    ids = encoder_for(tok, fam).encode_prompt("Tsinghua University is located in [MASK].")
    assert tok.mask_token_id in ids and tok.gmask_token_id not in ids

    # ChatGLM-6B: bare query (no history), then [gMASK] <sop>; equals the released tokenizer call
    _, tok, fam = presets["chatglm"]
    ids = encoder_for(tok, fam).encode_prompt(q)
    assert ids[-2:] == [tok.convert_tokens_to_ids("[gMASK]"), tok.bos_token_id] == [5, 8]
    assert ids == tok(q)["input_ids"]
    hist = [Message("user", "hi"), Message("assistant", "hello"), Message("user", q)]
    assert encoder_for(tok, fam).encode_prompt(hist) == tok(f"[Round 0]\n问：hi\n答：hello\n[Round 1]\n问：{q}\n答：")[
        "input_ids"]

    # ChatGLM2: [gMASK] sop + one string "[Round 1]\n\n问：…\n\n答："
    _, tok, fam = presets["chatglm2"]
    ids = encoder_for(tok, fam).encode_prompt(q)
    assert ids[:2] == [tok.get_command("[gMASK]"), tok.get_command("sop")] == [tok.vocab_size - 4, tok.vocab_size - 2]
    assert ids == tok(f"[Round 1]\n\n问：{q}\n\n答：")["input_ids"]

    # ChatGLM3 / GLM-4: [gMASK] sop, role token, "\n" and content encoded separately, <|assistant|> last
    for variant, sop in (("chatglm3", "sop"), ("glm4", "<sop>")):
        _, tok, fam = presets[variant]
        enc = encoder_for(tok, fam)
        msgs = [Message("system", "Be brief."), Message("user", q)]
        ids = enc.encode_prompt(msgs)
        nl = tok.encode("\n", add_special_tokens=False)
        expected = ([tok.get_command("[gMASK]"), tok.get_command(sop), tok.get_command("<|system|>")] + nl
                    + tok.encode("Be brief.", add_special_tokens=False) + [tok.get_command("<|user|>")] + nl
                    + tok.encode(q, add_special_tokens=False) + [tok.get_command("<|assistant|>")])
        assert ids == expected, variant


def test_role_strings_in_user_text(presets):
    # ChatGLM3 does not split command tokens out of text (released default); GLM-4 registers them as added tokens
    _, tok3, _ = presets["chatglm3"]
    assert tok3.get_command("<|user|>") not in tok3.encode("<|user|>", add_special_tokens=False)
    _, tok4, _ = presets["glm4"]
    assert tok4.encode("<|user|>", add_special_tokens=False) == [tok4.get_command("<|user|>")]


def test_tiny_preset_configs_agree_with_their_tokenizers(presets):
    m, tok, _ = presets["chatglm"]
    cfg = m.config
    assert (cfg.bos_token_id, cfg.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert (cfg.mask_token_id, cfg.gmask_token_id) == (tok.mask_token_id, tok.gmask_token_id)
    assert cfg.pad_token_id == tok.pad_token_id
    m, tok, _ = presets["glm4"]
    assert m.config.eos_token_id == [tok.eos_token_id, tok.get_command("<|user|>"), tok.get_command("<|observation|>")]
    for variant in VARIANTS:
        m, tok, _ = presets[variant]
        assert m.get_input_embeddings().weight.shape[0] >= tok.vocab_size, variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokenizer_saves_released_files_and_reloads(presets, variant, tmp_path):
    from llm_plugins_glm.tokenization import load_tokenizer

    _, tok, _ = presets[variant]
    tok.save_pretrained(str(tmp_path))
    expected = {"glm": "cog-pretrain.model", "chatglm": "ice_text.model"}.get(variant, "tokenizer.model")
    assert expected in os.listdir(tmp_path)
    with open(tmp_path / "tokenizer_config.json") as f:
        cfg = json.load(f)
    assert cfg["tokenizer_class"] == {"glm": "GLMChineseTokenizer", "glm4": "ChatGLM4Tokenizer"}.get(
        variant, "ChatGLMTokenizer")
    again = load_tokenizer(str(tmp_path), variant)
    assert type(again) is type(tok)
    assert again.encode(TEXT) == tok.encode(TEXT)


def _conversation(turns: int) -> list[Message]:
    msgs = []
    for i in range(turns):
        msgs += [Message("user", f"What is {i} plus 1?"), Message("assistant", f"{i} + 1 = {i + 1}.")]
    return msgs


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("turns", [1, 2])
def test_training_and_generation_render_the_same_prompt(presets, variant, turns):
    _, tok, fam = presets[variant]
    enc = encoder_for(tok, fam)
    msgs = _conversation(turns)
    feats = enc.encode(Example(messages=tuple(msgs)))
    ids, labels = feats["input_ids"], feats["labels"]
    prompt = enc.encode_prompt(msgs[:-1])
    assert ids[: len(prompt)] == prompt
    # nothing of the final prompt trains, except earlier answers of the role-token chat formats
    assert all(lab == IGNORE_INDEX for lab in labels[: len(prompt)]) or (variant in ("chatglm3", "glm4") and turns > 1)
    answer = tok.encode(msgs[-1].content, add_special_tokens=False)
    trained = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    close = enc.stop_token_ids()[0] if variant != "glm4" else tok.get_command("<|user|>")
    if variant in ("chatglm3", "glm4"):
        # every assistant turn trains ("\n" + content), and the role token that follows an answer closes it
        nl = tok.encode("\n", add_special_tokens=False)
        first = tok.encode(msgs[1].content, add_special_tokens=False)
        if turns == 1:
            assert trained == nl + answer + [close]
        else:
            assert trained == nl + first + [tok.get_command("<|user|>")] + nl + answer + [close]
    else:
        # history stays inside the prompt string; the last answer and its end token train
        assert trained == answer + [close]
        assert ids[len(prompt):] == answer + [close]
    assert close in enc.stop_token_ids()


@pytest.mark.parametrize("variant", VARIANTS)
def test_collate_positions_are_the_models_positions(presets, variant):
    import torch

    model, tok, fam = presets[variant]
    enc = encoder_for(tok, fam)
    feats = [enc.encode(Example(messages=tuple(_conversation(n)))) for n in (1, 2)]
    batch = enc.collate(feats)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for i, f in enumerate(feats):
        alone = enc.position_ids(torch.tensor([f["input_ids"]]))[0]
        n = len(f["input_ids"])
        assert torch.equal(batch["position_ids"][i][..., :n], alone)
        if hasattr(model, "build_position_ids"):
            assert torch.equal(model.build_position_ids(torch.tensor([f["input_ids"]]), None)[0], alone)
    if variant in ("glm", "chatglm"):
        assert batch["position_ids"].shape[1] == 2  # [B, 2, L] block positions
