"""Turning :class:`~lmforge.plugins.descriptors.Example` objects into token ids and labels.

:class:`Encoder` is the contract between core and a family: the default renders a
conversation with the family's :class:`~lmforge.plugins.descriptors.ChatTemplate`
(text pieces tokenized one by one, special tokens by id, so the prompt of a training
example and the prompt given to ``generate`` are the same token ids), masks prompt
tokens with ``-100``, and collates batches. Families with their own position ids or
masks (GLM) subclass it and name the subclass in ``ModelFamily.encoder``.

Truncation policy: an example longer than ``max_length`` is cut at
``max_length`` tokens from the right (the start of the prompt is kept). If no
trainable token survives the cut, the example is dropped. Both are counted in
:class:`EncodeStats` and reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from lmforge.plugins.descriptors import ChatTemplate, Example, Message, ModelFamily, Special, resolve_ref

from lmforge.data.collate import IGNORE_INDEX  # noqa: E402,F401 - one definition, re-exported

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


class Encoder:
    """What a family's encoder is: the one contract core calls, with default behaviour.

    Core (data preparation, the token cache, batching, packing, generation, saving the
    tokenizer's chat template) calls these methods and attributes directly, never
    probing for them. A family with its own position ids or masks (GLM) subclasses this
    class and names it in ``ModelFamily.encoder``; everything it does not override
    behaves as for any other family. The default renders the family's
    :class:`~lmforge.plugins.descriptors.ChatTemplate` (``family.chat_template``), the
    only rendering of it in training and inference.

    Attributes: ``tokenizer``, ``family``, ``max_length``, ``train_on_prompt``,
    ``template`` (the :class:`ChatTemplate` in use; :data:`RAW_TEMPLATE` for
    ``template: raw``, when ``raw`` is true) and ``stats`` (:class:`EncodeStats`).
    ``packed_attention`` is ``"lmforge"`` (packed training may swap in lmforge's per-example attention) or
    ``"model"`` (the model honours packed batches itself). ``pack_collate`` is ``None``
    (lmforge's :class:`~lmforge.packing.collate.PackedCollator`) or a function of a list
    of packed rows.
    """

    packed_attention: str = "lmforge"
    pack_collate: Callable[[list], dict] | None = None

    def __init__(self, tokenizer, family: ModelFamily | None, *, max_length: int = 512,
                 train_on_prompt: bool = False, template: str = "family") -> None:
        self.tokenizer = tokenizer
        self.family = family
        self.max_length = max_length
        self.train_on_prompt = train_on_prompt
        self.raw = template == "raw"
        self.template = self.select_template(family, template)
        self.stats = EncodeStats()
        self._token_ids: dict[str, int] = {}

    def select_template(self, family: ModelFamily | None, template: str) -> ChatTemplate:
        """The :class:`ChatTemplate` for ``data.template`` (``family`` or ``raw``). ``raw`` keeps the family's
        ``separator_between`` (ChatML's newline belongs to its end token)."""
        if family is None or family.chat_template is None:
            return RAW_TEMPLATE
        if template == "raw":
            sep = family.chat_template.separator_between
            return dataclasses.replace(RAW_TEMPLATE, separator_between=sep) if sep else RAW_TEMPLATE
        return family.chat_template

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
        # tokenizer objects differ (fast, slow, a family's own class): these probe the tokenizer, not the encoder
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

    def token_id(self, text: str) -> int:
        """The id of the special token ``text``; ``ValueError`` naming the template when the tokenizer lacks it."""
        if text not in self._token_ids:
            tok = self.tokenizer
            tid = tok.convert_tokens_to_ids(text)
            unk = getattr(tok, "unk_token_id", None)
            if tid is None or (tid == unk and text != getattr(tok, "unk_token", None)):
                raise ValueError(f"chat template {self.template.name!r}: the tokenizer has no token {text!r}")
            self._token_ids[text] = int(tid)
        return self._token_ids[text]

    def special_ids(self, piece: Special) -> list[int]:
        if piece.kind == "eos":
            return self._eos()
        if piece.kind == "bos":
            bos = getattr(self.tokenizer, "bos_token_id", None)
            return [bos] if bos is not None else []
        return [self.token_id(piece.text)]

    def piece_ids(self, piece) -> list[int]:
        """Ids of one template piece: a :class:`Special` token's id, or the text tokenized on its own."""
        return self.special_ids(piece) if isinstance(piece, Special) else self._ids(piece)

    def _pieces_ids(self, pieces) -> list[int]:
        return [i for p in pieces for i in self.piece_ids(p)]

    def _has_mask(self, prompt: str) -> bool:
        masks = {self.token_id(m) for m in self.template.optional_masks}
        return any(i in masks for i in self._ids(prompt))

    def segments(self, example: Example) -> list[tuple[list[int], bool]]:
        """Token-id segments with a trainable flag, before truncation: the template's pieces, in order."""
        t = self.template
        if example.text is not None:
            return [(self._bos() + self._pieces_ids(t.text_prefix), False),
                    (self._ids(example.text) + self.special_ids(t.text_end), True)]
        out: list[tuple[list[int], bool]] = [(self._bos(), False)]
        for piece, trainable in t.render(example.messages, has_mask=self._has_mask):
            out.append((self.piece_ids(piece), trainable))
        return out

    # ----------------------------------------------------------------- API
    def encode(self, example: Example) -> dict[str, Any] | None:
        """``{"input_ids", "labels"}`` for one example, or ``None`` when truncation left no response."""
        return encode_bounded(self, example)

    def encode_prompt(self, messages: Sequence[Message] | str) -> list[int]:
        """Ids of a generation prompt: the template applied up to the generation prefix.

        Built from the same :meth:`segments` as training (the end token after every
        earlier answer included), so a multi-turn history is tokenized exactly as it
        was in the training example it came from.
        """
        if isinstance(messages, str):
            messages = [Message("user", messages)]
        ids: list[int] = []
        for seg, _ in self.segments(Example(messages=tuple(messages))):
            ids.extend(seg)
        return ids

    def stop_token_ids(self) -> list[int]:
        """Token ids that end a generated response: the template's ``stop_tokens``."""
        out: list[int] = []
        for s in self.template.stop_tokens:
            for i in self.special_ids(s):
                if i not in out:
                    out.append(i)
        return out

    def decode_response(self, ids: Sequence[int]) -> str:
        """Generated ids -> answer text."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def cache_identity(self) -> dict:
        """What the token cache keys on besides the tokenizer, family, template and class (default: nothing)."""
        return {}

    def chat_template_jinja(self) -> str | None:
        """The Jinja ``chat_template`` saved with the tokenizer: :attr:`template` as Jinja
        (``None`` for ``template: raw``, whose prompts have no chat form)."""
        from lmforge.plugins.chat_jinja import jinja_from_template

        if self.raw or self.template.name == "raw":
            return None
        tok = self.tokenizer
        bos = tok.bos_token if getattr(tok, "bos_token_id", None) is not None else None
        eos = tok.eos_token if getattr(tok, "eos_token_id", None) is not None else None
        return jinja_from_template(self.template, bos=bos, eos=eos, piece_joiner=self.piece_joiner())

    def piece_joiner(self) -> str:
        """Text that stands for "a new text piece starts here" once a rendered prompt is tokenized whole:
        ``" "`` for sentencepiece tokenizers that prefix every separately encoded piece with a space
        (ChatGLM2/3's, as the released ChatGLM3 ``chat_template`` writes ``"\\n "``), else ``""``."""
        ids = self._ids("a")
        if not ids:
            return ""
        first = self.tokenizer.convert_ids_to_tokens(ids[:1])[0]
        return " " if isinstance(first, str) and first.startswith("\u2581") else ""

    # ----------------------------------------------------------------- batching
    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> dict:
        """A right-padded training batch (``input_ids``, ``labels``, ``attention_mask``)."""
        from lmforge.data.collate import pad_collate

        return pad_collate(features, self.pad_token_id(), pad_to_multiple_of)

    def collate_prompts(self, prompts: list[list[int]]) -> dict:
        """Left-padded generation prompts (``input_ids``, ``attention_mask``)."""
        from lmforge.data.collate import pad_collate

        batch = pad_collate([{"input_ids": p} for p in prompts], self.pad_token_id(), padding_side="left")
        batch.pop("labels", None)
        return batch

    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else 0


#: the default encoder's historical name
TemplateEncoder = Encoder


def make_encoder(tokenizer, family: ModelFamily | None, **kwargs) -> Encoder:
    """The family's encoder class (``ModelFamily.encoder``, a subclass of :class:`Encoder`) or :class:`Encoder`."""
    cls = resolve_ref(family.encoder) if family is not None and family.encoder is not None else Encoder
    if not (isinstance(cls, type) and issubclass(cls, Encoder)):
        from lmforge.errors import PluginError

        raise PluginError(f"model family {family.name!r}: encoder {family.encoder!r} is not a subclass of "
                          "lmforge.data.encoding.Encoder")
    return cls(tokenizer, family, **kwargs)
