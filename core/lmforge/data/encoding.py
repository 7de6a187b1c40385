"""Turning :class:`~lmforge.plugins.descriptors.Example` objects into token ids and labels.

The default :class:`TemplateEncoder` renders a conversation with the family's
:class:`~lmforge.plugins.descriptors.ChatTemplate`, tokenizes each segment on its own
(so the prompt of a training example and the prompt given to ``generate`` are
the same token ids), masks prompt tokens with ``-100`` and appends EOS after each
assistant turn. Families with their own position ids or masks (GLM) register an
encoder class with the same interface through ``ModelFamily.encoder``.

Truncation policy: an example longer than ``max_length`` is cut at
``max_length`` tokens from the right (the start of the prompt is kept). If no
trainable token survives the cut, the example is dropped. Both are counted in
:class:`EncodeStats` and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from lmforge.plugins.descriptors import ChatTemplate, Example, Message, ModelFamily, resolve_ref

IGNORE_INDEX = -100

RAW_TEMPLATE = ChatTemplate(name="raw", user="{content}", assistant="{content}", system="{content}")


@dataclass
class EncodeStats:
    """Counts reported after tokenization."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    dropped_sources: list = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.examples} examples, {self.tokens} tokens ({self.trainable_tokens} trained), "
                f"{self.truncated} truncated, {self.dropped} dropped (no response token left after truncation)")


def features_from_segments(segments, stats: EncodeStats, *, max_length: int, train_on_prompt: bool,
                           source=None) -> dict[str, Any] | None:
    """Join ``(ids, trainable)`` segments into ``input_ids``/``labels`` under the truncation policy.

    Prompt ids get label -100 unless ``train_on_prompt``; the result is cut at
    ``max_length`` and dropped (``None``) when no trainable token is left. Counts
    go to ``stats``. Shared by every encoder so the policy is the same everywhere.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, trainable in segments:
        input_ids.extend(ids)
        labels.extend(ids if (trainable or train_on_prompt) else [IGNORE_INDEX] * len(ids))
    stats.examples += 1
    if len(input_ids) > max_length:
        stats.truncated += 1
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if not any(lab != IGNORE_INDEX for lab in labels):
        stats.dropped += 1
        if len(stats.dropped_sources) < 5:
            stats.dropped_sources.append(source)
        return None
    stats.tokens += len(input_ids)
    stats.trainable_tokens += sum(lab != IGNORE_INDEX for lab in labels)
    return {"input_ids": input_ids, "labels": labels}


# a text longer than (token limit x this) characters is tokenized by prefixes (see bounded_ids)
PREFIX_CHARS_PER_TOKEN = 16
# tokens past the limit a prefix must yield, so the cut never changes a kept token
PREFIX_MARGIN_TOKENS = 64


def bounded_ids(encode, text: str, limit: int | None) -> list[int]:
    """``encode(text)``, but at most ``limit`` ids, tokenizing no more of ``text`` than that needs.

    Tokenizing a 50 MB record whole to keep its first 512 tokens costs gigabytes
    (the tokenizer's offsets, token strings and ids for millions of tokens). A
    prefix is tokenized instead, doubled until it yields ``limit +
    PREFIX_MARGIN_TOKENS`` ids; the first ``limit`` ids of a prefix cut at
    whitespace that far beyond them are those of the whole text (tokenizers merge
    within a few characters of a position only). Memory stays proportional to
    ``limit`` plus the record itself.
    """
    if limit is None:
        return encode(text)
    if len(text) <= limit * PREFIX_CHARS_PER_TOKEN:
        return list(encode(text)[:limit])
    n = (limit + PREFIX_MARGIN_TOKENS) * 4
    while n < len(text):
        cut = text.rfind(" ", n - n // 8, n)  # end the prefix on a word boundary where there is one
        ids = encode(text[: cut if cut > 0 else n])
        if len(ids) >= limit + PREFIX_MARGIN_TOKENS:
            return list(ids[:limit])
        n *= 2
    return list(encode(text)[:limit])


def encode_bounded(encoder, example: Example) -> dict[str, Any] | None:
    """``encoder.segments(example)`` with every segment's tokenization bounded to ``max_length + 1`` ids
    (one past the limit, so truncation is still counted), then the truncation policy. Shared by
    the encoders that tokenize through ``_ids`` with a ``_limit`` (default and GLM)."""
    encoder._limit = encoder.max_length + 1
    try:
        segments = encoder.segments(example)
    finally:
        encoder._limit = None
    return features_from_segments(segments, encoder.stats, max_length=encoder.max_length,
                                  train_on_prompt=encoder.train_on_prompt, source=getattr(example, "source", None))


class TemplateEncoder:
    """Default encoder: chat template segments -> ``input_ids`` and ``labels``.

    Constructed once per job by :func:`make_encoder`. ``encode(example)`` returns
    a dict with ``input_ids`` and ``labels`` (lists of ints) or ``None`` when the
    example is dropped; ``encode_prompt(messages)`` returns the ids a generation
    starts from.
    """

    def __init__(self, tokenizer, family: ModelFamily | None, *, max_length: int = 512,
                 train_on_prompt: bool = False, template: str = "family") -> None:
        self.tokenizer = tokenizer
        self.family = family
        self.max_length = max_length
        self.train_on_prompt = train_on_prompt
        if template == "raw" or family is None or family.chat_template is None:
            self.template = RAW_TEMPLATE
        else:
            self.template = family.chat_template
        self.stats = EncodeStats()

    # ----------------------------------------------------------------- pieces
    _limit: int | None = None  # set while encode() runs: no segment needs more than max_length + 1 ids

    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        return bounded_ids(self._encode_text, text, self._limit)

    def _encode_text(self, text: str) -> list[int]:
        backend = self._fast_backend()
        if backend is not None:  # same ids as tokenizer.encode, without its per-call wrapper cost
            return backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _fast_backend(self):
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode") or getattr(tok, "split_special_tokens", False):
            return None
        return backend

    def _bos(self) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [bos] if (self.template.add_bos and bos is not None) else []

    def _eos(self) -> list[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return [eos] if eos is not None else []

    def segments(self, example: Example) -> list[tuple[list[int], bool]]:
        """Token-id segments with a trainable flag, before truncation."""
        if example.text is not None:
            return [(self._bos(), False), (self._ids(example.text) + self._eos(), True)]
        out: list[tuple[list[int], bool]] = [(self._bos(), False)]
        for text, trainable in self.template.render(example.messages):
            out.append((self._ids(text), trainable))
        # EOS closes every assistant turn: find the last segment of each trainable run
        closed: list[tuple[list[int], bool]] = []
        for i, (ids, trainable) in enumerate(out):
            closed.append((ids, trainable))
            nxt_trainable = out[i + 1][1] if i + 1 < len(out) else False
            if trainable and not nxt_trainable:
                closed.append((self._eos(), True))
        return closed

    # ----------------------------------------------------------------- API
    def encode(self, example: Example) -> dict[str, Any] | None:
        return encode_bounded(self, example)

    def encode_prompt(self, messages: Sequence[Message] | str) -> list[int]:
        """Ids of a generation prompt: the template applied up to the assistant prefix.

        Built from the same :meth:`segments` as training (EOS after every earlier
        answer included), so a multi-turn history is tokenized exactly as it was
        in the training example it came from.
        """
        if isinstance(messages, str):
            messages = [Message("user", messages)]
        ids: list[int] = []
        for seg, _ in self.segments(Example(messages=tuple(messages))):
            ids.extend(seg)
        return ids

    def stop_token_ids(self) -> list[int]:
        """Token ids that end a generated response (EOS)."""
        return self._eos()


def make_encoder(tokenizer, family: ModelFamily | None, **kwargs) -> TemplateEncoder:
    """The family's encoder class (``ModelFamily.encoder``) or :class:`TemplateEncoder`."""
    cls = resolve_ref(family.encoder) if family is not None and family.encoder is not None else TemplateEncoder
    return cls(tokenizer, family, **kwargs)
