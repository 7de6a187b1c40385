"""How a GLM-family example becomes ``input_ids``, ``labels``, ``position_ids`` and masks.

One class, :class:`GLMEncoder`, with the interface of
:class:`lmforge.data.encoding.TemplateEncoder`, follows each variant's released
prompt code (token for token, including where the released code encodes pieces
separately):

========== ===================================================================================
glm        ``[CLS] prompt [gMASK] <|endoftext|>`` then ``<|startofpiece|>`` + answer +
           ``<|endofpiece|>`` (no ``[gMASK]`` is added when the prompt has a mask token)
chatglm    ``prompt [gMASK] <sop>`` + answer + ``<eop>``; a single turn is the bare query,
           history renders as ``[Round i]\\n问：…\\n答：…\\n`` (i from 0), as ``chat()`` does
chatglm2   ``[gMASK] sop`` + ``[Round i]\\n\\n问：…\\n\\n答：`` (i from 1, history inside the
           prompt string) + answer + ``</s>``
chatglm3   ``[gMASK] sop`` then per message ``<|role|>`` + ``"\\n"`` + content, each piece
           encoded on its own like ``build_single_message``; generation starts after
           ``<|assistant|>``; a final answer closes with ``</s>``
glm4       as chatglm3 with ``[gMASK] <sop>``; a final answer closes with ``<|user|>``
           (the chat EOS of the released fine-tuning code)
========== ===================================================================================

ChatGLM3/GLM-4 train every assistant turn (and the role token that follows it);
GLM v1, ChatGLM-6B and ChatGLM2 keep earlier turns inside the prompt string and
train the last answer, like their released fine-tuning scripts. Training and
generation render through the same functions, so the prompt part of a training
example is exactly :meth:`GLMEncoder.encode_prompt` of its conversation.

Position ids come from the model's own layout function (2D for GLM v1 and
ChatGLM-6B): :meth:`GLMEncoder.collate` derives them from each example's ids
(so cached/truncated examples stay consistent) and pads them with the batch;
:meth:`GLMEncoder.collate_prompts` left-pads generation prompts.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from lmforge.plugins.descriptors import Example, Message
from lmforge.data.encoding import IGNORE_INDEX, EncodeStats, bounded_ids, encode_bounded

VARIANTS = ("glm", "chatglm", "chatglm2", "chatglm3", "glm4")
ROLE_VARIANTS = ("chatglm3", "glm4")
MASK_STRINGS = ("[MASK]", "[sMASK]", "[gMASK]")


def _command(tokenizer, token: str) -> int:
    """Id of a command token for both lmforge's GLM tokenizers and a native (``tokenizer.json``) GLM-4 tokenizer."""
    if hasattr(tokenizer, "get_command"):
        return tokenizer.get_command(token)
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise KeyError(f"{token!r} is not a token of this tokenizer")
    return tid


def variant_for(family, tokenizer) -> str:
    """The prompt variant: the family's name when it is a GLM family, else a guess from the tokenizer."""
    name = getattr(family, "name", None)
    if name in VARIANTS:
        return name
    from .tokenization import (ChatGLM2Tokenizer, ChatGLM3Tokenizer, ChatGLMTokenizer, GLM4Tokenizer,
                               GLMChineseTokenizer)

    for cls, var in ((ChatGLM3Tokenizer, "chatglm3"), (ChatGLM2Tokenizer, "chatglm2"), (ChatGLMTokenizer, "chatglm"),
                     (GLM4Tokenizer, "glm4"), (GLMChineseTokenizer, "glm")):
        if isinstance(tokenizer, cls):
            return var
    return "glm4"


class GLMEncoder:
    """Examples -> token ids, labels and GLM positions; prompts for generation; batch collation."""

    def __init__(self, tokenizer, family=None, *, max_length: int = 512, train_on_prompt: bool = False,
                 template: str = "family") -> None:
        self.tokenizer = tokenizer
        self.family = family
        self.max_length = max_length
        self.train_on_prompt = train_on_prompt
        self.raw = template == "raw"
        self.template = f"{template}:{variant_for(family, tokenizer)}"
        self.variant = variant_for(family, tokenizer)
        self.stats = EncodeStats()
        t = tokenizer
        if self.variant == "glm":
            self.sop = _command(t, "<|startofpiece|>")
            self.eop = _command(t, "<|endofpiece|>")
            self.gmask = _command(t, "[gMASK]")
            self.mask_ids = [_command(t, m) for m in MASK_STRINGS]
            self.prefix = [t.cls_token_id]
        elif self.variant == "chatglm":
            self.sop = _command(t, "<sop>")
            self.eop = _command(t, "<eop>")
            self.gmask = _command(t, "[gMASK]")
            self.mask_ids = [self.gmask, _command(t, "[MASK]")]
        else:
            self.sop = _command(t, "sop" if self.variant in ("chatglm2", "chatglm3") else "<sop>")
            self.gmask = _command(t, "[gMASK]")
            self.prefix = [self.gmask, self.sop]
            self.eos = t.eos_token_id
        if self.variant in ROLE_VARIANTS:
            self.roles = {r: _command(t, f"<|{r}|>") for r in ("system", "user", "assistant", "observation")}
        self.pad_id = t.pad_token_id if t.pad_token_id is not None else 0

    # ----------------------------------------------------------------- pieces
    _limit: int | None = None  # set while encode() runs: no segment needs more than max_length + 1 ids

    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        # a huge record is tokenized by prefixes, so memory stays bounded (lmforge.data.encoding.bounded_ids)
        return bounded_ids(lambda t: self.tokenizer.encode(t, add_special_tokens=False), text, self._limit)

    @staticmethod
    def _messages(messages: Sequence[Message] | str) -> list[Message]:
        if isinstance(messages, str):
            return [Message("user", messages)]
        return list(messages)

    def _history_prompt(self, msgs: list[Message]) -> tuple[str, str | None]:
        """(prompt text, final answer or None) for the variants that keep history in one prompt string."""
        answer = None
        if msgs and msgs[-1].role == "assistant":
            answer, msgs = msgs[-1].content, msgs[:-1]
        system = "".join(m.content + ("\n\n" if self.variant == "chatglm2" else "\n")
                         for m in msgs if m.role == "system")
        turns: list[list[str]] = []  # [query, response?]
        for m in msgs:
            if m.role in ("user", "observation"):
                turns.append([m.content])
            elif m.role == "assistant":
                if not turns:
                    turns.append([""])
                turns[-1].append(m.content)
        if not turns:
            turns = [[""]]
        history, query = turns[:-1], turns[-1][0]
        if self.raw:
            parts = [x for turn in history for x in turn] + [query]
            return system + "\n".join(parts), answer
        if self.variant == "chatglm2":
            text = "".join(f"[Round {i + 1}]\n\n问：{q}\n\n答：{r[0] if r else ''}\n\n"
                           for i, (q, *r) in enumerate(history))
            return system + text + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答：", answer
        if self.variant == "chatglm":
            if not history:
                return system + query, answer
            text = "".join(f"[Round {i}]\n问：{q}\n答：{r[0] if r else ''}\n" for i, (q, *r) in enumerate(history))
            return system + text + f"[Round {len(history)}]\n问：{query}\n答：", answer
        # glm v1 is not a chat model: earlier turns are plain lines of context
        parts = [x for turn in history for x in turn] + [query]
        return system + "\n".join(parts), answer

    def segments(self, example: Example | Sequence[Message] | str) -> list[tuple[list[int], bool]]:
        """Token-id segments with a trainable flag (before truncation); the last ones are the response."""
        if isinstance(example, Example) and example.text is not None:
            return self._text_segments(example.text)
        msgs = self._messages(example.messages if isinstance(example, Example) else example)
        if self.variant in ROLE_VARIANTS and not self.raw:
            return self._role_segments(msgs)
        prompt, answer = self._history_prompt(msgs)
        ids = self._ids(prompt)
        if self.variant == "glm":
            if not any(i in self.mask_ids for i in ids):
                ids = ids + [self.gmask]
            segs = [(self.prefix + ids + [self.tokenizer.eos_token_id, self.sop], False)]
        elif self.variant == "chatglm":
            segs = [(ids + [self.gmask, self.sop], False)]
        else:
            segs = [(self.prefix + ids, False)]
        if answer is not None:
            close = self.eop if self.variant in ("glm", "chatglm") else self.eos
            segs.append((self._ids(answer) + [close], True))
        return segs

    def _text_segments(self, text: str) -> list[tuple[list[int], bool]]:
        """Pretraining text: the variant's structural prefix, then the text (all trained) and the end token."""
        ids = self._ids(text)
        if self.variant == "glm":
            return [(self.prefix + [self.gmask, self.tokenizer.eos_token_id, self.sop], False), (ids + [self.eop], True)]
        if self.variant == "chatglm":
            return [([self.gmask, self.sop], False), (ids + [self.eop], True)]
        return [(self.prefix, False), (ids + [self.eos], True)]

    def _role_segments(self, msgs: list[Message]) -> list[tuple[list[int], bool]]:
        segs: list[tuple[list[int], bool]] = [(list(self.prefix), False)]
        prev_assistant = False
        for m in msgs:
            role = m.role
            if role not in self.roles:
                raise ValueError(f"unknown message role {role!r} (expected system, user, assistant, observation)")
            # the role token after an assistant turn closes that turn: it is trained, as in the released fine-tuning
            segs.append(([self.roles[role]], prev_assistant))
            segs.append((self._ids("\n") + self._ids(m.content), role == "assistant"))
            prev_assistant = role == "assistant"
        if prev_assistant:
            close = self.eos if self.variant == "chatglm3" else self.roles["user"]
            segs.append(([close], True))
        else:
            segs.append(([self.roles["assistant"]], False))
        return segs

    def position_ids(self, input_ids, padding_mask=None):
        """The model's position ids for a batch (``[B, 2, L]`` for GLM v1 / ChatGLM-6B, else ``[B, L]``).

        Uses the same layout function as the model's forward, counting real tokens only,
        so right-padded training rows and left-padded prompts get their unpadded positions.
        """
        import torch

        from .modeling_common import block_layout, causal_positions

        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if self.variant == "glm":
            return block_layout(ids, padding_mask, self.sop, [self.mask_ids])["position_ids"]
        if self.variant == "chatglm":
            return block_layout(ids, padding_mask, self.sop, [[self.mask_ids[0]], [self.mask_ids[1]]])["position_ids"]
        return causal_positions(ids, padding_mask).clone()

    def cache_identity(self) -> dict:
        """What the token cache must key on besides tokenizer and family: the prompt variant and its version."""
        return {"variant": self.variant, "raw": self.raw, "glm_encoder_version": 1}

    # ----------------------------------------------------------------- API
    def encode(self, example: Example) -> dict[str, Any] | None:
        """``{"input_ids", "labels"}`` for one example, or ``None`` when truncation left no response."""
        # position ids are derived from the ids in collate(): the token cache stores ids and labels only
        return encode_bounded(self, example)

    def encode_prompt(self, messages: Sequence[Message] | str) -> list[int]:
        """Ids a generation starts from: the same rendering as training, up to where the answer begins."""
        msgs = self._messages(messages)
        if msgs and msgs[-1].role == "assistant":
            msgs = msgs[:-1]
        ids: list[int] = []
        for seg, trainable in self.segments(msgs):
            ids.extend(seg)
        return ids

    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: ``<eop>`` (GLM v1, ChatGLM-6B), EOS (ChatGLM2), EOS/``<|user|>``/``<|observation|>``."""
        if self.variant in ("glm", "chatglm"):
            return [self.eop]
        if self.variant in ROLE_VARIANTS:
            return [self.eos, self.roles["user"], self.roles["observation"]]
        return [self.eos]

    def decode_response(self, ids: Sequence[int]) -> str:
        """Generated ids -> answer text, dropping the metadata line ChatGLM3/GLM-4 emit after ``<|assistant|>``."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        if self.variant in ROLE_VARIANTS:
            meta, sep, rest = text.partition("\n")
            if sep and not meta.strip():
                text = rest
            text = text.strip()
        return text

    # ----------------------------------------------------------------- batching
    def collate(self, features: list[dict], pad_to_multiple_of: int | None = None) -> dict:
        """Right-pad a training batch: ids with pad, labels with -100, a 0/1 ``attention_mask`` and padded ``position_ids``."""
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if pad_to_multiple_of:
            longest = int(math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of)
        ids, labels, mask = [], [], []
        for f in features:
            n = longest - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * n)
            labels.append(list(f.get("labels", f["input_ids"])) + [IGNORE_INDEX] * n)
            mask.append([1] * len(f["input_ids"]) + [0] * n)
        input_ids = torch.tensor(ids, dtype=torch.long)
        attention_mask = torch.tensor(mask, dtype=torch.long)
        return {"input_ids": input_ids, "labels": torch.tensor(labels, dtype=torch.long),
                "attention_mask": attention_mask, "position_ids": self.position_ids(input_ids, attention_mask)}

    def collate_prompts(self, prompts: list[list[int]]) -> dict:
        """Left-pad generation prompts (``input_ids`` + ``attention_mask``); the model derives positions from them."""
        import torch

        longest = max(len(p) for p in prompts)
        ids = [[self.pad_id] * (longest - len(p)) + list(p) for p in prompts]
        mask = [[0] * (longest - len(p)) + [1] * len(p) for p in prompts]
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}
