"""Offline tokenizers for ``tiny-*`` presets.

Tiny presets must build without a model hub, so family plugins ship a small
byte-level BPE ``tokenizer.json`` (trained by :func:`train_byte_bpe` from a
corpus in the repository) and load it with :func:`load_tokenizer_file`.
Byte-level BPE never produces an unknown token, so any text, Chinese included,
round-trips.
"""

from __future__ import annotations

from typing import Iterable


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


def load_tokenizer_file(path: str, **special_tokens):
    """A transformers fast tokenizer from a ``tokenizer.json`` file plus named special tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=path, **special_tokens)
    tok.padding_side = "right"
    return tok
