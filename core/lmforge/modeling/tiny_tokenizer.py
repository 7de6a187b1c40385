"""Offline tokenizers for ``tiny-*`` presets.

Tiny presets must build without a model hub. Two ways, both byte-level BPE
(which never produces an unknown token, so any text, Chinese included,
round-trips):

- shipped files: a plugin's ``scripts/build_tiny_tokenizer*.py`` trains one with
  :func:`build_tokenizer_file` on :func:`tiny_corpus` (the repository's example data
  plus the plugin's own sentences) and the plugin loads it with :func:`load_tokenizer_file`;
- in memory: :func:`tiny_tokenizer` trains one on :data:`DEFAULT_CORPUS` when the
  preset is built (0.02 s for the default corpus; nothing to ship), for new plugins.

Training is deterministic: the same texts and settings give the same tokenizer.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Iterable, Mapping, Sequence

#: a small bilingual corpus: enough merges for readable tiny-model tokens in English and Chinese
DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Large language models are trained on text and fine-tuned on instructions.",
    "Please answer the question step by step.",
    "What is 2 plus 3? 2 + 3 = 5. The answer is 5.",
    "What is 7 times 6? 7 * 6 = 42. The answer is 42.",
    "Anna has 4 apples and gets 3 more, so she has 7 apples.",
    "今天天气很好，我们去公园散步吧。",
    "大语言模型可以回答问题、写文章和翻译句子。",
    "请一步一步地回答下面的问题。",
    "小明有5个苹果，再加2个，一共7个。",
    "Question: Answer: Instruction: Response: Human: Assistant: System: user assistant system",
    "问：答：用户：助手：系统：",
    "0123456789 + - * / = ( ) [ ] { } < > | , . ! ? : ; ' \"",
)


def train_byte_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts`` (deterministic for the same input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tiny_corpus(extra: Sequence[str], *, data_files: Sequence[str] = (), repeat: int = 50,
                printable_ascii: bool = True) -> list[str]:
    """The texts a shipped tiny tokenizer is trained on, in order.

    Every record's ``input`` and ``output`` of the JSONL ``data_files``, then
    ``extra`` ``repeat`` times (so its words win merges), then one line of the
    printable ASCII characters when ``printable_ascii``.
    """
    texts: list[str] = []
    for path in data_files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                texts += [rec["input"], rec["output"]]
    texts += list(extra) * repeat
    if printable_ascii:
        texts.append("".join(chr(c) for c in range(32, 127)))
    return texts


def example_data_files(repo_root: str) -> list[str]:
    """The repository's ``examples/data/{train,valid}.jsonl`` (what the shipped tiny tokenizers learn from)."""
    return [os.path.join(repo_root, "examples", "data", name) for name in ("train.jsonl", "valid.jsonl")]


def build_tokenizer_file(path: str, texts: Iterable[str], *, vocab_size: int, special_tokens: list[str]):
    """Train :func:`train_byte_bpe` and write its ``tokenizer.json`` to ``path``; return the tokenizer."""
    tok = train_byte_bpe(texts, vocab_size=vocab_size, special_tokens=special_tokens)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tok.save(path)
    print(f"wrote {path} ({tok.get_vocab_size()} tokens)")
    return tok


def load_tokenizer_file(path: str, **special_tokens):
    """A transformers fast tokenizer from a ``tokenizer.json`` file plus named special tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=path, **special_tokens)
    tok.padding_side = "right"
    return tok


@functools.lru_cache(maxsize=8)
def _trained_json(texts: tuple[str, ...], vocab_size: int, specials: tuple[str, ...]) -> str:
    return train_byte_bpe(texts, vocab_size=vocab_size, special_tokens=list(specials)).to_str()


def tiny_tokenizer(special_tokens: Mapping[str, str], *, extra_special: Sequence[str] = (), vocab_size: int = 1024,
                   texts: Sequence[str] = DEFAULT_CORPUS, repeat: int = 20):
    """A transformers fast tokenizer trained in memory: byte-level BPE of at most ``vocab_size`` tokens.

    ``special_tokens`` maps transformers' names to tokens (``{"eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>"}``); they and ``extra_special`` (e.g. chat markers)
    get the first ids, in that order. ``texts`` (repeated ``repeat`` times, plus the
    printable ASCII line) is the corpus. The preset's ``vocab_size`` must be at least
    ``vocab_size``. Cached per settings, so building a preset again costs nothing.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    specials = tuple(dict.fromkeys([*special_tokens.values(), *extra_special]))
    corpus = tuple(tiny_corpus(texts, repeat=repeat))
    backend = Tokenizer.from_str(_trained_json(corpus, vocab_size, specials))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **dict(special_tokens))
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    tok.padding_side = "right"
    return tok
