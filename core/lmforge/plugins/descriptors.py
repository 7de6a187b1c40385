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
from typing import Any, Callable, Mapping, Sequence

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


def config_value(cfg: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The value of the first of ``keys`` that ``cfg`` sets (not None), else ``default``.

    For ``arch_from_config`` functions: released ``config.json`` files spell the
    same number several ways (``hidden_size`` / ``n_embd`` / ``d_model`` ...).
    """
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


# --------------------------------------------------------------------------
# capabilities

SUPPORTED = "supported"
EXPERIMENTAL = "experimental"
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Capability:
    """Whether a family supports a feature, and why not when it does not."""

    status: str = SUPPORTED
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in (SUPPORTED, EXPERIMENTAL, UNSUPPORTED):
            raise ValueError(f"capability status must be supported/experimental/unsupported, got {self.status!r}")
        if self.status == UNSUPPORTED and not self.reason:
            raise ValueError("an unsupported capability must say why (reason=...)")

    @property
    def usable(self) -> bool:
        return self.status != UNSUPPORTED

    def to_json(self) -> dict:
        return {"status": self.status, "reason": self.reason or None}


def supported(reason: str = "") -> Capability:
    return Capability(SUPPORTED, reason)


def experimental(reason: str = "") -> Capability:
    return Capability(EXPERIMENTAL, reason)


def unsupported(reason: str) -> Capability:
    return Capability(UNSUPPORTED, reason)


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
class ChatTemplate:
    """How a family renders a conversation to text, as trainable/untrainable segments.

    Format strings see ``{content}``, ``{round}`` (0-based index of the user turn)
    and ``{round1}`` (1-based). Rendering yields ``(text, trainable)`` segments:
    system, user and observation turns and the ``assistant_prefix`` are prompt;
    assistant contents (and ``assistant_suffix``) are response. Training and
    generation both go through :meth:`render`, so they see the same prompt.

    ``turn_separator`` is prompt text placed after each answer's end token (EOS),
    e.g. the newline after ChatML's ``<|im_end|>``.

    ``prefix`` is text placed once before everything (not BOS: the encoder adds
    BOS itself when the tokenizer has one and ``add_bos`` is true).
    """

    name: str
    user: str = "{content}"
    assistant_prefix: str = ""
    assistant: str = "{content}"
    assistant_suffix: str = ""
    turn_separator: str = ""
    system: str = "{content}\n"
    observation: str = "{content}"
    prefix: str = ""
    default_system: str | None = None
    add_bos: bool = True
    stop_strings: tuple[str, ...] = ()

    def render(self, messages: Sequence[Message]) -> list[tuple[str, bool]]:
        """Render ``messages`` to ``[(text, trainable), ...]``.

        Every user/observation turn is followed by the assistant prefix, so a
        conversation ending on a user turn renders as a generation prompt.
        Raises ``ValueError`` on an unknown role.
        """
        segments: list[tuple[str, bool]] = []
        if self.prefix:
            segments.append((self.prefix, False))
        msgs = list(messages)
        if self.default_system is not None and not any(m.role == "system" for m in msgs):
            msgs.insert(0, Message("system", self.default_system))
        round_idx = 0
        for msg in msgs:
            if msg.role == "system":
                segments.append((self.system.format(content=msg.content, round=round_idx, round1=round_idx + 1), False))
            elif msg.role in ("user", "observation"):
                fmt = self.user if msg.role == "user" else self.observation
                segments.append((fmt.format(content=msg.content, round=round_idx, round1=round_idx + 1), False))
                segments.append((self.assistant_prefix.format(round=round_idx, round1=round_idx + 1), False))
            elif msg.role == "assistant":
                segments.append((self.assistant.format(content=msg.content), True))
                if self.assistant_suffix:
                    segments.append((self.assistant_suffix, True))
                if self.turn_separator:
                    segments.append((self.turn_separator, False))
                round_idx += 1
            else:
                raise ValueError(f"unknown message role {msg.role!r} (expected system, user, assistant, observation)")
        return [(t, tr) for t, tr in segments if t]


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

    ``loader``: ``"module:attr"`` of ``load(source: ModelSource, options: LoadOptions)
    -> (model, tokenizer)``. ``saver``: optional ``save(model, tokenizer, out_dir)``
    for families whose on-disk layout is not what ``save_pretrained`` writes.
    ``tokenizer_loader``: optional ``load(path) -> tokenizer`` for families whose
    tokenizer ``AutoTokenizer`` cannot read without the checkpoint's own code;
    every tokenizer lmforge reads from a directory of this family goes through it.
    ``encoder``: optional ``"module:attr"`` of a class with the interface of
    :class:`lmforge.data.encoding.TemplateEncoder` for families that build their own
    position ids or masks (GLM's 2D positions). ``exporter``: optional
    ``export(model, tokenizer, out_dir)`` for ``lmforge export --format transformers``
    when the family's saved layout is not transformers' native one (GLM); it
    raises :class:`~lmforge.errors.LmforgeError` for variants transformers lacks.
    ``arch_from_config`` maps a
    config dict to :class:`ArchSpec` in pure Python.
    ``capabilities`` keys: PEFT method names, ``"packing"``, ``"long_context"``,
    ``"flash_attention"``, ``"gradient_checkpointing"``; a missing key means
    supported.
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
    estimator_profile: str | Callable | None = None
    """``"module:attr"`` (or a callable) of pure-Python ``profile(arch, model_type) -> Mapping``.

    What the built-in memory estimator needs to know about this family's forward
    pass beyond :class:`ArchSpec` (its norm, attention kernel, parameter layout ...;
    the keys are listed in :mod:`lmforge_builtins.estimator.profiles`), for a
    checkpoint whose ``model_type`` is in ``model_types``; ``"approximate": reason``
    marks a model the estimator replays only approximately. ``None``: a
    transformers LLaMA-style decoder.
    """
    saver: str | Callable | None = None
    tokenizer_loader: str | Callable | None = None
    encoder: str | Callable | None = None
    exporter: str | Callable | None = None
    default_lora_targets: tuple[str, ...] = ()
    chat_template: ChatTemplate | None = None
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    capabilities: Mapping[str, Capability] = field(default_factory=dict)

    def capability(self, key: str) -> Capability:
        return self.capabilities.get(key, Capability(SUPPORTED))

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
    the family's capability map (defaults to the name). ``check``: optional
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
