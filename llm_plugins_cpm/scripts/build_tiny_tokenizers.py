"""Rebuild the tiny presets' tokenizers in llm_plugins_cpm/data/.

    python llm_plugins_cpm/scripts/build_tiny_tokenizers.py

* ``tiny_minicpm_tokenizer.json``: byte-level BPE with MiniCPM's special tokens
  (<unk>=0, <s>=1, </s>=2) plus the chat markers ``<用户>`` and ``<AI>``.
* ``tiny_minicpm3_tokenizer.json``: the same corpus with MiniCPM3's ChatML markers
  ``<|im_end|>`` (its EOS) and ``<|im_start|>``.
* ``tiny_cpmant_vocab.txt``: a vocab.txt for transformers' real ``CpmAntTokenizer``
  (jieba word cut, then greedy longest match): special tokens, every character of
  the corpus and its frequent words. ``<pad>`` is id 0, the id CPM-Ant treats as padding.

Deterministic: the same inputs give the same files.
"""

from __future__ import annotations

import collections
import os
import re

from lmforge.modeling.tiny_tokenizer import build_tokenizer_file, example_data_files, tiny_corpus

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(os.path.dirname(HERE), "llm_plugins_cpm", "data")

EXTRA = [
    "The quick brown fox jumps over the lazy dog.",
    "Please answer the question step by step.",
    "今天天气很好，我们去公园散步吧。",
    "大语言模型可以回答问题、写文章和翻译句子。",
    "请一步一步地回答下面的问题。",
    "中国的首都是北京。一加一等于二。",
    "Question: Answer: Instruction: Response: user assistant system",
]

CPMANT_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<d>", "</d>", "</_>", "</n>"]


def corpus() -> list[str]:
    return tiny_corpus(EXTRA, data_files=example_data_files(ROOT))


def build_bpe(name: str, specials: list[str]) -> None:
    build_tokenizer_file(os.path.join(DATA, name), corpus(), vocab_size=2048, special_tokens=specials)


def build_cpmant_vocab() -> None:
    import rjieba

    chars: set[str] = set()
    words: collections.Counter = collections.Counter()
    for text in corpus():
        chars.update(text)
        for piece in rjieba.cut(text, False):
            if len(piece) > 1 and not re.fullmatch(r"\s+", piece):
                words[piece] += 1
    chars -= {" ", "\n"}  # CpmAntTokenizer spells them </_> and </n>
    vocab = list(CPMANT_SPECIALS)
    vocab += sorted(chars)
    vocab += sorted(w for w, n in words.items() if n >= 3 and w not in chars)
    path = os.path.join(DATA, "tiny_cpmant_vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    print(f"wrote {path} ({len(vocab)} tokens)")


def main() -> None:
    os.makedirs(DATA, exist_ok=True)
    build_bpe("tiny_minicpm_tokenizer.json", ["<unk>", "<s>", "</s>", "<用户>", "<AI>"])
    build_bpe("tiny_minicpm3_tokenizer.json", ["<unk>", "<s>", "</s>", "<|im_end|>", "<|im_start|>"])
    build_cpmant_vocab()


if __name__ == "__main__":
    main()
