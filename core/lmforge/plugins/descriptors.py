"""The frozen descriptors plugins register.

Everything a user can name in a config (a model family, a PEFT method, a data
format, a memory estimator, a launcher) is one of these small dataclasses,
registered by a plugin through a hook in :mod:`lmforge.plugins.hookspecs`.

Descriptors are pure data plus pure-Python callables. Anything heavy (torch,
transformers, peft, bitsandbytes) is referenced by a ``"module:attr"`` string and
imported only when the job actually needs it, so that listing plugins, models
and memory estimates never imports torch.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Tuple, Union

# --------------------------------------------------------------------------
# helpers


def resolve_ref(ref: str | Callable | None) -> Any:
    """Import ``"package.module:attr"`` (dotted attrs allowed) and return the object.

    Callables pass through unchanged, so descriptors may hold either a reference
    string (for heavy code) or a plain function (for cheap pure-Python code).
    """
    if ref is None or not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise ValueError(f"reference {ref!r} must look like 'package.module:attr'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------
# capabilities: the closed key set, the values and the undeclared default live in
# lmforge.plugins.capabilities; re-exported here, where plugins import descriptors from

from lmforge.plugins.capabilities import (  # noqa: E402,F401
    EXPERIMENTAL, SUPPORTED, UNSUPPORTED, Capability, CapabilityKey, capability_of, experimental, supported,
    unsupported,
)


# --------------------------------------------------------------------------
# architecture numbers (what the memory estimator prices)


@dataclass(frozen=True)
class ArchSpec:
    """The numbers of a transformer decoder that memory and FLOPs depend on.

    Families compute this from a checkpoint's ``config.json`` (pure Python), so
    ``lmforge estimate`` can price a published size without weights or torch.

    ``mlp_kind`` is ``"gated"`` (SwiGLU/GeGLU: three matrices) or ``"plain"`` (two).
    ``position_kind`` is ``"rope"``, ``"rope_2d"`` (GLM v1 / ChatGLM-6B block
    positions), ``"alibi"``, ``"learned"`` or ``"none"``. ``attention_kind`` is
    ``"mha"``, ``"gqa"`` (includes multi-query) or ``"mla"`` (MiniCPM3-style latent
    attention; the ranks live in ``extra``).
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    mlp_kind: str = "gated"
    activation: str = "silu"
    norm_kind: str = "rmsnorm"
    position_kind: str = "rope"
    attention_kind: str = "mha"
    tied_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 2048
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["extra"] = dict(self.extra)
        return out


# --------------------------------------------------------------------------
# chat / prompt templates


@dataclass(frozen=True)
class Message:
    """One turn of a conversation. ``role`` is system, user, assistant or observation."""

    role: str
    content: str


@dataclass(frozen=True)
class Example:
    """One training example, as a data format produces it.

    Either ``messages`` (supervised: loss on the assistant turns only, unless the
    job sets ``train_on_prompt``) or ``text`` (pretraining: loss on every token).
    ``source`` is ``(file, line)`` so later errors can point at the record.
    """

    messages: tuple[Message, ...] = ()
    text: str | None = None
    source: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (not self.messages):
            raise ValueError("an Example has either messages or text, not both and not neither")


@dataclass(frozen=True)
class Special:
    """A special token inside a :class:`ChatTemplate`: looked up by its text, never tokenized as text.

    ``Special("<|user|>")`` is the token ``<|user|>``; :data:`EOS` and :data:`BOS` stand
    for the tokenizer's own end/beginning-of-sequence tokens (whatever their text).
    """

    text: str = ""
    kind: str = "token"  # "token", "eos" or "bos"

    def __post_init__(self) -> None:
        if self.kind not in ("token", "eos", "bos"):
            raise ValueError(f"Special.kind must be token, eos or bos, got {self.kind!r}")
        if self.kind == "token" and not self.text:
            raise ValueError("Special(text) needs the token's text")

    def __repr__(self) -> str:
        return self.kind.upper() if self.kind != "token" else f"Special({self.text!r})"


EOS = Special(kind="eos")
BOS = Special(kind="bos")

#: one piece of a template field: text (tokenized on its own, ``{content}``-style placeholders
#: filled in) or a :class:`Special` token; a field holds one piece or a tuple of them
Piece = Union[str, Special]
Pieces = Union[str, Special, Tuple[Piece, ...]]
ROLES = ("system", "user", "assistant", "observation")
STYLES = ("turns", "roles", "inline")


def _pieces(value: Any, where: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, Special)):
        value = (value,)
    out = tuple(value)
    for p in out:
        if not isinstance(p, (str, Special)):
            raise ValueError(f"ChatTemplate.{where}: pieces are str or Special, got {type(p).__name__} {p!r}")
    return tuple(p for p in out if p != "")


@dataclass(frozen=True)
class ChatTemplate:
    """How a family renders a conversation: data, read by the encoder (training and generation
    prompts) and by :mod:`lmforge.plugins.chat_jinja` (the saved tokenizer's ``chat_template``).

    Every field that renders is a tuple of *pieces* (a plain string is one piece): text,
    where ``{content}`` (the message), ``{round}`` / ``{round1}`` (0/1-based index of the
    exchange) and, in ``history_turn``, ``{query}`` / ``{answer}`` are filled in, or a
    :class:`Special` token. Each text piece is tokenized on its own, as the released
    prompt code of the family does (ChatGLM3 encodes ``"\\n"`` and the content separately).

    ``style`` says how messages become pieces:

    ``"turns"`` (LLaMA-2, ChatML, MiniCPM, BLOOM, ...)
        ``system`` / ``user`` / ``observation`` messages are prompt; every user/observation
        turn is followed by ``assistant_prefix`` (the generation prefix); an ``assistant``
        message and ``assistant_suffix`` are trained, closed by ``end_of_turn`` (trained),
        then ``separator_between`` (prompt, only when another message follows) and
        ``turn_separator`` (prompt, always).
    ``"roles"`` (ChatGLM3, GLM-4)
        every message is its role's pieces, whose first piece is the role marker
        (``Special("<|user|>")``); the marker that follows an answer is trained (it ends
        that answer). A final answer is closed by ``end_of_turn``; otherwise the prompt ends
        with ``assistant_prefix``.
    ``"inline"`` (GLM v1, ChatGLM-6B, ChatGLM2)
        the released code keeps earlier exchanges inside one prompt string: the ``system``
        texts, each earlier exchange as ``history_turn`` (a query left without an answer as
        ``history_query``, default ``history_turn`` with an empty answer), then the last query as
        ``user`` + ``assistant_prefix`` (or ``first_user`` when there is no history) are one
        text piece; ``prompt_suffix`` follows it (its first token is left out when the
        prompt already holds one of ``optional_masks``); only a final answer trains.

    ``prefix`` comes once before everything (after BOS, which the encoder adds when the
    tokenizer has one and ``add_bos``). ``text_prefix`` / ``text_end`` wrap a pretraining
    text. ``stop_tokens`` end a generated answer (default: ``end_of_turn``).
    ``default_system`` is used when a conversation has no system message.
    """

    name: str
    user: Pieces = "{content}"
    assistant_prefix: Pieces = ""
    assistant: Pieces = "{content}"
    assistant_suffix: Pieces = ""
    turn_separator: Pieces = ""
    system: Pieces = "{content}\n"
    observation: Pieces = "{content}"
    prefix: Pieces = ""
    default_system: str | None = None
    add_bos: bool = True
    stop_strings: tuple[str, ...] = ()
    style: str = "turns"
    end_of_turn: Special = EOS
    separator_between: Pieces = ""
    history_turn: Pieces = "{query}\n{answer}\n"
    history_query: Pieces | None = None
    first_user: Pieces | None = None
    prompt_suffix: Pieces = ""
    optional_masks: tuple[str, ...] = ()
    text_prefix: Pieces = ""
    text_end: Special = EOS
    stop_tokens: tuple[Special, ...] = ()

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"ChatTemplate {self.name!r}: style must be one of {', '.join(STYLES)}, got {self.style!r}")
        for f in ("user", "assistant_prefix", "assistant", "assistant_suffix", "turn_separator", "system",
                  "observation", "prefix", "separator_between", "history_turn", "prompt_suffix", "text_prefix"):
            object.__setattr__(self, f, _pieces(getattr(self, f), f))
        for f in ("first_user", "history_query"):
            if getattr(self, f) is not None:
                object.__setattr__(self, f, _pieces(getattr(self, f), f))
        for f in ("end_of_turn", "text_end"):
            if not isinstance(getattr(self, f), Special):
                raise ValueError(f"ChatTemplate {self.name!r}: {f} must be a Special token (EOS, Special('...'))")
        stops = tuple(self.stop_tokens) or (self.end_of_turn,)
        object.__setattr__(self, "stop_tokens", stops)
        if self.style == "roles":
            for role in ROLES:
                fmt = self.role_pieces(role)
                if not fmt or not isinstance(fmt[0], Special):
                    raise ValueError(f"ChatTemplate {self.name!r}: in the roles style, {role} must start with its "
                                     "role marker, a Special token")
        if self.style == "inline":
            for f in ("system", "user", "assistant_prefix", "history_turn", "first_user", "history_query"):
                if any(isinstance(p, Special) for p in getattr(self, f) or ()):
                    raise ValueError(f"ChatTemplate {self.name!r}: in the inline style, {f} is text only")

    def role_pieces(self, role: str) -> tuple:
        if role not in ROLES:
            raise ValueError(f"unknown message role {role!r} (expected system, user, assistant, observation)")
        return getattr(self, role)

    # ----------------------------------------------------------------- rendering
    @staticmethod
    def _fill(pieces: tuple, trainable: bool, **values: Any) -> list[tuple[Any, bool]]:
        return [(p.format(**values) if isinstance(p, str) else p, trainable) for p in pieces]

    def render(self, messages: Sequence[Message], has_mask: Callable[[str], bool] | None = None
               ) -> list[tuple[Any, bool]]:
        """Render ``messages`` to ``[(piece, trainable), ...]``; a piece is text or a :class:`Special`.

        A conversation ending on a user/observation turn renders as a generation prompt
        (it ends with the generation prefix). Raises ``ValueError`` on an unknown role.
        ``has_mask(prompt)`` decides whether an inline prompt already holds a mask token
        (default: one of ``optional_masks`` occurs in its text; the encoder checks token ids).
        """
        msgs = list(messages)
        if self.default_system is not None and not any(m.role == "system" for m in msgs):
            msgs.insert(0, Message("system", self.default_system))
        out: list[tuple[Any, bool]] = self._fill(self.prefix, False)
        if self.style == "inline":
            out += self._render_inline(msgs, has_mask)
        else:
            out += getattr(self, "_render_" + self.style)(msgs)
        return [(p, tr) for p, tr in out if p != ""]

    def _render_turns(self, msgs: list[Message]) -> list[tuple[Any, bool]]:
        out: list[tuple[Any, bool]] = []
        r = 0
        for i, msg in enumerate(msgs):
            fmt = self.role_pieces(msg.role)
            if msg.role == "assistant":
                out += self._fill(fmt, True, content=msg.content, round=r, round1=r + 1)
                out += self._fill(self.assistant_suffix, True, round=r, round1=r + 1)
                out.append((self.end_of_turn, True))
                if i + 1 < len(msgs):
                    out += self._fill(self.separator_between, False)
                out += self._fill(self.turn_separator, False)
                r += 1
                continue
            out += self._fill(fmt, False, content=msg.content, round=r, round1=r + 1)
            if msg.role in ("user", "observation"):
                out += self._fill(self.assistant_prefix, False, round=r, round1=r + 1)
        return out

    def _render_roles(self, msgs: list[Message]) -> list[tuple[Any, bool]]:
        out: list[tuple[Any, bool]] = []
        prev_answer = False
        for msg in msgs:
            marker, *body = self.role_pieces(msg.role)
            out.append((marker, prev_answer))
            out += self._fill(tuple(body), msg.role == "assistant", content=msg.content)
            prev_answer = msg.role == "assistant"
        if prev_answer:
            out.append((self.end_of_turn, True))
        else:
            out += self._fill(self.assistant_prefix, False)
        return out

    def inline_prompt(self, msgs: Sequence[Message]) -> tuple[str, str | None]:
        """``(prompt text, final answer or None)`` of the inline style (history inside the prompt)."""
        msgs = list(msgs)
        answer = None
        if msgs and msgs[-1].role == "assistant":
            answer, msgs = msgs[-1].content, msgs[:-1]
        text = "".join("".join(self._text(self.system, content=m.content)) for m in msgs if m.role == "system")
        pending, n = None, 0
        for m in msgs:
            self.role_pieces(m.role)
            if m.role in ("user", "observation"):
                if pending is not None:  # an earlier query left without an answer
                    fmt = self.history_query if self.history_query is not None else self.history_turn
                    text += self._text(fmt, query=pending, answer="", round=n, round1=n + 1)
                    n += 1
                pending = m.content
            elif m.role == "assistant":
                text += self._text(self.history_turn, query=pending or "", answer=m.content, round=n, round1=n + 1)
                n, pending = n + 1, None
        query = pending or ""
        if n == 0 and self.first_user is not None:
            text += self._text(self.first_user, content=query, round=0, round1=1)
        else:
            text += self._text(self.user + self.assistant_prefix, content=query, round=n, round1=n + 1)
        return text, answer

    @staticmethod
    def _text(pieces: tuple, **values: Any) -> str:
        return "".join(p.format(**values) for p in pieces)

    def _render_inline(self, msgs: list[Message], has_mask=None) -> list[tuple[Any, bool]]:
        prompt, answer = self.inline_prompt(msgs)
        out: list[tuple[Any, bool]] = [(prompt, False)]
        suffix = self.prompt_suffix
        has_mask = has_mask or (lambda text: any(m in text for m in self.optional_masks))
        if self.optional_masks and suffix and has_mask(prompt):
            suffix = suffix[1:]
        out += self._fill(suffix, False)
        if answer is not None:
            out += self._fill(self.assistant, True, content=answer)
            out += self._fill(self.assistant_suffix, True)
            out.append((self.end_of_turn, True))
        return out


# --------------------------------------------------------------------------
# model families


@dataclass(frozen=True)
class Preset:
    """A named architecture: the ``config.json`` of a published model, or a tiny random one.

    ``config`` is what ``config.json`` would hold (including ``model_type``).
    A preset with ``tiny=True`` is buildable offline with random weights and the
    tokenizer returned by ``tokenizer`` (a ``"module:attr"`` callable returning a
    transformers tokenizer); others are for the estimator and for random-init
    pretraining only.
    """

    name: str
    config: Mapping[str, Any]
    description: str = ""
    tiny: bool = False
    tokenizer: str | Callable | None = None
    seed: int = 0


@dataclass(frozen=True)
class ModelFamily:
    """A model family: how to recognise, load, prompt, save and price it.

    Recognition: a checkpoint's ``config.json`` is claimed when its ``model_type``
    is in ``model_types`` (or, when it has none, an entry of ``architectures`` is
    in ``architectures``) and ``match(config)`` is true when given. Families with a
    higher ``priority`` are asked first (the generic causal-LM family has the
    lowest).

    What a family provides, field by field (``"module:attr"`` strings are imported only
    when a job needs them):

    - ``loader``: ``load(source: ModelSource, options: LoadOptions) -> (model, tokenizer)``
      (:func:`lmforge.modeling.loading.hf_load` covers models transformers ships).
    - ``tokenizer_loader``: optional ``load(path) -> tokenizer`` for families whose
      tokenizer ``AutoTokenizer`` cannot read without the checkpoint's own code. Every
      tokenizer lmforge reads from a directory goes through
      :func:`lmforge.modeling.loading.load_tokenizer`, which asks it first, then
      ``AutoTokenizer``; a preset's tokenizer comes from ``Preset.tokenizer``.
    - ``encoder``: optional subclass of :class:`lmforge.data.encoding.Encoder` (the
      class or its ``"module:attr"``): how examples become ids, labels and batches. The
      default encoder renders ``chat_template``; a subclass adds what the family needs
      beyond it (GLM: command-token lookup, the ``raw`` variant).
    - positions: the encoder's job. ``Encoder.collate`` builds each batch (GLM adds its
      2D / block ``position_ids`` there), ``Encoder.pack_collate`` optionally packed rows,
      ``Encoder.packed_attention`` says whether the model honours packed batches itself.
    - ``chat_template``: a :class:`ChatTemplate`, the only prompt format of the family,
      rendered by the encoder in training and generation and written to saved tokenizers
      as Jinja (:mod:`lmforge.plugins.chat_jinja`); shared ones live in
      :mod:`lmforge.plugins.templates`. ``None`` means plain text (the raw template).
    - ``capabilities``: see below.

    ``saver``: optional ``save(model, tokenizer, out_dir)``
    for families whose on-disk layout is not what ``save_pretrained`` writes.
    ``exporter``: optional
    ``export(model, tokenizer, out_dir)`` for ``lmforge export --format transformers``
    when the family's saved layout is not transformers' native one (GLM); it
    raises :class:`~lmforge.errors.LmforgeError` for variants transformers lacks.
    ``arch_from_config`` maps a
    config dict to :class:`ArchSpec` in pure Python.
    ``long_context_methods``: the long-context methods the family accepts (the first is the
    default for ``method: family``).
    ``extend_context``: ``extend(config, lc) -> None`` (or its ``"module:attr"``), which
    changes the transformers config in place before the model is built or loaded so that
    the saved ``config.json`` carries the extension.
    ``capabilities`` maps keys of the closed set
    :class:`~lmforge.plugins.capabilities.CapabilityKey` (PEFT method keys,
    ``"packing"``, ``"long_context"``, ``"flash_attention"``,
    ``"gradient_checkpointing"``) to a :class:`Capability`; another key makes the
    plugin broken at registration, and a key left out reads as experimental
    ("untested").
    """

    name: str
    loader: str | Callable
    arch_from_config: Callable[[Mapping[str, Any]], ArchSpec]
    description: str = ""
    aliases: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    match: Callable[[Mapping[str, Any]], bool] | None = None
    priority: int = 0
    presets: tuple[Preset, ...] = ()
    saver: str | Callable | None = None
    tokenizer_loader: str | Callable[[str], Any] | None = None
    encoder: str | type | None = None  # a subclass of lmforge.data.encoding.Encoder (or its "module:attr")
    exporter: str | Callable | None = None
    default_lora_targets: tuple[str, ...] = ()
    chat_template: ChatTemplate | None = None
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    capabilities: Mapping[str, Capability] = field(default_factory=dict)
    long_context_methods: tuple[str, ...] = ()
    extend_context: str | Callable | None = None

    def capability(self, key: str) -> Capability:
        """The family's capability for ``key`` (one of :class:`CapabilityKey`); undeclared keys are untested."""
        return capability_of(self.capabilities, key, self.name)

    def capability_map(self) -> dict[str, Capability]:
        """Every capability key with its value for this family, declared or not, in key order."""
        return {str(k): self.capability(k) for k in CapabilityKey}

    def preset(self, name: str) -> Preset | None:
        for p in self.presets:
            if p.name == name:
                return p
        return None

    def claims(self, config: Mapping[str, Any]) -> bool:
        """True when this family should load a checkpoint with this ``config.json``."""
        model_type = config.get("model_type")
        if model_type:
            hit = model_type in self.model_types
        else:
            hit = any(a in self.architectures for a in config.get("architectures") or ())
        if hit and self.match is not None:
            hit = bool(self.match(config))
        return hit


# --------------------------------------------------------------------------
# options schema (PEFT methods, launchers)

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list"}


@dataclass(frozen=True)
class Option:
    """One option in a plugin's schema: name, type, default, help, allowed values.

    ``type`` is ``int``, ``float``, ``str``, ``bool``, ``list`` (of strings) or a
    tuple of those (a union, e.g. ``(str, list)`` for ``target_modules``).
    ``required`` options have no default.
    """

    name: str
    type: Any
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    required: bool = False

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return " or ".join(_TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in types)

    def coerce(self, value: Any, where: str) -> Any:
        """Return ``value`` converted to this option's type, or raise ``ValueError`` naming ``where``."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if value is None and not self.required:
            return None
        for t in types:
            ok, out = _coerce_one(value, t)
            if ok:
                if self.choices is not None and out not in self.choices:
                    raise ValueError(f"{where}: {out!r} is not one of {list(self.choices)}")
                return out
        raise ValueError(f"{where}: expected {self.type_name()}, got {type(value).__name__} {value!r}")


def _coerce_one(value: Any, t: Any) -> tuple[bool, Any]:
    if t is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return True, value.lower() in ("true", "yes", "1")
        return False, None
    if t is int:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int):
            return True, value
        if isinstance(value, str):
            try:
                return True, int(value)
            except ValueError:
                return False, None
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, None
    if t is float:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                return False, None
            return (not math.isnan(f)), f
        return False, None
    if t is str:
        return (True, value) if isinstance(value, str) else (False, None)
    if t is list:
        if isinstance(value, (list, tuple)):
            return True, list(value)
        if isinstance(value, str) and "," in value:
            return True, [v.strip() for v in value.split(",") if v.strip()]
        return False, None
    if t is dict:
        return (True, dict(value)) if isinstance(value, Mapping) else (False, None)
    return (True, value) if isinstance(value, t) else (False, None)


def validate_options(schema: Sequence[Option], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check ``given`` against ``schema``; return the options with defaults filled in.

    Raises ``ValueError`` naming ``where.option`` for an unknown option (with a
    did-you-mean), a wrong type, a value outside ``choices`` or a missing required one.
    """
    from lmforge.errors import did_you_mean

    by_name = {o.name: o for o in schema}
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise ValueError(f"{where}.{key}: unknown option{did_you_mean(key, by_name)}; known options: {known}")
        out[key] = by_name[key].coerce(value, f"{where}.{key}")
    for o in schema:
        if o.name not in out:
            if o.required:
                raise ValueError(f"{where}.{o.name}: required option is missing ({o.help})")
            out[o.name] = o.default
    return out


# --------------------------------------------------------------------------
# PEFT methods


@dataclass(frozen=True)
class PeftMethod:
    """A way to choose and wrap what trains.

    ``apply``: ``"module:attr"`` of ``apply(model, options: dict, ctx: PeftContext) -> model``,
    called after the base model is loaded. ``load``: ``load(base_model, run_dir, options)
    -> model`` rebuilding the trained model from a run directory; ``None`` means the
    run directory is a full checkpoint. ``save``: optional ``save(model, tokenizer,
    out_dir, ctx)``; by default a peft model saves its adapter with
    ``save_pretrained`` and anything else saves as a full checkpoint. ``merge``: optional ``merge(model) -> plain model``.
    ``model_load_kwargs``: optional ``kwargs(options) -> dict`` merged into
    ``from_pretrained`` (QLoRA's quantization config). ``saves`` says what lands
    in the output ("full", "peft-adapter", "trained-tensors"). ``requires`` lists
    pip distributions needed at run time. ``capability`` is the key looked up in
    the family's capability map (defaults to the name), one of
    :class:`~lmforge.plugins.capabilities.CapabilityKey`: a method that is not a
    built-in names the built-in whose family requirements it shares (e.g. ``"lora"``). ``check``: optional
    pure-Python ``check(options, config)`` run by config validation, before any
    model loads, for rules that span options (or the ``train:`` section); it
    raises ``ValueError`` naming ``peft.OPTION``.
    """

    name: str
    apply: str | Callable
    options: tuple[Option, ...] = ()
    description: str = ""
    load: str | Callable | None = None
    save: str | Callable | None = None
    merge: str | Callable | None = None
    model_load_kwargs: str | Callable | None = None
    saves: str = "full"
    requires: tuple[str, ...] = ()
    capability: str | None = None
    check: str | Callable | None = None

    @property
    def capability_key(self) -> str:
        return self.capability or self.name


@dataclass
class PeftContext:
    """What ``apply`` may need besides the model: the family, the tokenizer and the job config.

    ``callbacks``: ``transformers.TrainerCallback`` objects that ``apply`` appends
    for the training loop (AdaLoRA's rank allocator runs in ``on_optimizer_step``).
    A callback that also defines ``save_checkpoint_state(model, checkpoint_dir)`` /
    ``load_checkpoint_state(model, checkpoint_dir)`` is called when a
    ``checkpoint-N`` is written / resumed from, for state that the model's own
    ``save_pretrained`` does not keep.
    """

    family: ModelFamily
    tokenizer: Any = None
    config: Mapping[str, Any] = field(default_factory=dict)
    callbacks: list = field(default_factory=list)

    def lora_targets(self, value: Any) -> Any:
        """Resolve ``target_modules: default`` to the family's default LoRA targets."""
        if value in (None, "default"):
            if not self.family.default_lora_targets:
                return "all-linear"
            return list(self.family.default_lora_targets)
        return value


# --------------------------------------------------------------------------
# data formats


class RecordError(ValueError):
    """Raised by a data format's ``convert`` for a bad record; message says the field and problem."""


@dataclass(frozen=True)
class DataFormat:
    """A shape of training record and how it becomes :class:`Example` objects.

    ``detect(record) -> bool`` recognises a parsed record (a dict, or a ``str`` line
    for text files); auto-detection asks formats in descending ``priority``.
    ``convert(record) -> list[Example]`` raises :class:`RecordError` for a bad
    record. ``required_fields`` is documentation and error text. ``suffixes`` are
    the file kinds it reads (``.txt`` files hand ``convert`` the stripped line).
    """

    name: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any], list]
    required_fields: tuple[str, ...] = ()
    description: str = ""
    priority: int = 0
    suffixes: tuple[str, ...] = (".jsonl", ".json")


# --------------------------------------------------------------------------
# memory estimators


@dataclass(frozen=True)
class MemoryEstimator:
    """``estimate(arch: ArchSpec, job) -> breakdown`` in pure Python (no torch)."""

    name: str
    estimate: Callable[..., Any]
    description: str = ""


# --------------------------------------------------------------------------
# launchers


@dataclass(frozen=True)
class LaunchSpec:
    """What a launcher is asked to start: the worker argv (``python -m lmforge.train.worker CONFIG``)
    and the process topology."""

    worker_argv: tuple[str, ...]
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Launcher:
    """How worker processes are started.

    ``in_process=True`` (the ``local`` launcher) runs the job in the calling
    process. Otherwise ``command(spec: LaunchSpec) -> list[str]`` returns the argv
    to exec. ``prepare(cfg) -> cfg`` (optional) completes the resolved job config
    before it is written for the workers (DeepSpeed writes its JSON and points
    ``train.deepspeed`` at it). ``launch(spec, cfg, config_path) -> int``
    (optional) replaces "run ``command``": schedulers write a job script or
    manifest, submit it when ``cfg["launcher"]["submit"]`` and return an exit
    status. ``check(cfg)`` (optional) raises :class:`~lmforge.errors.ConfigError` for
    a combination of options that cannot work (run by ``validate``, so ``--dry-run``
    catches it). ``options`` are the launcher's own keys under ``launcher:``.
    ``rank_env`` names the environment variables the started processes read for
    (rank, world size, local rank).
    """

    name: str
    description: str = ""
    in_process: bool = False
    command: Callable[[LaunchSpec], list[str]] | None = None
    options: tuple[Option, ...] = ()
    rank_env: tuple[str, str, str] = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    prepare: Callable[[dict], dict] | str | None = None
    launch: Callable[[LaunchSpec, dict, str], int] | str | None = None
    check: Callable[[dict], None] | str | None = None


KINDS = {
    "model_families": ModelFamily,
    "peft_methods": PeftMethod,
    "data_formats": DataFormat,
    "memory_estimators": MemoryEstimator,
    "launchers": Launcher,
}
