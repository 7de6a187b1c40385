"""`lmforge export --format transformers`: ChatGLM2/3 and GLM-4 load in plain transformers, same logits.

The exported tokenizer is a ``tokenizer.json`` that plain ``AutoTokenizer`` (no remote code)
loads as a fast tokenizer with lmforge's ids, chat prompt and decoding; model + tokenizer
generate lmforge's greedy tokens.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from glm_testing import PRESET, PROMPTS, encoder_for, generate_ids, load_preset

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)

EXPORTED = ["chatglm2", "chatglm3", "glm4"]
# plain text: Chinese, English, digits, runs of spaces/newlines/tabs, emoji, word commands inside words
CORPUS = ["Hello world", "小明有5个苹果，又买了3个。现在有几个？", "What is 7 times 6?\nAnswer briefly.",
          "  two  spaces\n\n\tnew line ", "emoji 🙂👍🏽 and 🇨🇳 flags", "12345 678.90 -3e8 2024年12月",
          "soprano isopropyl sopping geop", "mixed 中文 and English", " leading space", "", "\n", "a\r\nb"]
CHATS = [
    [{"role": "user", "content": "What is 3 plus 4?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "小明有5个苹果 🙂"},
     {"role": "assistant", "content": "好的 5\n\n  ok"}, {"role": "user", "content": "再加2个? 123"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


def saved_checkpoint(tmp_path, variant):
    """A checkpoint as a run saves it: the tokenizer carries the family's chat template."""
    from lmforge.modeling.loading import save_model
    from lmforge.plugins.chat_jinja import attach

    model, tok, fam = load_preset(variant)
    attach(tok, encoder_for(tok, fam))
    path = str(tmp_path / f"{variant}-ckpt")
    save_model(model, tok, fam, path)
    return path, model


@pytest.fixture(scope="module", params=EXPORTED)
def exported(request, tmp_path_factory):
    """``(variant, checkpoint, export dir)``, exported through ``export_run``."""
    from lmforge.modeling.export import export_run

    tmp = tmp_path_factory.mktemp(request.param)
    ckpt, _ = saved_checkpoint(tmp, request.param)
    return request.param, ckpt, export_run(ckpt, str(tmp / "export"))


def _ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def test_exported_tokenizer_loads_in_plain_transformers_with_lmforge_ids(exported):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    import lmforge
    from lmforge.modeling.loading import resolve_model
    from lmforge.plugins.descriptors import Message

    variant, ckpt, out = exported
    cfg = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in cfg and cfg["chat_template"]
    assert os.path.isfile(os.path.join(out, "tokenizer.json")) and not os.path.exists(os.path.join(out, "tokenizer.model"))
    plain = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    assert isinstance(plain, PreTrainedTokenizerFast) and plain.is_fast
    _, tok = lmforge.load(ckpt)
    enc = encoder_for(tok, resolve_model(PRESET[variant]).family)
    assert len(plain) == tok.vocab_size and plain.eos_token == tok.eos_token and plain.padding_side == "left"
    for text in CORPUS:
        for special in (False, True):
            assert plain(text, add_special_tokens=special)["input_ids"] == \
                tok(text, add_special_tokens=special)["input_ids"], (text, special)
        ids = tok.encode(text, add_special_tokens=False)
        assert plain.decode(ids) == tok.decode(ids) == text, text
        with_prefix = tok.encode(text)
        assert plain.decode(with_prefix, skip_special_tokens=True) == text
    for chat in CHATS:
        if variant == "chatglm2" and chat[0]["role"] == "system":
            # ChatGLM2 (no system role in its release) renders "[gMASK]sop" + system text, e.g. "sopYou": a
            # single-word "sop" cannot match there (documented in convert.fast_tokenizer)
            chat = chat[1:]
        got = _ids(plain.apply_chat_template(chat, add_generation_prompt=True))
        assert got == enc.encode_prompt([Message(m["role"], m["content"]) for m in chat]), chat
        assert {tok.get_command("[gMASK]"), tok.get_command("<|user|>" if variant != "chatglm2" else "sop")} <= set(got)
        assert plain.decode(got, skip_special_tokens=True) == tok.decode(got, skip_special_tokens=True)
    if variant != "glm4":
        # documented difference: in plain text, a command string is the command for the fast tokenizer (lmforge's
        # ChatGLM2/3 tokenizer keeps it as text); word-like ones only as whole words
        assert tok.get_command("sop") in plain.encode("x sop y", add_special_tokens=False)
        assert tok.get_command("sop") not in tok.encode("x sop y", add_special_tokens=False)


def test_exported_model_and_tokenizer_generate_lmforge_greedy_tokens(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lmforge
    from lmforge.modeling.loading import resolve_model

    variant, ckpt, out = exported
    ref, tok = lmforge.load(ckpt)
    enc = encoder_for(tok, resolve_model(PRESET[variant]).family)
    want = generate_ids(ref.eval(), enc, PROMPTS, max_new_tokens=5)
    plain_tok = AutoTokenizer.from_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    stop = set(enc.stop_token_ids())
    for prompt, expected in zip(PROMPTS, want):
        batch = plain_tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)
        assert batch["input_ids"][0].tolist() == enc.encode_prompt(prompt)
        with torch.no_grad():
            row = plain.generate(**batch, max_new_tokens=5, do_sample=False, eos_token_id=sorted(stop),
                                 pad_token_id=plain_tok.pad_token_id)[0, batch["input_ids"].shape[1]:].tolist()
        cut = next((k for k, t in enumerate(row) if t in stop), len(row))
        assert row[:cut] == expected, prompt
    assert any(want)  # some tokens were generated before a stop token


def probe():
    return torch.tensor([[5, 17, 200, 31, 77, 402, 9]])


@pytest.mark.parametrize("variant", ["chatglm2", "chatglm3", "glm4"])
def test_export_loads_in_plain_transformers_with_the_same_logits(tmp_path, variant):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmforge.cli.main import build_cli

    ckpt, model = saved_checkpoint(tmp_path, variant)
    out = str(tmp_path / "export")
    res = CliRunner().invoke(build_cli(), ["export", ckpt, "-o", out, "--format", "transformers"])
    assert res.exit_code == 0, res.output
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model_type"] == "glm" and "auto_map" not in cfg
    assert AutoConfig.from_pretrained(out).architectures == ["GlmForCausalLM"]
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False, dtype=torch.float32).eval()
    assert type(plain).__name__ == "GlmForCausalLM"
    assert not any(f.endswith(".py") for f in os.listdir(out))
    with torch.no_grad():
        torch.testing.assert_close(plain(probe()).logits, model.eval()(probe()).logits, rtol=1e-4, atol=1e-5)


def test_lora_run_is_merged_then_exported(tmp_path):
    from transformers import AutoModelForCausalLM

    import lmforge
    from lmforge.api import FineTune
    from lmforge.modeling.export import export_run

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(8)))
    run = str(tmp_path / "run")
    FineTune(model=PRESET["chatglm3"]).train_local(train_fpath=str(data), output_dir=run, peft="lora", max_steps=2,
                                                   per_device_train_batch_size=4, learning_rate=5e-2, report_to=[],
                                                   save_strategy="no", disable_tqdm=True, threads=1, max_length=32)
    ref, _ = lmforge.load(run)
    out = export_run(run, str(tmp_path / "export"))
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(probe()).logits, ref(probe()).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["glm", "chatglm"])
def test_variants_transformers_lacks_are_refused_with_what_loads_them(tmp_path, variant):
    from lmforge.cli.main import build_cli

    ckpt, _ = saved_checkpoint(tmp_path, variant)
    res = CliRunner().invoke(build_cli(), ["export", ckpt, "-o", str(tmp_path / "export")])
    assert res.exit_code == 2
    line = res.output.strip()
    assert line.startswith("error: export: transformers has no architecture") and "\n" not in line
    assert "lmforge" in line and "trust_remote_code" in line


def test_sentencepiece_model_the_converter_does_not_mirror_is_refused_before_writing(tmp_path):
    from transformers.convert_slow_tokenizer import import_protobuf

    from lmforge.errors import LmforgeError
    from llm_plugins_glm.convert import export_transformers
    from llm_plugins_glm.tokenization import ChatGLM3Tokenizer

    model, tok, _ = load_preset("chatglm3")
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(open(tok.vocab_file, "rb").read())
    proto.normalizer_spec.remove_extra_whitespaces = True  # "a  b" -> "a b": LlamaConverter would keep both spaces
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(proto.SerializeToString())
    out = tmp_path / "export"
    with pytest.raises(LmforgeError, match=r"tokenizer.model: only sentencepiece BPE models with an identity"):
        export_transformers(model, ChatGLM3Tokenizer(str(bad)), str(out))
    assert not out.exists()
