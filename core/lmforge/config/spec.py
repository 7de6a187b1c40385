"""The job spec: one validated config as typed, frozen sections.

:func:`build_spec` is the one place a raw config (YAML, ``--set`` overrides, CLI
flags, ``FineTune`` keywords) is checked: :func:`~lmforge.config.schema.validate`
(keys, types, plugin names, PEFT and launcher options, with the key path and a
did-you-mean), then the ``train:`` section against ``transformers.TrainingArguments``
(:mod:`lmforge.config.trainargs`). It returns a :class:`JobSpec` that the training
path (``lmforge train``, ``FineTune.train_local``, each launched worker) hands down
unchanged: nothing below it validates again.

Every section is a frozen dataclass; the options a plugin defines (a PEFT method's
``peft.*``, a launcher's own ``launcher.*``) and the user's ``train:`` keys stay
mappings inside their section, read-only (:class:`types.MappingProxyType`, lists as
tuples). :attr:`JobSpec.config` is the whole resolved config, read-only, for code
and plugins that read keys (``PeftContext.config``); :meth:`JobSpec.to_dict` is a
plain copy of it, which is what ``lmforge.yaml`` records.

:func:`training_arguments` is the one function that turns a spec into the
``TrainingArguments`` keywords; :func:`build_spec` calls it once and keeps the
result in :attr:`TrainSpec.arguments`.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Mapping

from lmforge.config import trainargs
from lmforge.config.schema import SCHEMA, validate

_REST = "*"  # a field holding the rest of its section: the options a plugin defines, or train:


def _key(path: str, **default: Any) -> Any:
    """A section field read from the resolved config at the dotted ``path`` (``section.*``: the rest);
    ``default=`` only where building the section by hand (tests, ``Completion``) may leave it out."""
    return field(metadata={"key": path}, **default)


def freeze(value: Any) -> Any:
    """A read-only copy: mappings become :class:`types.MappingProxyType`, lists tuples, recursively."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain, mutable copy of a :func:`freeze` result (dicts and lists), e.g. for YAML or a library."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelSpec:
    """The model and how it is loaded."""

    name: str = _key("model")
    family: str | None = _key("family")
    dtype: str = _key("dtype")
    attn_implementation: str | None = _key("attn_implementation")
    gradient_checkpointing: bool = _key("gradient_checkpointing")
    trust_remote_code: bool = _key("trust_remote_code")
    max_length: int = _key("max_length")


@dataclass(frozen=True)
class DataSpec:
    """Where the examples come from and how they become tokens (``data:``)."""

    train_file: str | tuple | None = _key("data.train_file")
    valid_file: str | tuple | None = _key("data.valid_file")
    format: str = _key("data.format")
    train_on_prompt: bool = _key("data.train_on_prompt")
    template: str = _key("data.template")
    max_valid_examples: int | None = _key("data.max_valid_examples")
    on_error: str = _key("data.on_error")
    cache: bool = _key("data.cache")
    cache_dir: str | None = _key("data.cache_dir")
    mix: str | None = _key("data.mix")
    mix_samples: int | None = _key("data.mix_samples")


@dataclass(frozen=True)
class PackingSpec:
    """``packing:`` and, with it, whether rows are packed at load time (``data.online_packing``)."""

    enabled: bool = _key("packing")
    online: bool = _key("data.online_packing")


@dataclass(frozen=True)
class PeftSpec:
    """The PEFT method and its own options (checked against the method's schema)."""

    method: str = _key("peft.method")
    options: Mapping[str, Any] = _key("peft.*")


@dataclass(frozen=True)
class LauncherSpec:
    """How processes are started: the topology, and the chosen launcher's own options."""

    name: str = _key("launcher.name")
    nproc_per_node: int = _key("launcher.nproc_per_node")
    nnodes: int = _key("launcher.nnodes")
    node_rank: int = _key("launcher.node_rank")
    master_addr: str = _key("launcher.master_addr")
    master_port: int = _key("launcher.master_port")
    options: Mapping[str, Any] = _key("launcher.*")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


@dataclass(frozen=True)
class EvalSpec:
    """Evaluation with generation (``eval_with_generation``, ``eval_generation:``)."""

    with_generation: bool = _key("eval_with_generation")
    max_new_tokens: int = _key("eval_generation.max_new_tokens")
    max_examples: int = _key("eval_generation.max_examples")
    batch_size: int = _key("eval_generation.batch_size")


@dataclass(frozen=True)
class MemorySpec:
    """The memory estimate and dynamic batch (see docs/memory.md)."""

    dynamic_batch: bool = _key("dynamic_batch")
    gpu_memory: str | int | None = _key("gpu_memory")
    memory_margin: float = _key("memory_margin")


@dataclass(frozen=True)
class RunSpec:
    """Where the run goes and how it starts there."""

    output_dir: str = _key("output_dir")
    overwrite: bool = _key("overwrite")
    force_resume: bool = _key("force_resume")
    threads: int | str = _key("threads")


@dataclass(frozen=True)
class LongContextSpec:
    """``long_context:`` (or AntLLM's ``use_long_glm``, folded into it by validation); ``JobSpec.long_context``
    is ``None`` when the config has none. ``method`` may still be ``"family"`` and ``original_max_position``
    ``"auto"`` here: :func:`lmforge.modeling.longctx.resolve` makes them concrete against the model's config."""

    method: str = _key("long_context.method")
    factor: float = _key("long_context.factor")
    original_max_position: int | str = _key("long_context.original_max_position")
    shift_attn: bool = _key("long_context.shift_attn", default=False)
    group_size_ratio: float = _key("long_context.group_size_ratio", default=0.25)

    @classmethod
    def of(cls, value: "LongContextSpec | Mapping | None") -> "LongContextSpec | None":
        """A section from a ``long_context`` mapping (``Completion(long_context=...)``, a run's ``lmforge.yaml``),
        checked by the config schema; ``None``/empty stays ``None``."""
        if value is None or isinstance(value, cls):
            return value
        from lmforge.config.schema import SCHEMA, _check_section, _resolve_long_context, check_long_context_method

        raw = {"long_context": dict(value)}
        check_long_context_method(raw)
        cfg = _check_section(raw, {k: SCHEMA[k] for k in ("long_context", "use_long_glm", "long_glm_factor",
                                                          "max_length")}, "")
        _resolve_long_context(raw, cfg)
        return None if cfg["long_context"] is None else _section(cls, {"long_context": cfg["long_context"]})


@dataclass(frozen=True)
class TrainSpec:
    """``train:`` as the user wrote it (``args``) and the ``TrainingArguments`` keywords the job uses
    (``arguments``: :func:`training_arguments` of the spec, made once when it is built)."""

    args: Mapping[str, Any] = _key("train.*")
    arguments: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}), metadata={"derived": True})


SECTIONS: dict[str, type] = {
    "model": ModelSpec, "data": DataSpec, "packing": PackingSpec, "peft": PeftSpec, "launcher": LauncherSpec,
    "eval": EvalSpec, "memory": MemorySpec, "run": RunSpec, "train": TrainSpec, "long_context": LongContextSpec,
}
OPTIONAL_SECTIONS = ("long_context",)  # None in the JobSpec when the resolved config has none


@dataclass(frozen=True)
class JobSpec:
    """One training job, validated. Build it with :func:`build_spec`; it never changes afterwards."""

    model: ModelSpec
    data: DataSpec
    packing: PackingSpec
    peft: PeftSpec
    launcher: LauncherSpec
    eval: EvalSpec
    memory: MemorySpec
    run: RunSpec
    train: TrainSpec
    long_context: LongContextSpec | None
    config: Mapping[str, Any] = field(repr=False)  # the resolved config, read-only

    def to_dict(self) -> dict:
        """The resolved config as a plain dict (a copy), key order kept: what ``lmforge.yaml`` records."""
        return thaw(self.config)

    @classmethod
    def from_resolved(cls, cfg: Mapping, *, cuda: bool | None = None) -> "JobSpec":
        """The spec of a config :func:`~lmforge.config.schema.validate` already resolved (no checks run)."""
        frozen = freeze(cfg)
        sections = {name: None if name in OPTIONAL_SECTIONS and frozen.get(name) is None else _section(kind, frozen)
                    for name, kind in SECTIONS.items()}
        spec = cls(**sections, config=frozen)
        return dataclasses.replace(spec, train=dataclasses.replace(
            spec.train, arguments=freeze(training_arguments(spec, cuda=cuda))))


def _section(kind: type, cfg: Mapping) -> Any:
    """One section of a frozen resolved config: each field read at its ``key`` metadata."""
    values = {}
    for f in dataclasses.fields(kind):
        if f.metadata.get("derived"):
            continue
        path = f.metadata["key"].split(".")
        if path[-1] == _REST:
            section = cfg.get(path[0]) or types.MappingProxyType({})
            named = {g.metadata["key"].split(".")[-1] for g in dataclasses.fields(kind)
                     if g.metadata.get("key", "").startswith(path[0] + ".") and g is not f}
            values[f.name] = types.MappingProxyType({k: v for k, v in section.items() if k not in named})
            continue
        node: Any = cfg
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        values[f.name] = node
    return kind(**values)


def schema_keys() -> set[str]:
    """Every dotted key of the schema (``data.train_file`` ...), for checking that the sections cover it;
    the alias keys validation folds into others (:data:`~lmforge.config.schema.ALIAS_KEYS`) are left out."""
    from lmforge.config.schema import ALIAS_KEYS

    out = set()
    for key, spec in SCHEMA.items():
        if key in ALIAS_KEYS:
            continue
        if isinstance(spec, dict) and spec:
            out.update(f"{key}.{k}" for k in spec)
        else:
            out.add(key)
    return out


def training_arguments(spec: JobSpec, *, cuda: bool | None = None) -> dict[str, Any]:
    """The ``transformers.TrainingArguments`` keywords of a job, in one place.

    lmforge's defaults, then the user's ``train:`` (with what the launcher's
    ``prepare`` put there: ``deepspeed``, ``fsdp``), then ``output_dir``, then what
    the job itself needs: the input-token count, the CPU settings on a machine
    without CUDA, evaluation every ``save_steps`` when there is validation data,
    gradient checkpointing and, for packing, all columns kept.
    ``resume_from_checkpoint`` is left out (it is ``Trainer.train``'s argument).
    ``dynamic_batch`` may still change the batch keys (:func:`lmforge.modeling.memory.plan_for_training`).
    """
    args = trainargs.with_train_defaults(thaw(spec.train.args))
    args["output_dir"] = spec.run.output_dir  # TensorBoard events land in OUTPUT_DIR/runs/
    args.pop("resume_from_checkpoint", None)
    args.setdefault("include_num_input_tokens_seen", "non_padding")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        args.setdefault("dataloader_pin_memory", False)
        # without this, accelerate treats CPU workers started by torchrun as independent jobs
        args.setdefault("use_cpu", True)
    if spec.data.valid_file and "eval_strategy" not in spec.train.args:
        args["eval_strategy"] = "steps"
        args.setdefault("eval_steps", args.get("save_steps", 500))
    if spec.model.gradient_checkpointing:
        args["gradient_checkpointing"] = True
    if spec.packing.enabled:  # Trainer's column filter would strip the packed rows
        args["remove_unused_columns"] = False
    return args


def build_spec(raw: Mapping, registry=None) -> JobSpec:
    """Validate a raw config once and return its :class:`JobSpec`. Raises :class:`~lmforge.errors.ConfigError`.

    After :func:`~lmforge.config.schema.validate` (pure Python), the ``train:`` keys are
    checked against ``TrainingArguments`` (names with a did-you-mean, simple types, enum
    values) and the job's keywords are built once into ``TrainingArguments`` in a
    temporary directory, so conflicting keys fail here (also in ``--dry-run``), not after
    tokenization. Imports transformers.
    """
    cfg = validate(raw, registry)
    trainargs.check_names(cfg["train"])
    spec = JobSpec.from_resolved(cfg)
    trainargs.check_values(cfg["train"])
    trainargs.check_combination(thaw(spec.train.arguments))
    return spec
