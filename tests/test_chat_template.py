"""Saved tokenizers carry the family's chat template: apply_chat_template == the training prompt, per family."""

from __future__ import annotations

import pytest

from lmforge.plugins.descriptors import Message

CONVERSATIONS = [
    [Message("user", "What is 3 plus 4?")],
    [Message("system", "You are terse."), Message("user", "小明有5个苹果"), Message("assistant", "好的 5"),
     Message("user", "再加2个?")],
    [Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d"),
     Message("user", "e")],
]

GLM_REASON = ("GLM-family tokenizers are lmforge's own Python classes that plain transformers cannot load, and "
              "their prompts are built from separately encoded pieces (GLMEncoder); no chat_template is attached "
              "yet (docs/inference.md)")
PRESETS = ["tiny-llama", "tiny-bloom", "tiny-cpmant", "tiny-minicpm", "tiny-minicpm3",
           *(pytest.param(p, marks=pytest.mark.skip(reason=GLM_REASON))
             for p in ("tiny-glm", "tiny-chatglm", "tiny-chatglm2", "tiny-chatglm3", "tiny-glm4"))]


@pytest.mark.parametrize("preset", PRESETS)
def test_saved_tokenizer_renders_the_training_prompt(preset, tmp_path):
    from transformers import AutoTokenizer

    from lmforge.plugins.chat_jinja import attach
    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

    src = resolve_model(preset)
    _, tok = load_model(src, LoadOptions(dtype="fp32"))
    enc = make_encoder(tok, src.family, max_length=10**9)
    attach(tok, enc)
    tok.save_pretrained(tmp_path)
    plain = AutoTokenizer.from_pretrained(tmp_path)
    assert plain.chat_template
    for conv in CONVERSATIONS:
        got = plain.apply_chat_template([{"role": m.role, "content": m.content} for m in conv],
                                        add_generation_prompt=True, tokenize=True)
        got = list(got["input_ids"] if hasattr(got, "keys") else got)
        assert got == enc.encode_prompt(conv), conv


def test_raw_template_attaches_nothing():
    from lmforge.plugins.chat_jinja import chat_template_for
    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

    src = resolve_model("tiny-llama")
    _, tok = load_model(src, LoadOptions(dtype="fp32"))
    assert chat_template_for(make_encoder(tok, src.family, template="raw")) is None
