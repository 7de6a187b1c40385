"""Chat templates are data, rendered one way: the released chat formats, the training ids, the saved Jinja.

- each family's :class:`ChatTemplate` renders the released chat format of its models
  (literal strings below, each with where it comes from);
- a saved tokenizer's ``chat_template``, applied by plain ``apply_chat_template(...,
  add_generation_prompt=True)``, gives exactly the ids the encoder trains on, for every
  tiny preset (GLM families included: their tokenizers load through the family loader).
"""

from __future__ import annotations

import pytest

from lmforge.plugins.descriptors import BOS, EOS, ChatTemplate, Message, Special

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)

CONVERSATIONS = [
    [Message("user", "What is 3 plus 4?")],
    [Message("system", "You are terse."), Message("user", "小明有5个苹果"), Message("assistant", "好的 5"),
     Message("user", "再加2个?")],
    [Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d"),
     Message("user", "e")],
]
PRESETS = ["tiny-llama", "tiny-bloom", "tiny-cpmant", "tiny-minicpm", "tiny-minicpm3",
           "tiny-glm", "tiny-chatglm", "tiny-chatglm2", "tiny-chatglm3", "tiny-glm4"]
GLM_PRESETS = ("tiny-glm", "tiny-chatglm", "tiny-chatglm2", "tiny-chatglm3", "tiny-glm4")

# the conversation of llama.cpp's tests/test-chat-template.cpp (ggml-org/llama.cpp), whose expected outputs
# are the released models' own chat_template renderings
LLAMACPP_CONV = [Message("system", "You are a helpful assistant"), Message("user", "Hello"),
                 Message("assistant", "Hi there"), Message("user", "Who are you"),
                 Message("assistant", "   I am an assistant   "), Message("user", "Another question")]
HELLO = [Message("user", "hello")]
HISTORY = [Message("user", "Hello"), Message("assistant", "Hi there"), Message("user", "Who are you")]


def _family(name: str):
    from lmforge.plugins.registry import get_registry

    return get_registry().get("model_families", name)


def render_text(t: ChatTemplate, messages, *, bos="<s>", eos="</s>", joiner="") -> str:
    """A template's rendering as text (special tokens as their strings), the form released formats are written in.

    ``joiner`` stands for sentencepiece's space before every separately encoded text piece (ChatGLM2/3).
    """
    out, prev_text = ([bos] if t.add_bos and bos else []), False
    for piece, _ in t.render(messages):
        if isinstance(piece, Special):
            out.append(eos if piece == EOS else bos if piece == BOS else piece.text)
            prev_text = False
        else:
            out.append((joiner if prev_text else "") + piece)
            prev_text = True
    return "".join(out)


# (family, messages, released text). Sources:
RELEASED = [
    # ChatGLM3-6B tokenizer_config.json chat_template ("[gMASK]sop<|role|>\n content", "<|assistant|>" last), as
    # quoted in llama.cpp tests/test-chat-template.cpp; the "\n " is sentencepiece's space before a separately
    # encoded piece (THUDM/chatglm3-6b tokenization_chatglm.py build_single_message encodes "\n" and the
    # message on their own)
    ("chatglm3", HELLO, "[gMASK]sop<|user|>\n hello<|assistant|>"),
    ("chatglm3", LLAMACPP_CONV, "[gMASK]sop<|system|>\n You are a helpful assistant<|user|>\n Hello<|assistant|>\n Hi "
                                "there<|user|>\n Who are you<|assistant|>\n    I am an assistant   <|user|>\n Another "
                                "question<|assistant|>"),
    # GLM-4-9B-chat tokenizer_config.json chat_template ("[gMASK]<sop>", "<|role|>{metadata}\n{content}"), as quoted
    # in llama.cpp tests/test-chat-template.cpp ("ChatGLM4")
    ("glm4", HELLO, "[gMASK]<sop><|user|>\nhello<|assistant|>"),
    ("glm4", LLAMACPP_CONV, "[gMASK]<sop><|system|>\nYou are a helpful assistant<|user|>\nHello<|assistant|>\nHi there"
                            "<|user|>\nWho are you<|assistant|>\n   I am an assistant   <|user|>\nAnother question"
                            "<|assistant|>"),
    # ChatGLM2-6B tokenization_chatglm.py: get_prefix_tokens() = [gMASK], sop; build_prompt():
    # "[Round {i+1}]\n\n问：{q}\n\n答：{r}\n\n" per earlier exchange, then "[Round {n+1}]\n\n问：{query}\n\n答："
    ("chatglm2", HELLO, "[gMASK]sop[Round 1]\n\n问：hello\n\n答："),
    ("chatglm2", HISTORY, "[gMASK]sop[Round 1]\n\n问：Hello\n\n答：Hi there\n\n[Round 2]\n\n问：Who are you\n\n答："),
    # ChatGLM-6B modeling_chatglm.py chat(): the bare query without history, else "[Round {i}]\n问：{q}\n答：{r}\n"
    # (i from 0) and "[Round {n}]\n问：{query}\n答："; build_inputs_with_special_tokens appends [gMASK] <sop>
    ("chatglm", HELLO, "hello[gMASK]<sop>"),
    ("chatglm", HISTORY, "[Round 0]\n问：Hello\n答：Hi there\n[Round 1]\n问：Who are you\n答：[gMASK]<sop>"),
    # GLM v1 (THUDM GLM-*-chinese tokenization_glm.py): [CLS] text, [gMASK] when the text has no mask token,
    # <|endoftext|>; build_inputs_for_generation starts the answer with <|startofpiece|>
    ("glm", HELLO, "[CLS]hello[gMASK]<|endoftext|><|startofpiece|>"),
    ("glm", [Message("user", "北京是[MASK]的首都")], "[CLS]北京是[MASK]的首都<|endoftext|><|startofpiece|>"),
    # MiniCPM: "<用户>{query}<AI>" (llama.cpp tests/test-chat-template.cpp, MiniCPM entry); its tokenizer adds BOS <s>
    ("minicpm", HELLO, "<s><用户>hello<AI>"),
    # MiniCPM3 = ChatML (OpenHermes entry of llama.cpp tests/test-chat-template.cpp)
    ("minicpm3", HELLO, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"),
    ("minicpm3", LLAMACPP_CONV, "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello"
                                "<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you"
                                "<|im_end|>\n<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user"
                                "\nAnother question<|im_end|>\n<|im_start|>assistant\n"),
    # Llama-2-chat: "<s>[INST] {query} [/INST]" (Meta's llama generation.py chat format; llama.cpp "llama2"
    # fmt_single). lmforge renders a system message before [INST] and one BOS, where the release puts
    # "<<SYS>>" inside the first [INST] and BOS before every turn: only the single turn agrees.
    ("llama", HELLO, "<s>[INST] hello [/INST]"),
    # BLOOMZ and CPM-Ant are not chat models: the prompt is continued directly (BLOOMZ's xP3 prompts)
    ("bloom", HELLO, "hello\n"),
    ("cpmant", HELLO, "<s>hello\n"),
]


@pytest.mark.parametrize("family,messages,released", RELEASED, ids=[f"{f}-{i}" for i, (f, *_) in enumerate(RELEASED)])
def test_family_template_renders_the_released_format(family, messages, released):
    t = _family(family).chat_template
    joiner = " " if family in ("chatglm3",) else ""  # ChatGLM2/3's sentencepiece tokenizer (see render_text)
    eos = {"glm": "<|endoftext|>", "chatglm": "<eop>"}.get(family, "</s>")
    assert render_text(t, messages, joiner=joiner, eos=eos) == released


def test_core_templates_render_their_released_formats():
    from lmforge.plugins.templates import CHATML, LLAMA3

    # OpenHermes entry of llama.cpp tests/test-chat-template.cpp (single turn)
    assert render_text(CHATML, HELLO) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    # Llama 3 instruct (llama.cpp "llama3" fmt_single): header, "\n\n", content, <|eot_id|>; BOS <|begin_of_text|>
    assert render_text(LLAMA3, [Message("user", "How are you")], bos="<|begin_of_text|>") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow are you<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_text(LLAMA3, [Message("user", "q"), Message("assistant", "a")], bos="") == (
        "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "a<|eot_id|>")
    assert _family("minicpm3").chat_template is CHATML  # plugins reference core's templates


def test_templates_are_data_with_checked_fields():
    with pytest.raises(ValueError, match="style must be one of"):
        ChatTemplate(name="x", style="chat")
    with pytest.raises(ValueError, match="must start with its role marker"):
        ChatTemplate(name="x", style="roles", user="{content}")
    with pytest.raises(ValueError, match="unknown message role 'robot'"):
        ChatTemplate(name="x").render([Message("robot", "hi")])
    t = _family("glm4").chat_template
    assert t.stop_tokens == (EOS, Special("<|user|>"), Special("<|observation|>"))
    assert t.assistant_prefix == (Special("<|assistant|>"),)


@pytest.mark.parametrize("preset", PRESETS)
def test_saved_tokenizer_renders_the_training_prompt(preset, tmp_path):
    from transformers import AutoTokenizer

    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import LoadOptions, load_model, load_tokenizer, resolve_model
    from lmforge.plugins.chat_jinja import attach

    src = resolve_model(preset)
    _, tok = load_model(src, LoadOptions(dtype="fp32"))
    enc = make_encoder(tok, src.family, max_length=10**9)
    attach(tok, enc)
    tok.save_pretrained(tmp_path)
    # GLM tokenizers are lmforge's own classes (plain transformers cannot read their files): the family's loader
    plain = load_tokenizer(src, path=str(tmp_path)) if preset in GLM_PRESETS else AutoTokenizer.from_pretrained(tmp_path)
    assert plain.chat_template
    for conv in CONVERSATIONS:
        got = plain.apply_chat_template([{"role": m.role, "content": m.content} for m in conv],
                                        add_generation_prompt=True, tokenize=True)
        got = list(got["input_ids"] if hasattr(got, "keys") else got)
        assert got == enc.encode_prompt(conv), conv
    # the training example of a conversation starts with exactly that prompt
    conv = CONVERSATIONS[1] + [Message("assistant", "7个")]
    feats = enc.encode(__import__("lmforge.plugins.descriptors", fromlist=["Example"]).Example(messages=tuple(conv)))
    assert feats["input_ids"][:len(enc.encode_prompt(CONVERSATIONS[1]))] == enc.encode_prompt(CONVERSATIONS[1])


def test_raw_template_attaches_nothing():
    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import load_tokenizer, resolve_model
    from lmforge.plugins.chat_jinja import chat_template_for

    for preset in ("tiny-llama", "tiny-chatglm3"):
        src = resolve_model(preset)
        assert chat_template_for(make_encoder(load_tokenizer(src), src.family, template="raw")) is None


def test_family_encoder_is_an_encoder_subclass_with_defaults():
    import dataclasses

    from lmforge.data.encoding import Encoder, make_encoder
    from lmforge.errors import PluginError
    from lmforge.modeling.loading import load_tokenizer, resolve_model

    src = resolve_model("tiny-llama")
    tok = load_tokenizer(src)

    class Own(Encoder):  # a family encoder overriding nothing behaves as the default one
        pass

    fam = dataclasses.replace(src.family, encoder=Own)
    enc = make_encoder(tok, fam, max_length=64)
    assert isinstance(enc, Own) and enc.pack_collate is None and enc.packed_attention == "lmforge"
    assert enc.cache_identity() == {}
    ids = enc.encode_prompt("hi")
    batch = enc.collate([{"input_ids": ids, "labels": ids}, {"input_ids": ids[:2], "labels": ids[:2]}])
    assert batch["attention_mask"].tolist()[1] == [1, 1] + [0] * (len(ids) - 2)
    assert enc.collate_prompts([ids, ids[:1]])["input_ids"].tolist()[1][-1] == ids[0]  # left padded
    with pytest.raises(PluginError, match="'llama': encoder .* is not a subclass of lmforge.data.encoding.Encoder"):
        make_encoder(tok, dataclasses.replace(src.family, encoder=dict))


def test_glm_chat_text_keeps_word_commands_and_plain_encoding_as_released():
    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import load_tokenizer, resolve_model
    from lmforge.plugins.chat_jinja import attach

    src = resolve_model("tiny-chatglm3")
    tok = load_tokenizer(src)
    enc = make_encoder(tok, src.family, max_length=10**9)
    attach(tok, enc)
    conv = [Message("user", "sop sopping eop")]  # ChatGLM3's word-like command names, as text
    got = tok.apply_chat_template([{"role": "user", "content": conv[0].content}], add_generation_prompt=True)
    assert list(got["input_ids"] if hasattr(got, "keys") else got) == enc.encode_prompt(conv)
    # outside apply_chat_template the released tokenization stands: command strings in text stay text
    assert tok.get_command("<|user|>") not in tok.encode("<|user|>", add_special_tokens=False)
