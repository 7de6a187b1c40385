"""Rebuild llm_plugins_bloom/data/tiny_tokenizer.json (the tiny-bloom preset's tokenizer).

    python llm_plugins_bloom/scripts/build_tiny_tokenizer.py

A 2,048-token byte-level BPE trained on the repository's example data plus a
small bilingual corpus. The special tokens take BLOOM's ids: <unk>=0, <s>=1,
</s>=2, <pad>=3. Deterministic: the same inputs give the same file.
"""

from __future__ import annotations

import json
import os

from lmforge.modeling.tiny_tokenizer import train_byte_bpe

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(os.path.dirname(HERE), "llm_plugins_bloom", "data", "tiny_tokenizer.json")

EXTRA = [
    "The quick brown fox jumps over the lazy dog.",
    "Translate to English: Je t'aime. Answer: I love you.",
    "Please answer the question step by step.",
    "今天天气很好，我们去公园散步吧。",
    "大语言模型可以回答问题、写文章和翻译句子。",
    "Question: Answer: Instruction: Response: Input: Output:",
]


def corpus():
    for name in ("train.jsonl", "valid.jsonl"):
        with open(os.path.join(ROOT, "examples", "data", name), encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                yield rec["input"]
                yield rec["output"]
    for _ in range(50):
        yield from EXTRA
    yield "".join(chr(c) for c in range(32, 127))


def main() -> None:
    tok = train_byte_bpe(corpus(), vocab_size=2048, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tok.save(OUT)
    print(f"wrote {OUT} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
