"""How a GLM-family example becomes ``input_ids``, ``labels``, ``position_ids`` and masks.

:class:`GLMEncoder` is lmforge's :class:`~lmforge.data.encoding.Encoder`: the prompt is
the family's :class:`~lmforge.plugins.descriptors.ChatTemplate` (declared as data in
:mod:`llm_plugins_glm.plugin`, rendered by core, the same rendering that goes into the
saved tokenizer's ``chat_template``). What this class adds is GLM-specific:

- special tokens are looked up as the GLM tokenizers' command tokens (``get_command``);
- ``template: raw`` keeps the variant's structural tokens (``[gMASK]``, ``sop``, ...) and
  joins the turns as plain lines;
- position ids come from the model's own layout function (2D block positions for GLM v1
  and ChatGLM-6B): :meth:`GLMEncoder.collate` derives them from each example's ids (so
  cached/truncated examples stay consistent) beside the shared padding;
- the metadata line ChatGLM3/GLM-4 emit after ``<|assistant|>`` is dropped from answers.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from lmforge.data.collate import pad_collate
from lmforge.data.encoding import Encoder
from lmforge.plugins.descriptors import EOS, ChatTemplate, Message

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


def raw_template(t: ChatTemplate, variant: str) -> ChatTemplate:
    """``template: raw`` for a GLM variant: turns as plain lines inside the prompt, structural tokens kept."""
    return dataclasses.replace(
        t, name=f"raw:{variant}", style="inline", user="{content}", assistant_prefix="", first_user=None,
        history_turn="{query}\n{answer}\n", history_query="{query}\n", assistant="{content}", assistant_suffix="",
        system="{content}\n\n" if variant == "chatglm2" else "{content}\n",
        end_of_turn=t.end_of_turn if t.style == "inline" else EOS)


class GLMEncoder(Encoder):
    """Examples -> token ids, labels and GLM positions; prompts for generation; batch collation."""

    def __init__(self, tokenizer, family=None, *, max_length: int = 512, train_on_prompt: bool = False,
                 template: str = "family") -> None:
        self.variant = variant_for(family, tokenizer)
        super().__init__(tokenizer, family, max_length=max_length, train_on_prompt=train_on_prompt, template=template)
        t = tokenizer
        # the tokens the model's position layout keys on (GLM v1 / ChatGLM-6B block positions)
        if self.variant == "glm":
            self.sop = _command(t, "<|startofpiece|>")
            self.mask_ids = [_command(t, m) for m in MASK_STRINGS]
        elif self.variant == "chatglm":
            self.sop = _command(t, "<sop>")
            self.mask_ids = [_command(t, "[gMASK]"), _command(t, "[MASK]")]

    def select_template(self, family, template: str) -> ChatTemplate:
        t = getattr(family, "chat_template", None) if getattr(family, "name", None) == self.variant else None
        if t is None:
            from .plugin import FAMILIES

            t = next(f.chat_template for f in FAMILIES if f.name == self.variant)
        return raw_template(t, self.variant) if template == "raw" else t

    def token_id(self, text: str) -> int:
        if text not in self._token_ids:
            try:
                self._token_ids[text] = _command(self.tokenizer, text)
            except KeyError:
                raise ValueError(f"chat template {self.template.name!r}: the tokenizer has no token {text!r}") from None
        return self._token_ids[text]

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

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
        """What the token cache must key on besides tokenizer, family and template: the prompt variant."""
        return {"variant": self.variant, "raw": self.raw, "glm_encoder_version": 2}

    # ----------------------------------------------------------------- API
    def encode_prompt(self, messages: Sequence[Message] | str) -> list[int]:
        """Ids a generation starts from: the training rendering of the conversation without a final answer."""
        msgs = [Message("user", messages)] if isinstance(messages, str) else list(messages)
        if msgs and msgs[-1].role == "assistant":
            msgs = msgs[:-1]
        return super().encode_prompt(msgs or [Message("user", "")])

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
        """The shared right padding plus the model's ``position_ids`` for the padded batch."""
        batch = pad_collate(features, self.pad_token_id(), pad_to_multiple_of)
        batch["position_ids"] = self.position_ids(batch["input_ids"], batch["attention_mask"])
        return batch
