"""Prompt encoders for the CPM families (imported only when a job encodes data).

:class:`TurnEncoder` is lmforge's :class:`~lmforge.data.encoding.TemplateEncoder` whose
generation prompt is built from exactly the token segments training uses, history
turns included (each earlier answer closed by EOS, as in training).
:class:`ChatMLEncoder` adds ChatML's newline after ``<|im_end|>`` (MiniCPM3's EOS)
wherever another turn follows, so a conversation tokenizes as the released
``<|im_start|>role\\n...<|im_end|>\\n`` turns.
"""

from __future__ import annotations

from typing import Sequence

from lmforge.plugins.descriptors import Example, Message
from lmforge.data.encoding import TemplateEncoder


class TurnEncoder(TemplateEncoder):
    """Training and generation share :meth:`segments`; EOS ends every assistant turn."""

    separator_after_eos = ""

    def segments(self, example: Example) -> list[tuple[list[int], bool]]:
        segs = super().segments(example)
        if not self.separator_after_eos or example.text is not None:
            return segs
        eos = self._eos()
        out: list[tuple[list[int], bool]] = []
        for i, (ids, trainable) in enumerate(segs):
            out.append((ids, trainable))
            closes_turn = trainable and eos and ids == eos and (i + 1 == len(segs) or not segs[i + 1][1])
            if closes_turn and i + 1 < len(segs):
                out.append((self._ids(self.separator_after_eos), False))
        return out

    def encode_prompt(self, messages: Sequence[Message] | str) -> list[int]:
        if isinstance(messages, str):
            messages = [Message("user", messages)]
        ids: list[int] = []
        for seg, _ in self.segments(Example(messages=tuple(messages))):
            ids.extend(seg)
        return ids


class ChatMLEncoder(TurnEncoder):
    """ChatML: ``<|im_end|>`` is EOS, followed by a newline before the next turn."""

    separator_after_eos = "\n"
