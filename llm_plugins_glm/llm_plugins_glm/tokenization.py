"""Tokenizers for the GLM family, written for lmforge (no code from checkpoint directories is run).

Each class reads a released vocabulary file unchanged and reproduces the released
tokenizer's ids, special ("command") tokens and ``build_inputs_with_special_tokens``:

=====================  ======================  ==================================================
class                  vocabulary file         command tokens
=====================  ======================  ==================================================
``ChatGLMTokenizer``   ``ice_text.model`` (sp)  inside the sentencepiece model (``[gMASK]``,
                                               ``<sop>``, ``<eop>`` ...); ``\\n`` is ``<n>``, tabs
                                               and runs of spaces are ``<|tab|>``/``<|blank_k|>``
``ChatGLM2Tokenizer``  ``tokenizer.model`` (sp) appended after the sp vocabulary: ``[MASK]``,
                                               ``[gMASK]``, ``[sMASK]``, ``sop``, ``eop``
``ChatGLM3Tokenizer``  ``tokenizer.model`` (sp) ChatGLM2's plus ``<|system|>``, ``<|user|>``,
                                               ``<|assistant|>``, ``<|observation|>``
``GLM4Tokenizer``      ``tokenizer.model``      tiktoken ranks (``base64 rank`` lines); 14 command
                       (tiktoken)              tokens from ``<|endoftext|>`` after the ranks
``GLMChineseTokenizer`` ``cog-pretrain.model``  GLM v1 command tokens appended after the sp vocab
                       (sp)                    (``[CLS]``, ``<|endoftext|>``, ``[gMASK]``,
                                               ``<|startofpiece|>`` ...)
=====================  ======================  ==================================================

Command tokens that the released tokenizer does not split out of plain text
(ChatGLM2/3's ``[gMASK]``, ``sop`` and role tokens) are not split here either:
text that merely contains ``<|user|>`` is tokenized as text, so user content can
not inject a role token. The encoder (:mod:`llm_plugins_glm.encoder`) inserts
command tokens by id.

Loading and saving go through :func:`load_tokenizer` / ``save_pretrained``,
which read and write the released file names and ``tokenizer_config.json``
(the original one is kept, ``auto_map`` included, when loaded from a directory).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import threading
from typing import Any, Iterable

from transformers.tokenization_python import PythonBackend

TOKENIZER_CONFIG = "tokenizer_config.json"


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_CHAT = threading.local()  # the tokenizer whose apply_chat_template runs in this thread


class _GLMTokenizerBase(PythonBackend):
    """Shared machinery: command tokens outside the base vocabulary, run-wise decoding, released-layout saving.

    Subclasses set ``vocab_file_name`` and implement ``_text_tokens`` / ``_text_ids_to_string`` /
    base-vocabulary lookups. ``command_ids`` maps every command token to its id.
    """

    vocab_file_name = "tokenizer.model"
    released_class = ""
    model_input_names = ["input_ids", "attention_mask"]
    # command tokens the base class should split out of text (they are registered as special tokens)
    split_commands: tuple[str, ...] = ()

    def __init__(self, vocab_file: str, *, source_config: dict | None = None, **kwargs: Any) -> None:
        self.vocab_file = vocab_file
        self.source_config = copy.deepcopy(source_config) if source_config else None
        self.command_ids: dict[str, int] = {}
        self._setup_vocab(vocab_file, kwargs)
        self.command_tokens = {i: t for t, i in self.command_ids.items()}
        if self.split_commands:
            extra = [t for t in self.split_commands if t in self.command_ids]
            kwargs.setdefault("extra_special_tokens", extra)
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    # ------------------------------------------------------------ subclass hooks
    def _setup_vocab(self, vocab_file: str, kwargs: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _base_vocab_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _base_token_to_id(self, token: str) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _base_id_to_token(self, index: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _text_ids_to_string(self, ids: list[int]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _skippable_base_ids(self) -> set[int]:
        """Base-vocabulary ids dropped by ``decode(..., skip_special_tokens=True)``."""
        return set()

    # ------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return max([self._base_vocab_size() - 1, *self.command_ids.values()]) + 1

    def get_vocab(self) -> dict[str, int]:
        vocab = {}
        for i in range(self._base_vocab_size()):
            vocab.setdefault(self._base_id_to_token(i), i)
        vocab.update(self.command_ids)
        return vocab

    def get_command(self, token: str) -> int:
        """The id of a command token (``[gMASK]``, ``sop``, ``<|user|>`` ...); ``KeyError`` when this tokenizer has none."""
        if token in self.command_ids:
            return self.command_ids[token]
        tid = self._base_token_to_id(token)
        if tid is None or (self.unk_token_id is not None and tid == self.unk_token_id and token != self.unk_token):
            raise KeyError(f"{token!r} is not a command token of {type(self).__name__}")
        return tid

    def has_command(self, token: str) -> bool:
        try:
            self.get_command(token)
        except KeyError:
            return False
        return True

    def _convert_token_to_id(self, token: str) -> int:
        if token in self.command_ids:
            return self.command_ids[token]
        return self._base_token_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        if index in self.command_tokens:
            return self.command_tokens[index]
        return self._base_id_to_token(index)

    @property
    def all_special_ids(self) -> list[int]:
        ids = set(super().all_special_ids) | set(self.command_ids.values())
        return sorted(i for i in ids if i is not None)

    # ------------------------------------------------------------ chat templates
    @property
    def _in_chat(self) -> bool:
        return getattr(_CHAT, "tokenizer", None) is self

    def apply_chat_template(self, conversation, *args, **kwargs):
        """transformers' ``apply_chat_template``, reading the command tokens of the rendered chat as those tokens.

        lmforge's chat template (``lmforge.plugins.chat_jinja``) writes ``[gMASK]``, ``sop``,
        ``<|user|>`` ... as text; plain text keeps the released tokenization (which does not split
        them out, so user content stays text), but the rendered chat gives the ids the encoder
        trains on.
        """
        previous, _CHAT.tokenizer = getattr(_CHAT, "tokenizer", None), self  # per thread: plain encodes elsewhere
        try:
            return super().apply_chat_template(conversation, *args, **kwargs)
        finally:
            _CHAT.tokenizer = previous

    def tokenize(self, text, **kwargs):
        if not self._in_chat or not isinstance(text, str):
            return super().tokenize(text, **kwargs)
        names = {t for t in (*self.command_ids, *self.all_special_tokens) if t}
        # word-like commands (ChatGLM2/3's "sop") are split only right after another command ("[gMASK]sop"),
        # so a user's "sop..." stays text
        marked = sorted((t for t in names if not re.fullmatch(r"\w+", t)), key=len, reverse=True)
        words = sorted((t for t in names if re.fullmatch(r"\w+", t)), key=len, reverse=True)
        out: list[str] = []
        after_command = False
        for part in re.split("(" + "|".join(re.escape(t) for t in marked) + ")", text):
            if part in marked:
                out.append(part)
                after_command = True
                continue
            if after_command:
                word = next((w for w in words if part.startswith(w)), None)
                if word is not None:
                    out.append(word)
                    part = part[len(word):]
            if part:
                out.extend(super().tokenize(part, **kwargs))
            after_command = False
        return out

    # ------------------------------------------------------------ decoding
    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None,
                **kwargs) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        skip = (set(self.command_ids.values()) | self._skippable_base_ids()) if skip_special_tokens else set()
        if skip_special_tokens:
            skip |= {i for i in super().all_special_ids if i is not None}
        out: list[str] = []
        run: list[int] = []
        for tid in (int(t) for t in token_ids):
            if tid in skip:
                continue
            if tid in self.command_tokens:
                if run:
                    out.append(self._text_ids_to_string(run))
                    run = []
                out.append(self.command_tokens[tid])
            else:
                run.append(tid)
        if run:
            out.append(self._text_ids_to_string(run))
        return "".join(out)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode([self._convert_token_to_id_with_added_voc(t) for t in tokens])

    # ------------------------------------------------------------ saving
    def released_tokenizer_config(self) -> dict:
        """``tokenizer_config.json`` in the released shape (used when there is no original one to keep)."""
        return {"tokenizer_class": self.released_class, "padding_side": "left",
                "clean_up_tokenization_spaces": False}

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_file_name
        out = os.path.join(save_directory, name) if os.path.isdir(save_directory) else save_directory
        if os.path.abspath(out) != os.path.abspath(self.vocab_file):
            shutil.copyfile(self.vocab_file, out)
        return (out,)

    def save_pretrained(self, save_directory, *args, **kwargs) -> tuple[str, ...]:
        """Write the released files: the vocabulary file and ``tokenizer_config.json`` (the original one when loaded from a directory)."""
        os.makedirs(save_directory, exist_ok=True)
        files = list(self.save_vocabulary(save_directory))
        cfg = copy.deepcopy(self.source_config) if self.source_config else self.released_tokenizer_config()
        if isinstance(self.chat_template, str):  # lmforge's (or the checkpoint's) Jinja chat template
            cfg["chat_template"] = self.chat_template
        cfg_path = os.path.join(save_directory, TOKENIZER_CONFIG)
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)
        files.append(cfg_path)
        return tuple(files)


# ======================================================================== sentencepiece


class _SentencePieceMixin:
    """The base vocabulary is a sentencepiece model whose ids are the token ids (command tokens come after).

    ChatGLM-6B, whose ids are offset by its image tokens, overrides the id methods.
    """

    def _load_sp(self, vocab_file: str) -> None:
        from sentencepiece import SentencePieceProcessor

        self.sp_model = SentencePieceProcessor(model_file=vocab_file)

    def _sp_size(self) -> int:
        return self.sp_model.vocab_size()

    def _base_vocab_size(self):
        return self._sp_size()

    def _base_token_to_id(self, token):
        return self.sp_model.piece_to_id(token)

    def _base_id_to_token(self, index):
        return self.sp_model.id_to_piece(index) if 0 <= index < self._sp_size() else ""

    def _tokenize(self, text, **kwargs):
        return self.sp_model.encode(text, out_type=str)

    def _text_ids_to_string(self, ids):
        return self.sp_model.decode([i for i in ids if 0 <= i < self._sp_size()])


class ChatGLM2Tokenizer(_SentencePieceMixin, _GLMTokenizerBase):
    """ChatGLM2-6B: sentencepiece ``tokenizer.model`` plus command tokens appended after its pieces.

    ``tokenizer("x")`` gives ``[gMASK] sop x`` as the released tokenizer does; pairs end with EOS.
    """

    released_class = "ChatGLMTokenizer"
    commands: tuple[str, ...] = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
    prefix_commands: tuple[str, ...] = ("[gMASK]", "sop")

    def _setup_vocab(self, vocab_file, kwargs):
        self._load_sp(vocab_file)
        n = self._sp_size()
        self.command_ids = {t: n + i for i, t in enumerate(self.commands)}
        kwargs.setdefault("eos_token", self.sp_model.id_to_piece(self.sp_model.eos_id()))
        unk = self.sp_model.id_to_piece(self.sp_model.unk_id())
        kwargs.setdefault("unk_token", unk)
        kwargs.setdefault("pad_token", unk)

    def _skippable_base_ids(self):
        return {self.sp_model.bos_id(), self.sp_model.eos_id()} - {-1}

    def get_prefix_tokens(self) -> list[int]:
        return [self.command_ids[t] for t in self.prefix_commands]

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = self.get_prefix_tokens() + list(token_ids_0)
        if token_ids_1 is not None:
            ids = ids + list(token_ids_1) + [self.eos_token_id]
        return ids


class ChatGLM3Tokenizer(ChatGLM2Tokenizer):
    """ChatGLM3-6B: ChatGLM2's tokenizer plus the role tokens ``<|system|>`` ... ``<|observation|>``."""

    commands = ChatGLM2Tokenizer.commands + ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")


class ChatGLMTokenizer(_SentencePieceMixin, _GLMTokenizerBase):
    """ChatGLM-6B (v1): ``ice_text.model`` whose pieces already hold ``[gMASK]``, ``<sop>``, ``<n>`` ...

    Ids are sentencepiece ids plus ``num_image_tokens`` (0 in the released config since
    the image tokens were removed; 20000 in the first release). ``tokenizer("x")``
    gives ``x [gMASK] <sop>``.
    """

    vocab_file_name = "ice_text.model"
    released_class = "ChatGLMTokenizer"
    max_blank_length = 80

    def __init__(self, vocab_file: str, num_image_tokens: int = 0, **kwargs):
        self.num_image_tokens = int(num_image_tokens)
        kwargs.setdefault("bos_token", "<sop>")
        kwargs.setdefault("eos_token", "<eop>")
        kwargs.setdefault("mask_token", "[MASK]")
        kwargs.setdefault("pad_token", "<pad>")
        kwargs.setdefault("unk_token", "<unk>")
        self.gmask_token = kwargs.pop("gmask_token", "[gMASK]")
        self.end_token = kwargs.pop("end_token", "</s>")
        super().__init__(vocab_file, **kwargs)

    def _setup_vocab(self, vocab_file, kwargs):
        self._load_sp(vocab_file)

    def _base_vocab_size(self):
        return self._sp_size() + self.num_image_tokens

    def _base_token_to_id(self, token):
        m = re.fullmatch(r"<image_(\d+)>", token)
        if m and int(m.group(1)) < self.num_image_tokens:
            return int(m.group(1))
        return self.sp_model.piece_to_id(token) + self.num_image_tokens

    def _base_id_to_token(self, index):
        if index < self.num_image_tokens:
            return f"<image_{index}>"
        i = index - self.num_image_tokens
        return self.sp_model.id_to_piece(i) if i < self._sp_size() else ""

    @staticmethod
    def _preprocess(text: str, max_blank: int = 80) -> str:
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        for k in range(max_blank, 1, -1):
            text = text.replace(" " * k, f"<|blank_{k}|>")
        return text

    def _tokenize(self, text, **kwargs):
        return self.sp_model.encode(self._preprocess(text, self.max_blank_length), out_type=str)

    def _text_ids_to_string(self, ids):
        sp_ids = [i - self.num_image_tokens for i in ids if i >= self.num_image_tokens]
        text = self.sp_model.decode([i for i in sp_ids if i < self._sp_size()])
        text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
        for k in range(2, self.max_blank_length + 1):
            text = text.replace(f"<|blank_{k}|>", " " * k)
        return text

    def _skippable_base_ids(self):
        ids = set()
        for t in ("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "</s>", "<pad>"):
            tid = self.sp_model.piece_to_id(t)
            if tid != self.sp_model.unk_id():
                ids.add(tid + self.num_image_tokens)
        return ids

    @property
    def gmask_token_id(self) -> int:
        return self._convert_token_to_id(self.gmask_token)

    @property
    def eop_token_id(self) -> int:
        return self.eos_token_id

    def get_command(self, token: str) -> int:
        aliases = {"sop": "<sop>", "eop": "<eop>"}
        return super().get_command(aliases.get(token, token))

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = list(token_ids_0) + [self.gmask_token_id, self.bos_token_id]
        if token_ids_1 is not None:
            ids = ids + list(token_ids_1) + [self.eos_token_id]
        return ids

    def released_tokenizer_config(self):
        cfg = super().released_tokenizer_config()
        cfg.update(bos_token="<sop>", eos_token="<eop>", end_token="</s>", gmask_token="[gMASK]",
                   mask_token="[MASK]", pad_token="<pad>", unk_token="<unk>",
                   num_image_tokens=self.num_image_tokens, remove_space=False, do_lower_case=False)
        return cfg


# GLM v1 command tokens after the sentencepiece pieces, as THUDM/GLM's ChineseSPTokenizer
# numbers them for the released Chinese checkpoints (offset from the sp vocabulary size).
GLM_CHINESE_COMMANDS = {
    "<|endoftext|>": 0, "[SEP]": 1, "[CLS]": 2, "[MASK]": 3, "[UNK]": 4,
    "<|startofpiece|>": 6, "<|endofpiece|>": 7, "[sMASK]": 8, "[gMASK]": 9,
}


class GLMChineseTokenizer(_SentencePieceMixin, _GLMTokenizerBase):
    """GLM v1 with a sentencepiece vocabulary (GLM-large-chinese, GLM-10B-chinese, AntGLM).

    Command ids come from the checkpoint's ``added_tokens.json`` or
    ``tokenizer_config.json`` ``added_tokens_decoder`` when present, otherwise from
    :data:`GLM_CHINESE_COMMANDS`. ``tokenizer("x")`` gives ``[CLS] x <|endoftext|>``.
    """

    vocab_file_name = "cog-pretrain.model"
    released_class = "GLMChineseTokenizer"
    split_commands = ("<|startofpiece|>", "<|endofpiece|>", "[gMASK]", "[sMASK]")

    def __init__(self, vocab_file: str, command_ids: dict | None = None, **kwargs):
        self._given_commands = dict(command_ids or {})
        kwargs.setdefault("eos_token", "<|endoftext|>")
        kwargs.setdefault("pad_token", "<|endoftext|>")
        kwargs.setdefault("cls_token", "[CLS]")
        kwargs.setdefault("sep_token", "[SEP]")
        kwargs.setdefault("mask_token", "[MASK]")
        kwargs.setdefault("unk_token", "[UNK]")
        kwargs.pop("additional_special_tokens", None)
        super().__init__(vocab_file, **kwargs)

    def _setup_vocab(self, vocab_file, kwargs):
        self._load_sp(vocab_file)
        n = self._sp_size()
        self.command_ids = {t: n + off for t, off in GLM_CHINESE_COMMANDS.items()}
        self.command_ids.update(self._given_commands)

    @property
    def sop_token_id(self) -> int:
        return self.command_ids["<|startofpiece|>"]

    @property
    def eop_token_id(self) -> int:
        return self.command_ids["<|endofpiece|>"]

    @property
    def gmask_token_id(self) -> int:
        return self.command_ids["[gMASK]"]

    @property
    def smask_token_id(self) -> int:
        return self.command_ids["[sMASK]"]

    @property
    def mask_token_ids(self) -> list[int]:
        return [self.mask_token_id, self.smask_token_id, self.gmask_token_id]

    def get_command(self, token: str) -> int:
        aliases = {"sop": "<|startofpiece|>", "eop": "<|endofpiece|>"}
        return super().get_command(aliases.get(token, token))

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        if token_ids_1 is not None:
            raise ValueError("GLM tokenizers encode single sequences only")
        return [self.cls_token_id] + list(token_ids_0) + [self.eos_token_id]

    def released_tokenizer_config(self):
        cfg = super().released_tokenizer_config()
        cfg.update(eos_token="<|endoftext|>", pad_token="<|endoftext|>", cls_token="[CLS]", mask_token="[MASK]",
                   unk_token="[UNK]", sep_token="[SEP]", padding_side="right",
                   additional_special_tokens=list(self.split_commands),
                   added_tokens_decoder={str(i): {"content": t, "special": True}
                                         for t, i in sorted(self.command_ids.items(), key=lambda kv: kv[1])})
        return cfg


# ======================================================================== tiktoken (GLM-4)

GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM4_COMMANDS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                 "<|begin_of_video|>", "<|end_of_video|>")


def read_tiktoken_ranks(path: str) -> dict[bytes, int]:
    """Read a tiktoken-format ``tokenizer.model`` (one ``base64-token rank`` pair per line)."""
    ranks: dict[bytes, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def write_tiktoken_ranks(ranks: dict[bytes, int], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")


class GLM4Tokenizer(_GLMTokenizerBase):
    """GLM-4 (original THUDM layout): tiktoken ranks in ``tokenizer.model`` and 14 command tokens.

    Base tokens are represented as latin-1 strings of their bytes so every byte
    sequence round-trips. Command tokens are split out of text (the released
    tokenizer registers them as added tokens). ``tokenizer("x")`` gives ``[gMASK] <sop> x``.
    """

    released_class = "ChatGLM4Tokenizer"
    split_commands = GLM4_COMMANDS

    def __init__(self, vocab_file: str, **kwargs):
        kwargs.setdefault("eos_token", "<|endoftext|>")
        kwargs.setdefault("pad_token", "<|endoftext|>")
        kwargs.pop("added_tokens_decoder", None)
        kwargs.pop("additional_special_tokens", None)
        super().__init__(vocab_file, **kwargs)

    def _setup_vocab(self, vocab_file, kwargs):
        import tiktoken

        self.mergeable_ranks = read_tiktoken_ranks(vocab_file)
        self.rank_to_bytes = {r: t for t, r in self.mergeable_ranks.items()}
        self.encoding = tiktoken.Encoding(name="glm4_lmforge", pat_str=GLM4_PATTERN,
                                          mergeable_ranks=self.mergeable_ranks, special_tokens={})
        n = len(self.mergeable_ranks)
        self.command_ids = {t: n + i for i, t in enumerate(GLM4_COMMANDS)}

    def _base_vocab_size(self):
        return len(self.mergeable_ranks)

    def _base_token_to_id(self, token):
        return self.mergeable_ranks.get(token.encode("latin-1"), None) if all(ord(c) < 256 for c in token) else None

    def _base_id_to_token(self, index):
        b = self.rank_to_bytes.get(index)
        return b.decode("latin-1") if b is not None else ""

    def _tokenize(self, text, **kwargs):
        return [self.rank_to_bytes[i].decode("latin-1") for i in self.encoding.encode(text, disallowed_special=())]

    def _text_ids_to_string(self, ids):
        return b"".join(self.rank_to_bytes.get(i, b"") for i in ids).decode("utf-8", errors="replace")

    def get_prefix_tokens(self) -> list[int]:
        return [self.command_ids["[gMASK]"], self.command_ids["<sop>"]]

    def get_command(self, token: str) -> int:
        aliases = {"sop": "<sop>", "eop": "<eop>"}
        return super().get_command(aliases.get(token, token))

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = self.get_prefix_tokens() + list(token_ids_0)
        if token_ids_1 is not None:
            ids = ids + list(token_ids_1) + [self.eos_token_id]
        return ids

    def released_tokenizer_config(self):
        cfg = super().released_tokenizer_config()
        cfg.update(eos_token="<|endoftext|>", pad_token="<|endoftext|>", remove_space=False,
                   added_tokens_decoder={str(i): {"content": t, "lstrip": False, "normalized": False,
                                                  "rstrip": False, "single_word": False, "special": True}
                                         for t, i in self.command_ids.items()},
                   additional_special_tokens=list(GLM4_COMMANDS))
        return cfg


# ======================================================================== loading

TOKENIZER_CLASSES = {
    "chatglm": ChatGLMTokenizer,
    "chatglm2": ChatGLM2Tokenizer,
    "chatglm3": ChatGLM3Tokenizer,
    "glm4": GLM4Tokenizer,
    "glm": GLMChineseTokenizer,
}

# keys of a released tokenizer_config.json that are not constructor arguments here
_NOT_KWARGS = {"auto_map", "tokenizer_class", "name_or_path", "added_tokens_decoder", "model_max_length",
               "special_tokens_map_file", "tokenizer_file", "use_fast", "chat_template", "encode_special_tokens",
               "add_prefix_space", "do_lower_case", "remove_space", "model_input_names", "image_size",
               "additional_special_tokens", "extra_special_tokens", "add_bos_token", "add_eos_token", "legacy",
               "vocab_file", "backend"}


def _is_tiktoken_file(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(256)
    try:
        first = head.decode("ascii").splitlines()[0].split()
    except (UnicodeDecodeError, IndexError):
        return False
    if len(first) != 2 or not first[1].isdigit():
        return False
    try:
        base64.b64decode(first[0], validate=True)
    except Exception:  # noqa: BLE001
        return False
    return True


def load_tokenizer(path: str, variant: str):
    tok = _load_tokenizer(path, variant)
    chat = (tok.source_config or {}).get("chat_template")
    if isinstance(chat, str):
        tok.chat_template = chat
    return tok


def _load_tokenizer(path: str, variant: str):
    """The tokenizer of a checkpoint directory for ``variant`` (``glm``, ``chatglm``, ``chatglm2``, ``chatglm3``, ``glm4``).

    Reads the released vocabulary file and ``tokenizer_config.json`` (kept for saving);
    raises ``FileNotFoundError`` naming the expected file when it is missing.
    """
    cfg = _read_json(os.path.join(path, TOKENIZER_CONFIG))
    kwargs = {k: v for k, v in cfg.items() if k not in _NOT_KWARGS and not isinstance(v, dict)}
    kwargs = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool)) or v is None}
    if variant == "chatglm":
        vocab = os.path.join(path, "ice_text.model")
        if not os.path.isfile(vocab):
            raise FileNotFoundError(f"{path}: ChatGLM-6B tokenizer file ice_text.model not found")
        allowed = {"bos_token", "eos_token", "end_token", "mask_token", "gmask_token", "pad_token", "unk_token",
                   "num_image_tokens", "padding_side"}
        return ChatGLMTokenizer(vocab, source_config=cfg, **{k: v for k, v in kwargs.items() if k in allowed})
    if variant == "glm":
        for name in ("cog-pretrain.model", "tokenizer.model", "spiece.model"):
            vocab = os.path.join(path, name)
            if os.path.isfile(vocab):
                break
        else:
            raise FileNotFoundError(f"{path}: GLM sentencepiece file cog-pretrain.model not found "
                                    "(GPT-2/BERT-vocabulary GLM checkpoints are not supported yet)")
        commands = {}
        added = _read_json(os.path.join(path, "added_tokens.json"))
        commands.update({k: int(v) for k, v in added.items()})
        for idx, tok in (cfg.get("added_tokens_decoder") or {}).items():
            content = tok["content"] if isinstance(tok, dict) else str(tok)
            commands[content] = int(idx)
        tok = GLMChineseTokenizer(vocab, command_ids=commands, source_config=cfg)
        tok.vocab_file_name = os.path.basename(vocab)
        return tok
    vocab = os.path.join(path, "tokenizer.model")
    if not os.path.isfile(vocab):
        raise FileNotFoundError(f"{path}: tokenizer.model not found")
    if variant == "glm4" or _is_tiktoken_file(vocab):
        return GLM4Tokenizer(vocab, source_config=cfg)
    cls = ChatGLM3Tokenizer if variant == "chatglm3" else ChatGLM2Tokenizer
    return cls(vocab, source_config=cfg)


def tokenizer_has_roles(tokenizer) -> bool:
    """True when the tokenizer carries ChatGLM3/GLM-4 role tokens."""
    return isinstance(tokenizer, (ChatGLM3Tokenizer, GLM4Tokenizer)) or (
        hasattr(tokenizer, "has_command") and tokenizer.has_command("<|user|>"))


def iter_tokenizer_files(path: str) -> Iterable[str]:
    for name in ("ice_text.model", "tokenizer.model", "cog-pretrain.model", "tokenizer.json", TOKENIZER_CONFIG,
                 "added_tokens.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if os.path.isfile(os.path.join(path, name)):
            yield name
