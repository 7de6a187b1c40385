"""Chat formats: MiniCPM 1/2 and 9G render ``<用户>…<AI>…``, MiniCPM3 renders ChatML, and the prompt a
model is trained on is token for token the prompt it is given at generation time."""

from __future__ import annotations

import pytest

from lmforge.plugins.descriptors import Example, Message
from lmforge.data.encoding import IGNORE_INDEX, make_encoder
from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

ONE_TURN = (Message("user", "What is 1 plus 1?"), Message("assistant", "2"))
TWO_TURNS = ONE_TURN + (Message("user", "And 2 plus 2?"), Message("assistant", "4"))

EXPECTED = {
    "tiny-minicpm": {
        ONE_TURN: "<s><用户>What is 1 plus 1?<AI>2</s>",
        TWO_TURNS: "<s><用户>What is 1 plus 1?<AI>2</s><用户>And 2 plus 2?<AI>4</s>",
    },
    "tiny-minicpm3": {
        ONE_TURN: "<|im_start|>user\nWhat is 1 plus 1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>",
        TWO_TURNS: "<|im_start|>user\nWhat is 1 plus 1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
                   "<|im_start|>user\nAnd 2 plus 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    },
}


@pytest.fixture(scope="module", params=["tiny-minicpm", "tiny-minicpm3"])
def encoder(request):
    source = resolve_model(request.param)
    _, tok = load_model(source, LoadOptions())
    return request.param, tok, make_encoder(tok, source.family, max_length=512)


@pytest.mark.parametrize("conversation", [ONE_TURN, TWO_TURNS], ids=["one-turn", "two-turns"])
def test_training_text_is_the_released_format(encoder, conversation):
    preset, tok, enc = encoder
    ids = enc.encode(Example(messages=conversation))["input_ids"]
    assert tok.decode(ids, skip_special_tokens=False) == EXPECTED[preset][conversation]


@pytest.mark.parametrize("conversation", [ONE_TURN, TWO_TURNS], ids=["one-turn", "two-turns"])
def test_generation_prompt_is_the_training_prompt(encoder, conversation):
    _, tok, enc = encoder
    train = enc.encode(Example(messages=conversation))
    prompt = enc.encode_prompt(list(conversation[:-1]))
    assert train["input_ids"][: len(prompt)] == prompt
    # everything up to the last answer is prompt for the loss, the answer (and EOS) is trained
    assert train["labels"][len(prompt) - 1] == IGNORE_INDEX
    assert all(lab != IGNORE_INDEX for lab in train["labels"][len(prompt):])


def test_system_prompts(encoder):
    preset, tok, enc = encoder
    ids = enc.encode_prompt([Message("system", "Be brief."), Message("user", "Hi")])
    text = tok.decode(ids, skip_special_tokens=False)
    if preset == "tiny-minicpm3":
        assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    else:
        assert text == "<s>Be brief.<用户>Hi<AI>"
