"""Rebuild the vocabulary files of the tiny GLM presets (shipped in llm_plugins_glm/data/).

    python llm_plugins_glm/scripts/build_tiny_tokenizers.py

Trains, on the repository's example data plus the small bilingual corpus below,
one small vocabulary per released tokenizer format, so that the tiny presets go
through exactly the code paths the released files do:

- ``chatglm2.model``: sentencepiece BPE with byte fallback and ``<unk> <s> </s>`` at
  0/1/2, like ChatGLM2/3's ``tokenizer.model`` (used by tiny-chatglm2 and tiny-chatglm3);
- ``ice_text.model``: sentencepiece (BPE) with ChatGLM-6B's in-model command pieces
  (``[MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK>``, ``<n>``,
  ``<|tab|>``, ``<|blank_2|>`` ... ``<|blank_80|>``) and ``<pad>`` at 3;
- ``cog-pretrain.model``: sentencepiece for GLM v1 (command tokens are appended by the tokenizer);
- ``glm4_tiktoken.model``: tiktoken ranks (``base64 rank`` lines) from a byte-level BPE.

Deterministic for the same inputs (single-threaded training).
"""

from __future__ import annotations

import io
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.dirname(HERE)
ROOT = os.path.dirname(PLUGIN)
OUT = os.path.join(PLUGIN, "llm_plugins_glm", "data")

EXTRA = [
    "The quick brown fox jumps over the lazy dog.",
    "Large language models are trained on text and fine-tuned on instructions.",
    "Please answer the question step by step.",
    "Tsinghua University is located in Beijing.",
    "今天天气很好，我们去公园散步吧。",
    "大语言模型可以回答问题、写文章和翻译句子。",
    "请一步一步地回答下面的问题。",
    "你好，我是人工智能助手。很高兴见到你！",
    "清华大学位于北京。",
    "[Round 1]\n\n问：你好\n\n答：你好！",
    "[Round 0]\n问：你好\n答：你好！",
    "问：答：用户：助手：系统：",
    "def add(a, b):\n    return a + b\n",
    "Question: Answer: Instruction: Response: Human: Assistant: System:",
    "0123456789 + - * / = ( ) [ ] { } < > | , . ! ? : ; ' \"",
]


def corpus() -> list[str]:
    from lmforge.modeling.tiny_tokenizer import example_data_files, tiny_corpus

    return tiny_corpus(EXTRA, data_files=example_data_files(ROOT), repeat=20, printable_ascii=False)


def train_sp(texts: list[str], out_path: str, **options) -> None:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t.replace("\n", " ") if options.get("_flatten") else t for t in texts]),
        model_writer=buf,
        num_threads=1,
        minloglevel=2,
        **{k: v for k, v in options.items() if not k.startswith("_")},
    )
    with open(out_path, "wb") as f:
        f.write(buf.getvalue())


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tiktoken(texts: list[str], out_path: str, vocab_size: int = 1000) -> None:
    from lmforge.modeling.tiny_tokenizer import train_byte_bpe

    from llm_plugins_glm.tokenization import write_tiktoken_ranks

    tok = train_byte_bpe(texts, vocab_size=vocab_size, special_tokens=[])
    model = json.loads(tok.to_str())["model"]
    decode = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        token = bytes(decode[c] for c in left + right)
        if token not in ranks:
            ranks[token] = len(ranks)
    write_tiktoken_ranks(ranks, out_path)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    texts = corpus()
    common = dict(character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
                  add_dummy_prefix=True, byte_fallback=True, split_digits=True, max_sentence_length=4096)
    train_sp(texts, os.path.join(OUT, "chatglm2.model"), model_type="bpe", vocab_size=1000,
             unk_id=0, bos_id=1, eos_id=2, pad_id=-1, **common)
    blanks = [f"<|blank_{k}|>" for k in range(2, 81)]
    ice_symbols = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>", "<n>",
                   "<|tab|>"] + blanks
    ice_texts = [t.replace("\n", "<n>") for t in texts]
    train_sp(ice_texts, os.path.join(OUT, "ice_text.model"), model_type="bpe", vocab_size=1000,
             unk_id=0, bos_id=1, eos_id=2, pad_id=3, pad_piece="<pad>", user_defined_symbols=ice_symbols, **common)
    train_sp(texts, os.path.join(OUT, "cog-pretrain.model"), model_type="bpe", vocab_size=1000,
             unk_id=0, bos_id=1, eos_id=2, pad_id=-1, **common)
    build_tiktoken(texts, os.path.join(OUT, "glm4_tiktoken.model"))
    for name in sorted(os.listdir(OUT)):
        print(f"wrote {os.path.join(OUT, name)} ({os.path.getsize(os.path.join(OUT, name))} bytes)")


if __name__ == "__main__":
    main()
