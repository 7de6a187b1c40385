"""Rebuild llm_plugins_llama/data/tiny_tokenizer.json (the tiny-llama preset's tokenizer).

    python llm_plugins_llama/scripts/build_tiny_tokenizer.py

Trains a 4,096-token byte-level BPE on the repository's example data plus the
small bilingual corpus below. Deterministic: the same inputs give the same file.
"""

from __future__ import annotations

import os

from lmforge.modeling.tiny_tokenizer import build_tokenizer_file, example_data_files, tiny_corpus

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(os.path.dirname(HERE), "llm_plugins_llama", "data", "tiny_tokenizer.json")

EXTRA = [
    "The quick brown fox jumps over the lazy dog.",
    "Large language models are trained on text and fine-tuned on instructions.",
    "Please answer the question step by step.",
    "今天天气很好，我们去公园散步吧。",
    "大语言模型可以回答问题、写文章和翻译句子。",
    "请一步一步地回答下面的问题。",
    "Question: Answer: Instruction: Response: Human: Assistant: System:",
    "问：答：用户：助手：系统：",
]


def main() -> None:
    build_tokenizer_file(OUT, tiny_corpus(EXTRA, data_files=example_data_files(ROOT)), vocab_size=4096,
                         special_tokens=["<unk>", "<s>", "</s>", "<pad>"])


if __name__ == "__main__":
    main()
