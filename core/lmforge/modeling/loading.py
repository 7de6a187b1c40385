"""Resolving a model name to a family, and loading models through the family's loader.

``lmforge.load`` (and so training, ``Completion`` and ``lmforge generate``) go
through :func:`resolve_model` and the family's ``loader``; the family decides
how weights, tokenizer and any custom architecture come together. A job's
``long_context`` section travels in :class:`LoadOptions`; every loader applies it
to the config it builds the model from with :func:`apply_long_context`.

Only :func:`resolve_model` is torch-free; the loading helpers import torch and
transformers inside their bodies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from lmforge.plugins.descriptors import ModelFamily, Preset, resolve_ref
from lmforge.errors import ConfigError, LmforgeError, PluginError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    import torch

RUN_CONFIG = "lmforge.yaml"
BASE_MODEL_DIR = "base_model"


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``model:`` value: the family plus either a preset or a local directory."""

    family: ModelFamily
    config: Mapping[str, Any]
    preset: Preset | None = None
    path: str | None = None

    @property
    def name(self) -> str:
        return self.preset.name if self.preset is not None else str(self.path)


@dataclass
class LoadOptions:
    """How to load: parameter dtype, attention implementation, remote code, extra ``from_pretrained`` kwargs."""

    dtype: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    model_kwargs: dict = field(default_factory=dict)
    for_training: bool = False
    # the job's long_context section (a LongContextSpec), applied by apply_long_context; the loader
    # records the resolved section in long_context_applied, and load_model checks that it did
    long_context: Any = None
    long_context_applied: Any = field(default=None, repr=False)


def read_config_json(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"{path}: not a checkpoint directory (no config.json)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{cfg_path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def resolve_model(model: str, family: str | None = None, registry=None) -> ModelSource:
    """Turn a preset name or a checkpoint directory into a :class:`ModelSource`.

    Raises :class:`ConfigError` for a name that is neither (with the closest
    preset) and :class:`PluginError` when no installed family claims a checkpoint.
    Pure Python: reads ``config.json`` only.
    """
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    forced = reg.family(family) if family else None
    if os.path.isdir(model):
        from lmforge.runs.rundir import check_run_complete

        check_run_complete(model)  # an interrupted run says so (and how to resume) instead of failing on a file
        config = read_config_json(model)
        fam = forced or reg.family_for_config(config, where=os.path.join(model, "config.json"))
        return ModelSource(family=fam, config=config, path=os.path.abspath(model))
    found = reg.find_preset(model)
    if found is not None:
        fam, preset = found
        if forced is not None and forced.name != fam.name:
            raise ConfigError(f"model: preset {model!r} belongs to family {fam.name!r}, not {forced.name!r}")
        return ModelSource(family=fam, config=dict(preset.config), preset=preset)
    presets = [p.name for f in reg.families() for p in f.presets]
    if os.path.sep in model or model.startswith("."):
        raise ConfigError(f"model: {model!r} is not a directory")
    hint = did_you_mean(model, presets)
    from lmforge.plugins.registry import KNOWN_PROVIDERS

    for prefix, dist in KNOWN_PROVIDERS["model_families"].items():
        if model.lower().startswith(("tiny-" + prefix, prefix)) and not any(
            f.name == prefix or prefix in f.aliases for f in reg.families()
        ):
            hint = f" (presets of {prefix!r} come from {dist!r}, which is not installed)"
            break
    raise ConfigError(
        f"model: {model!r} is neither a local checkpoint directory nor a known preset{hint}; "
        "see `lmforge models` for presets"
    )


# --------------------------------------------------------------------------
# torch-side helpers


def torch_dtype(name: str | None) -> "torch.dtype":
    """``"auto"`` -> fp32 on CPU, bf16 on CUDA devices that support it; else the named dtype."""
    import torch

    if name in (None, "auto"):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"dtype: unknown dtype {name!r}; use fp32, bf16 or fp16")
    return table[name]


def check_remote_code(path: str, config: Mapping, trust_remote_code: bool) -> None:
    """Refuse a checkpoint whose config points at Python files unless remote code is trusted."""
    if trust_remote_code:
        return
    auto_map = config.get("auto_map")
    if auto_map and not _native_model_type(config.get("model_type")):
        raise LmforgeError(
            f"{path}: this checkpoint needs code from its own directory (auto_map: {auto_map}); "
            "lmforge does not execute checkpoint code unless you pass --trust-remote-code "
            "(trust_remote_code: true)"
        )


def _native_model_type(model_type: str | None) -> bool:
    if not model_type:
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def apply_long_context(config, source: ModelSource, options: LoadOptions) -> None:
    """Apply ``options.long_context`` to the transformers ``config`` a loader is about to build or load the
    model with (in place; :func:`lmforge.modeling.longctx.extend` with the family's ``extend_context``).

    Every family loader calls it once on its config object; :func:`load_model` refuses a loader that
    was given a long_context section and did not. Nothing happens without one.
    """
    if options.long_context is None:
        return
    from lmforge.modeling.longctx import extend

    options.long_context_applied = extend(config, source.family, options.long_context)


def hf_load(
    source: ModelSource,
    options: LoadOptions,
    *,
    model_class: Any = "transformers:AutoModelForCausalLM",
    config_class: Any = None,
    tokenizer_loader: Any = None,
):
    """Load a transformers causal LM and tokenizer for ``source``: the common family loader.

    Checkpoint directory: ``model_class.from_pretrained`` (safetensors, or ``.bin``
    read with ``weights_only=True`` by transformers) and the directory's
    tokenizer. Preset: a randomly initialised model from ``config_class`` (or
    ``AutoConfig.for_model``), seeded with the preset's seed so the same preset
    always gives the same weights, and the preset's tokenizer builder.
    """
    import torch
    from transformers import AutoConfig

    cls = resolve_ref(model_class)
    dtype = torch_dtype(options.dtype)
    kwargs = dict(options.model_kwargs)
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    if source.path is not None:
        check_remote_code(source.path, source.config, options.trust_remote_code)
        from lmforge.runs.artefacts import check_model_dir, unpickling_message

        check_model_dir(source.path)  # truncated/corrupt weights name their file
        import pickle

        if options.long_context is not None:  # the config is read here so the extension applies before the build
            cfg_cls = resolve_ref(config_class) if config_class is not None else AutoConfig
            config = cfg_cls.from_pretrained(source.path, trust_remote_code=options.trust_remote_code)
            apply_long_context(config, source, options)
            kwargs["config"] = config
        try:
            model = cls.from_pretrained(
                source.path, dtype=dtype, trust_remote_code=options.trust_remote_code, **kwargs
            )
        except pickle.UnpicklingError as exc:
            raise LmforgeError(unpickling_message(source.path, exc)) from None
        if tokenizer_loader is not None:  # a loader's own reader for this layout (GLM-4's native files)
            tokenizer = resolve_ref(tokenizer_loader)(source.path)
        else:
            tokenizer = load_tokenizer(source, options.trust_remote_code)
        return model, tokenizer

    preset = source.preset
    assert preset is not None
    cfg_dict = dict(preset.config)
    if config_class is not None:
        config = resolve_ref(config_class)(**{k: v for k, v in cfg_dict.items() if k != "model_type"})
    else:
        config = AutoConfig.for_model(**cfg_dict)
    if options.attn_implementation:
        config._attn_implementation = options.attn_implementation
    apply_long_context(config, source, options)
    if not preset.tiny:
        import warnings

        warnings.warn(f"preset {preset.name!r} has no weights: the model is randomly initialised", stacklevel=2)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(preset.seed)
        if hasattr(cls, "from_config"):
            # quantization_config is a from_pretrained argument: a preset has no weights to quantize
            # on load, so the PEFT method quantizes the built model itself (see the qlora method)
            skip = ("attn_implementation", "quantization_config")
            model = cls.from_config(config, dtype=dtype, **{k: v for k, v in kwargs.items() if k not in skip})
        else:
            model = cls(config).to(dtype)
    return model, load_tokenizer(source)


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False, *, path: str | None = None):
    """The tokenizer of a resolved model, without its weights: the one tokenizer-loading path.

    A preset's tokenizer builder; for a directory (``path``, default ``source.path``:
    a checkpoint, or a run directory's own tokenizer) the family's
    ``ModelFamily.tokenizer_loader`` when it has one, else ``AutoTokenizer``. The
    tokenizer gets a pad token (:func:`ensure_pad_token`). Used by the loaders
    (:func:`hf_load`, run directories), data preparation (``lmforge.data.prepare``)
    and offline packing (``lmforge data pack``).
    """
    if path is None and source.preset is not None:
        preset = source.preset
        if preset.tokenizer is None:
            raise LmforgeError(f"preset {preset.name!r} ships no tokenizer; load it from a checkpoint directory "
                               "instead")
        tok = resolve_ref(preset.tokenizer)()
    else:
        tok = load_tokenizer_dir(path or source.path, source.family, trust_remote_code)
    ensure_pad_token(tok)
    return tok


def load_tokenizer_dir(path: str, family: ModelFamily | None = None, trust_remote_code: bool = False):
    """The tokenizer saved in ``path``, read the way ``family`` says (``ModelFamily.tokenizer_loader``).

    Without a family loader, ``AutoTokenizer`` with ``trust_remote_code`` passed
    explicitly, so transformers refuses checkpoint code instead of prompting.
    """
    if family is not None and family.tokenizer_loader is not None:
        return resolve_ref(family.tokenizer_loader)(path)
    from lmforge.runs.artefacts import check_tokenizer_code

    check_tokenizer_code(path, trust_remote_code)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_model(source: ModelSource, options: LoadOptions):
    """Run the family's loader; returns ``(model, tokenizer)`` with a pad token set."""
    loader = resolve_ref(source.family.loader)
    model, tokenizer = loader(source, options)
    if options.long_context is not None and options.long_context.factor != 1.0 and options.long_context_applied is None:
        raise LmforgeError(f"long_context: the {source.family.name!r} family's loader does not apply it (it must "
                           "call lmforge.modeling.loading.apply_long_context on the model config)")
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def ensure_pad_token(tokenizer, model=None) -> None:
    """Give the tokenizer a pad token (EOS, else UNK) when it has none; padding is masked anyway."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        for cand in ("eos_token", "unk_token"):
            tok = getattr(tokenizer, cand, None)
            if tok is not None:
                tokenizer.pad_token = tok
                break
    if model is not None and getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None and gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id


def save_model(model, tokenizer, family: ModelFamily, out_dir: str) -> None:
    """Save a plain (non-PEFT) model the way its family wants it (default: ``save_pretrained``, safetensors)."""
    os.makedirs(out_dir, exist_ok=True)
    if family.saver is not None:
        resolve_ref(family.saver)(model, tokenizer, out_dir)
        return
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# --------------------------------------------------------------------------
# run directories


def read_run_config(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    from lmforge.config.schema import load_yaml

    return load_yaml(path)


def load(
    path_or_preset: str,
    adapter: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    registry=None,
    long_context=None,
):
    """Load ``(model, tokenizer)`` from a preset, a checkpoint directory or an lmforge run directory.

    A run directory (it holds ``lmforge.yaml``) is rebuilt the way it was trained:
    a full fine-tune loads its saved checkpoint; an adapter run loads its base
    model and then the method's saved weights. ``adapter`` applies a PEFT adapter
    directory (or run directory) on top. Uses the same family loader as training.

    ``long_context`` (a :class:`~lmforge.config.spec.LongContextSpec` or a ``long_context:``
    mapping) extends the model's positions on load. A run trained with one needs nothing: a
    full fine-tune's ``config.json`` carries it, and an adapter run's base is extended again
    from its ``lmforge.yaml``.
    """
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    from lmforge.runs.rundir import check_run_complete

    check_run_complete(path_or_preset)
    if os.path.isdir(path_or_preset):
        from lmforge.runs.artefacts import check_weight_files

        check_weight_files(path_or_preset)
    from lmforge.config.spec import LongContextSpec

    model, tokenizer, _ = _load_with_family(path_or_preset, trust_remote_code, dtype, attn_implementation, reg,
                                            LongContextSpec.of(long_context))
    if adapter is not None:
        model = apply_adapter(model, adapter, reg)
    model.eval()
    return model, tokenizer


def _load_with_family(path_or_preset: str, trust_remote_code: bool, dtype: str, attn: str | None, reg,
                      long_context=None):
    run_cfg = read_run_config(path_or_preset) if os.path.isdir(path_or_preset) else None
    options = LoadOptions(dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code,
                          long_context=long_context)
    if run_cfg is None or os.path.isfile(os.path.join(path_or_preset, "config.json")):
        # a checkpoint (possibly a full fine-tune run, which is a checkpoint itself)
        family = (run_cfg or {}).get("family")
        source = resolve_model(path_or_preset, family=family, registry=reg)
        model, tokenizer = load_model(source, options)
        return model, tokenizer, source.family
    method_name = (run_cfg.get("peft") or {}).get("method", "full")
    method = reg.peft_method(method_name)
    base = base_model_path(path_or_preset, run_cfg)
    if options.long_context is None and run_cfg.get("long_context"):
        # the base model is saved (or named) without the extension the adapter was trained with
        from lmforge.config.spec import LongContextSpec

        options.long_context = LongContextSpec.of(run_cfg["long_context"])
    source = resolve_model(base, family=run_cfg.get("family"), registry=reg)
    peft_options = {k: v for k, v in (run_cfg.get("peft") or {}).items() if k != "method"}
    if method.model_load_kwargs is not None:
        options.model_kwargs.update(resolve_ref(method.model_load_kwargs)(peft_options))
    model, tokenizer = load_model(source, options)
    if method.load is None:
        raise LmforgeError(f"{path_or_preset}: run of method {method_name!r} has no saved model (config.json missing)")
    model = resolve_ref(method.load)(model, path_or_preset, peft_options)
    tok_dir = path_or_preset
    if any(os.path.isfile(os.path.join(tok_dir, n)) for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        # the run's own tokenizer (it may have gained tokens); read the family's way
        tokenizer = load_tokenizer(source, trust_remote_code, path=tok_dir)
        ensure_pad_token(tokenizer, model)
    return model, tokenizer, source.family


def base_model_path(run_dir: str, run_cfg: Mapping) -> str:
    """The base model of an adapter run: its saved copy (for presets) or the configured model."""
    saved = os.path.join(run_dir, BASE_MODEL_DIR)
    if os.path.isfile(os.path.join(saved, "config.json")):
        return saved
    base = run_cfg.get("model")
    if not base:
        raise ConfigError(f"{os.path.join(run_dir, RUN_CONFIG)}: no 'model' key")
    return base


def apply_adapter(model, adapter: str, reg):
    """Apply a PEFT adapter directory, or the trained part of an lmforge run, on top of ``model``."""
    run_cfg = read_run_config(adapter)
    if run_cfg is not None:
        method = reg.peft_method((run_cfg.get("peft") or {}).get("method", "full"))
        if method.load is None:
            raise LmforgeError(f"{adapter}: a full fine-tune is a model, not an adapter; load it directly")
        opts = {k: v for k, v in (run_cfg.get("peft") or {}).items() if k != "method"}
        return resolve_ref(method.load)(model, adapter, opts)
    if os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter)
    raise LmforgeError(f"{adapter}: not an adapter directory (no adapter_config.json or lmforge.yaml)")


def family_of_run(run_dir: str, reg=None) -> ModelFamily:
    """The family an lmforge run (or checkpoint) belongs to, read without loading weights."""
    from lmforge.plugins.registry import get_registry

    reg = reg or get_registry()
    from lmforge.runs.rundir import check_run_complete

    check_run_complete(run_dir)
    run_cfg = read_run_config(run_dir)
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        return resolve_model(run_dir, family=(run_cfg or {}).get("family"), registry=reg).family
    if run_cfg is None:
        return resolve_model(run_dir, registry=reg).family
    return resolve_model(base_model_path(run_dir, run_cfg), family=run_cfg.get("family"), registry=reg).family


__all__ = [
    "ModelSource", "LoadOptions", "resolve_model", "hf_load", "apply_long_context", "load_model", "load", "save_model",
    "ensure_pad_token", "apply_adapter", "torch_dtype", "PluginError",
]
