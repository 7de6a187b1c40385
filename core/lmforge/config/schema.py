"""Job configuration: one YAML file, ``--set dotted.key=value`` overrides, validation.

Pure Python (no torch): ``lmforge train`` validates the whole config, including
plugin names and PEFT options, before any model is loaded. Errors name the key
path (``peft.r``, ``data.train_file``) and suggest the closest known key.

The ``train:`` section passes through to ``transformers.TrainingArguments``; its
keys are checked against that dataclass by :mod:`lmforge.config.trainargs`
(which imports transformers, so it runs only on the training path).
:func:`lmforge.config.spec.build_spec` runs both and returns the typed, frozen
:class:`~lmforge.config.spec.JobSpec` the training path uses.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Mapping

from lmforge.plugins.descriptors import Option, resolve_ref, validate_options
from lmforge.errors import ConfigError, PluginError, did_you_mean


@dataclass(frozen=True)
class Key:
    """One config key: its type (as for :class:`~lmforge.plugins.descriptors.Option`), default and help."""

    type: Any
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    required: bool = False


# long_context.method values ("family": the first of the family's ModelFamily.long_context_methods)
LONG_CONTEXT_METHODS = ("linear", "dynamic", "yarn", "llama3", "ntk", "family")

# The schema. Sections are dicts of Key; ``peft`` options are checked against the
# chosen method's own schema, ``train`` against TrainingArguments.
SCHEMA: dict[str, Any] = {
    "model": Key(str, None, "a preset name (see `lmforge models`) or a local checkpoint directory", required=True),
    "family": Key(str, None, "force a model family instead of detecting it from config.json"),
    "output_dir": Key(str, "runs/lmforge", "where checkpoints, logs and the final model go"),
    "max_length": Key(int, 512, "maximum tokens per example (prompt + response); longer ones are truncated"),
    "dtype": Key(str, "auto", "parameter dtype: auto (fp32 on CPU, bf16 on GPUs that support it), fp32, bf16, fp16",
                 choices=("auto", "fp32", "bf16", "fp16")),
    "attn_implementation": Key(str, None, "eager, sdpa or flash_attention_2 (default: the family's choice)",
                               choices=("eager", "sdpa", "flash_attention_2", "flex_attention")),
    "gradient_checkpointing": Key(bool, False, "recompute activations in the backward pass to save memory"),
    "dynamic_batch": Key(bool, False, "pick the largest micro-batch the memory estimate fits into gpu_memory and "
                         "adjust gradient accumulation to keep the global batch (see docs/memory.md)"),
    "gpu_memory": Key((str, int), None, "memory per device for dynamic_batch, e.g. 80GiB or 24GB (default: the "
                      "CUDA device's total memory; required on machines without CUDA)"),
    "memory_margin": Key(float, 0.10, "share of gpu_memory dynamic_batch keeps free"),
    "threads": Key((int, str), "auto", "torch CPU threads: a number, or auto (the cores other processes leave free); "
                   "OMP_NUM_THREADS, when set, wins (see docs/config.md)"),
    "trust_remote_code": Key(bool, False, "allow executing Python files shipped in the checkpoint directory"),
    "packing": Key(bool, False, "pack several examples into each max_length row, without cross-example attention "
                   "(see docs/packing.md)"),
    "eval_with_generation": Key(bool, False, "at every evaluation also generate answers for validation prompts "
                                "and log exact match, BLEU-4 and ROUGE (see docs/inference.md)"),
    "eval_generation": {
        "max_new_tokens": Key(int, 64, "tokens generated per validation prompt"),
        "max_examples": Key(int, 64, "validation examples scored per evaluation"),
        "batch_size": Key(int, 8, "prompts per generate call"),
    },
    "data": {
        "train_file": Key((str, list), None, "training data: a file, a list of files, a directory, a glob or an "
                          "index directory (`lmforge data index`); required unless data.mix is set"),
        "valid_file": Key((str, list), None, "validation data (same forms as train_file)"),
        "format": Key(str, "auto", "a data format name (see `lmforge plugins`) or auto to detect it per file"),
        "train_on_prompt": Key(bool, False, "also compute the loss on prompt tokens"),
        "template": Key(str, "family", "family: render prompts with the model family's chat template; "
                        "raw: concatenate prompt and response as they are", choices=("family", "raw")),
        "max_valid_examples": Key(int, None, "cap the number of validation examples"),
        "on_error": Key(str, "raise", "a bad record (malformed JSON, missing/mistyped/empty field, invalid UTF-8): "
                        "raise stops with file:line: problem; skip skips and counts them, showing the first few",
                        choices=("raise", "skip")),
        "cache": Key(bool, True, "keep tokenized data on disk, keyed by file content, tokenizer, template, format "
                     "and max_length, so a second run does no tokenization"),
        "cache_dir": Key(str, None, "token cache directory (default: $LMFORGE_CACHE_DIR, else "
                         "~/.cache/lmforge/data)"),
        "mix": Key(str, None, "a JSON file listing datasets to sample with weights (see docs/data.md); "
                   "replaces data.train_file"),
        "mix_samples": Key(int, None, "draws per epoch of a data.mix mixture (default: the datasets' total size)"),
        "online_packing": Key(bool, True, "with packing: true, pack examples at load time (true) or keep the rows "
                              "of an offline-packed file, one record per row (false; see `lmforge data pack`)"),
    },
    "long_context": {
        "method": Key(str, "family", "how positions are extended: linear (position interpolation), dynamic "
                      "(dynamic NTK), yarn, llama3, ntk (static NTK-aware base), or family (the family's default; "
                      "see docs/long-context.md)", choices=LONG_CONTEXT_METHODS),
        "factor": Key(float, 2.0, "new context = factor x original_max_position (1 keeps the positions as they are)"),
        "original_max_position": Key((int, str), "auto", "the pretraining context: a number, or auto (the "
                                     "checkpoint's or preset's max positions)"),
        "shift_attn": Key(bool, False, "train with LongLoRA's shifted sparse attention (S2-Attn) on families whose "
                          "attention goes through transformers' AttentionInterface; evaluation, generation and the "
                          "saved model use full attention (see docs/long-context.md)"),
        "group_size_ratio": Key(float, 0.25, "with shift_attn: the S2-Attn group size as a share of max_length, "
                                "in (0, 1]"),
    },
    "use_long_glm": Key(bool, False, "AntLLM's spelling: long_context {method: family, factor: long_glm_factor}, "
                        "and the job trains at max_length x long_glm_factor"),
    "long_glm_factor": Key(int, 2, "with use_long_glm: the context and max_length multiplier"),
    "peft": {"method": Key(str, "full", "the PEFT method (see `lmforge plugins`)")},
    "train": {},
    "launcher": {
        "name": Key(str, "local", "how processes are started (see `lmforge plugins`)"),
        "nproc_per_node": Key(int, 1, "processes per node"),
        "nnodes": Key(int, 1, "number of nodes"),
        "node_rank": Key(int, 0, "rank of this node"),
        "master_addr": Key(str, "127.0.0.1", "rendezvous address"),
        "master_port": Key(int, 29500, "rendezvous port"),
    },
    "overwrite": Key(bool, False, "delete a previous run in output_dir before starting (lmforge train --overwrite)"),
    "force_resume": Key(bool, False, "with train.resume_from_checkpoint: continue even when the config differs from "
                        "the saved lmforge.yaml in keys that change the training trajectory (--force-resume)"),
    "plugins": Key(dict, None, "written by lmforge into lmforge.yaml: which plugin provided what (informational)"),
    "lmforge_version": Key(str, None, "written by lmforge into lmforge.yaml (informational)"),
}

# spellings validate() folds into other keys (use_long_glm -> long_context and max_length)
ALIAS_KEYS = ("use_long_glm", "long_glm_factor")

TRAIN_RESERVED = {"output_dir": "set the top-level output_dir instead"}


def _yaml_loader():
    """A safe YAML loader that reads ``1e-4`` as a float (YAML 1.1 needs a dot: ``1.0e-4``)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def yaml_load(text):
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file; errors name the file and line."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.max_steps=10"`` -> (["train", "max_steps"], 10). Values are parsed as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(config: dict, overrides: list[str] | None) -> dict:
    """Return a copy of ``config`` with each ``dotted.key=value`` set."""
    out = copy.deepcopy(config)
    for text in overrides or []:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def set_key(config: dict, dotted: str, value: Any) -> None:
    """Set ``config[a][b] = value`` for ``dotted = "a.b"`` (CLI flags for common keys)."""
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _check_section(given: Mapping, schema: Mapping, prefix: str) -> dict:
    out: dict = {}
    for key, value in given.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"{path}: unknown key{did_you_mean(key, schema)}; known keys here: {', '.join(schema)}")
        spec = schema[key]
        if isinstance(spec, dict):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a mapping (section), got {type(value).__name__} {value!r}")
            out[key] = dict(value) if key in ("peft", "train") else _check_section(
                {k: v for k, v in value.items() if k in spec} if key == "launcher" else value, spec, path + ".")
            if key == "launcher":  # the rest are the chosen launcher's own options, checked in validate()
                out[key]["_extra"] = {k: v for k, v in value.items() if k not in spec}
            continue
        opt = Option(key, spec.type, spec.default, spec.help, spec.choices, spec.required)
        try:
            out[key] = opt.coerce(value, path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for key, spec in schema.items():
        if key in out:
            continue
        if isinstance(spec, dict):
            out[key] = {} if key in ("peft", "train") else _check_section({}, spec, f"{prefix}{key}.")
        elif spec.required:
            raise ConfigError(f"{prefix}{key}: required key is missing ({spec.help})")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def validate(config: Mapping, registry=None) -> dict:
    """Validate a raw config and return it resolved (defaults filled, plugin names checked).

    Checks every key's type, unknown keys (with did-you-mean), that the family,
    PEFT method, data format and launcher exist, and the PEFT options against the
    method's schema. Never imports torch. Raises :class:`ConfigError`.
    """
    from lmforge.plugins.registry import get_registry

    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a mapping, got {type(config).__name__}")
    check_long_context_method(config)
    cfg = _check_section(config, SCHEMA, "")
    reg = registry or get_registry()

    peft = dict(cfg.get("peft") or {})
    method_name = peft.pop("method", "full") or "full"
    try:
        method = reg.peft_method(method_name)
    except PluginError as exc:
        raise ConfigError(f"peft.method: {exc}") from None
    try:
        cfg["peft"] = {"method": method_name, **validate_options(method.options, peft, "peft")}
        if method.check is not None:
            resolve_ref(method.check)({k: v for k, v in cfg["peft"].items() if k != "method"}, cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    if bool(cfg["data"]["train_file"]) == bool(cfg["data"]["mix"]):
        raise ConfigError("data.train_file: required key is missing (training data: a file, a list of files, a "
                          "directory, a glob or an index directory), unless data.mix names a mixture"
                          if not cfg["data"]["mix"] else "data.mix: set data.train_file or data.mix, not both")
    fmt = cfg["data"]["format"]
    if fmt != "auto":
        try:
            reg.data_format(fmt)
        except PluginError as exc:
            raise ConfigError(f"data.format: {exc}") from None
    if cfg.get("family"):
        try:
            reg.family(cfg["family"])
        except PluginError as exc:
            raise ConfigError(f"family: {exc}") from None
    try:
        launcher = reg.launcher(cfg["launcher"]["name"])
    except PluginError as exc:
        raise ConfigError(f"launcher.name: {exc}") from None
    extra = cfg["launcher"].pop("_extra", {})
    try:
        cfg["launcher"].update(validate_options(launcher.options, extra, "launcher"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if launcher.check is not None:
        resolve_ref(launcher.check)(cfg)
    if launcher.in_process and (cfg["launcher"]["nproc_per_node"] > 1 or cfg["launcher"]["nnodes"] > 1):
        raise ConfigError(
            f"launcher.nproc_per_node/nnodes: the {launcher.name!r} launcher runs one process; "
            "choose a multi-process launcher (see `lmforge plugins`)"
        )
    for key, why in TRAIN_RESERVED.items():
        if key in cfg["train"]:
            raise ConfigError(f"train.{key}: not allowed here: {why}")
    from lmforge.runtime.threads import parse as parse_threads

    cfg["threads"] = parse_threads(cfg["threads"]) or "auto"
    if cfg["max_length"] <= 0:
        raise ConfigError(f"max_length: must be positive, got {cfg['max_length']}")
    _resolve_long_context(config, cfg)
    return cfg


def _resolve_long_context(raw: Mapping, cfg: dict) -> None:
    """``long_context`` checked and in its canonical form (``None`` when absent or empty).

    ``use_long_glm: true`` (AntLLM) becomes ``long_context: {method: family, factor: long_glm_factor}``
    with ``max_length`` multiplied by the factor and ``use_long_glm`` set back to false, so the
    resolved config (what ``lmforge.yaml`` records) validates to itself again.
    """
    given = raw.get("long_context")
    if cfg["use_long_glm"]:
        if given:
            raise ConfigError("use_long_glm: set either use_long_glm (AntLLM's spelling) or long_context, not both")
        if cfg["long_glm_factor"] < 1:
            raise ConfigError(f"long_glm_factor: must be >= 1, got {cfg['long_glm_factor']}")
        cfg["long_context"] = {**cfg["long_context"], "method": "family", "factor": float(cfg["long_glm_factor"])}
        cfg["max_length"] *= cfg["long_glm_factor"]
        cfg["use_long_glm"] = False
        return
    if not given:
        cfg["long_context"] = None
        return
    lc = cfg["long_context"]
    if lc["factor"] is None or lc["factor"] < 1:
        raise ConfigError(f"long_context.factor: must be >= 1 (new context = factor x original), got {lc['factor']}")
    orig = lc["original_max_position"]
    if isinstance(orig, str) and orig != "auto" or isinstance(orig, int) and orig <= 0 or orig is None:
        raise ConfigError(f"long_context.original_max_position: expected a positive integer or auto, got {orig!r}")


def check_long_context_method(raw: Mapping) -> None:
    """``long_context.method``: one of :data:`LONG_CONTEXT_METHODS`, with a did-you-mean (before type checks)."""
    section = raw.get("long_context")
    if isinstance(section, Mapping) and isinstance(section.get("method"), str):
        method = section["method"]
        if method not in LONG_CONTEXT_METHODS:
            raise ConfigError(f"long_context.method: {method!r} is not one of {', '.join(LONG_CONTEXT_METHODS)}"
                              f"{did_you_mean(method, LONG_CONTEXT_METHODS)}")


# The 9G (CPM) launch scripts' environment names for the torchrun topology; a key set in the
# config or on the command line wins over the environment.
LAUNCHER_ENV = {
    "GPUS_PER_NODE": ("nproc_per_node", int),
    "NNODES": ("nnodes", int),
    "NODE_RANK": ("node_rank", int),
    "MASTER_ENDPOINT": ("master_addr", str),
    "MASTER_ADDR": ("master_addr", str),
    "MASTER_PORT": ("master_port", int),
}


def apply_launcher_env(raw: dict, environ: Mapping[str, str]) -> None:
    """Fill unset ``launcher.*`` topology keys from ``GPUS_PER_NODE``, ``NNODES``, ``NODE_RANK`` (or
    ``RANK`` beside ``NNODES``), ``MASTER_ENDPOINT`` / ``MASTER_ADDR`` and ``MASTER_PORT``, as the 9G
    scripts export them."""
    section = raw.get("launcher")
    if section is None:
        section = {}
    if not isinstance(section, dict) or section.get("name", "local") == "local":
        return  # one in-process job: the topology variables are not for it
    env_map = dict(LAUNCHER_ENV)
    if "NODE_RANK" not in environ and "NNODES" in environ and "RANK" in environ:
        env_map["RANK"] = ("node_rank", int)  # the 9G scripts export the node's rank as RANK
    for env, (key, kind) in env_map.items():
        if key in section or env not in environ or environ[env] == "":
            continue
        try:
            section[key] = kind(environ[env])
        except ValueError:
            raise ConfigError(f"${env}: expected {kind.__name__} for launcher.{key}, got {environ[env]!r}") from None
    if section:
        raw["launcher"] = section


def to_yaml(cfg: Mapping) -> str:
    """A resolved config (a plain dict, e.g. :meth:`JobSpec.to_dict`) as YAML, key order kept."""
    import yaml

    return yaml.safe_dump(dict(cfg), sort_keys=False, allow_unicode=True)
