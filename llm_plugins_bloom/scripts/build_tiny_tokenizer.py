"""Rebuild llm_plugins_bloom/data/tiny_tokenizer.json (the tiny-bloom preset's tokenizer).

    python llm_plugins_bloom/scripts/build_tiny_tokenizer.py

A 2,048-token byte-level BPE trained on the repository's example data plus a
small bilingual corpus. The special tokens take BLOOM's ids: <unk>=0, <s>=1,
</s>=2, <pad>=3. Deterministic: the same inputs give the same file.
"""

from __future__ import annotations

import os

from lmforge.modeling.tiny_tokenizer import build_tokenizer_file, example_data_files, tiny_corpus

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


def main() -> None:
    build_tokenizer_file(OUT, tiny_corpus(EXTRA, data_files=example_data_files(ROOT)), vocab_size=2048,
                         special_tokens=["<unk>", "<s>", "</s>", "<pad>"])


if __name__ == "__main__":
    main()
