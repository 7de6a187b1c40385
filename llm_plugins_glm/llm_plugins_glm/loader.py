"""Loading and saving GLM-family checkpoints without running code from the checkpoint directory.

``load(source, options)`` is the families' loader: a preset builds a seeded random
model and the offline tokenizer; a directory is read with lmforge's own classes
(``config.json`` -> config class, weights by key, tokenizer files by name) even
when its ``config.json`` carries an ``auto_map`` pointing at THUDM's Python files,
which are never imported. A job's ``long_context`` section is applied to the config
before the model is built (core's ``apply_long_context``, the family's
:mod:`llm_plugins_glm.longctx` function), and the keys it sets are saved. ``save(model, tokenizer, out_dir)`` writes the layout
back: the original ``config.json`` (``model_type``, ``architectures``,
``auto_map`` kept), safetensors weights under the released key names, the
tokenizer files, and the directory's ``*.py`` files copied unchanged so the
result still loads with the released code.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import warnings

from lmforge.errors import LmforgeError
from lmforge.modeling.loading import LoadOptions, ModelSource, torch_dtype

from .configuration import DERIVED_KEYS, LONG_CONTEXT_KEYS
from .plugin import detect_variant

DATA = os.path.join(os.path.dirname(__file__), "data")
SOURCE_ATTR = "_lmforge_glm_source"

MODEL_CLASSES = {
    "glm": ("llm_plugins_glm.modeling_glm", "GLMForConditionalGeneration", "GLMConfig"),
    "chatglm": ("llm_plugins_glm.modeling_chatglm", "ChatGLMForConditionalGeneration", "ChatGLMConfig"),
    "chatglm2": ("llm_plugins_glm.modeling_chatglm2", "ChatGLM2ForConditionalGeneration", "ChatGLM2Config"),
}


# ------------------------------------------------------------------ tiny tokenizers


def tiny_glm_tokenizer():
    from .tokenization import GLMChineseTokenizer

    return GLMChineseTokenizer(os.path.join(DATA, "cog-pretrain.model"))


def tiny_chatglm_tokenizer():
    from .tokenization import ChatGLMTokenizer

    return ChatGLMTokenizer(os.path.join(DATA, "ice_text.model"), num_image_tokens=0)


def tiny_chatglm2_tokenizer():
    from .tokenization import ChatGLM2Tokenizer

    return ChatGLM2Tokenizer(os.path.join(DATA, "chatglm2.model"))


def tiny_chatglm3_tokenizer():
    from .tokenization import ChatGLM3Tokenizer

    return ChatGLM3Tokenizer(os.path.join(DATA, "chatglm2.model"))


def tiny_glm4_tokenizer():
    from .tokenization import GLM4Tokenizer

    return GLM4Tokenizer(os.path.join(DATA, "glm4_tiktoken.model"))


# ------------------------------------------------------------------ helpers


def _variant(source: ModelSource) -> str:
    name = source.family.name
    if name in ("glm", "chatglm", "chatglm2", "chatglm3", "glm4"):
        return name
    found = detect_variant(source.config)
    if found is None:
        raise LmforgeError(f"{source.name}: not a GLM-family config (model_type={source.config.get('model_type')!r})")
    return found


def _architecture(variant: str, config: dict) -> str:
    """Which modeling code: ``glm``, ``chatglm`` (v1 2D), ``chatglm2`` (ChatGLM2/3, GLM-4 original) or ``native``."""
    if variant == "glm":
        return "glm"
    if config.get("model_type") == "chatglm":
        return "chatglm" if config.get("position_encoding_2d") else "chatglm2"
    if variant == "glm4":
        return "native"
    raise LmforgeError(f"family {variant!r} cannot load model_type={config.get('model_type')!r}")


def _classes(arch: str):
    import importlib

    module, model_cls, cfg_cls = MODEL_CLASSES[arch]
    mod = importlib.import_module(module)
    cfg_mod = importlib.import_module("llm_plugins_glm.configuration")
    return getattr(mod, model_cls), getattr(cfg_mod, cfg_cls)


def _config_kwargs(config: dict) -> dict:
    # _name_or_path stays out of the live config: peft would look the name up on the hub when saving an adapter
    skip = {"auto_map", "torch_dtype", "dtype", "transformers_version", "model_type", "_name_or_path"}
    return {k: v for k, v in config.items() if k not in skip}


def _apply_long_context(cfg, source: ModelSource, options: LoadOptions) -> None:
    """The job's ``long_context`` section on the config about to build the model (core's ``apply_long_context``)."""
    try:
        from lmforge.modeling.loading import apply_long_context
    except ImportError:  # core without long-context support (before i-lc-core is merged): nothing to apply
        return
    apply_long_context(cfg, source, options)


def _check_supported(config: dict, where: str) -> None:
    if config.get("quantization_bit"):
        raise LmforgeError(f"{where}: quantization_bit={config['quantization_bit']} checkpoints (THUDM int4/int8 "
                           "kernels) are not supported; load the full-precision release")


def _fill_glm_ids(model, tokenizer) -> None:
    """GLM v1 builds block positions from ids its released config does not hold: take them from the tokenizer."""
    cfg = model.config
    if getattr(cfg, "sop_token_id", None) is None:
        cfg.sop_token_id = tokenizer.sop_token_id
    if not getattr(cfg, "mask_token_ids", None):
        cfg.mask_token_ids = [tokenizer.mask_token_id, tokenizer.smask_token_id, tokenizer.gmask_token_id]


def _warn_variant_mismatch(path: str, variant: str, tokenizer) -> None:
    """ChatGLM2 and ChatGLM3 configs look alike; the directory's tokenizer code tells them apart."""
    code = os.path.join(path, "tokenization_chatglm.py")
    has_roles = False
    if os.path.isfile(code):
        with open(code, encoding="utf-8", errors="replace") as f:
            has_roles = "<|user|>" in f.read()
    cfg = {}
    if os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    has_roles = has_roles or "<|user|>" in json.dumps(cfg.get("chat_template", ""))
    if variant == "chatglm2" and has_roles:
        warnings.warn(f"{path}: loaded as ChatGLM2, but its tokenizer has ChatGLM3 role tokens; "
                      "set `family: chatglm3` to use ChatGLM3's prompt format", stacklevel=3)


# ------------------------------------------------------------------ loading


def load(source: ModelSource, options: LoadOptions):
    """``(model, tokenizer)`` for a GLM-family preset or checkpoint directory (no checkpoint code is executed)."""
    variant = _variant(source)
    config = dict(source.config)
    arch = _architecture(variant, config)
    if arch == "native":
        return _load_native(source, options, variant)
    model_cls, cfg_cls = _classes(arch)
    dtype = torch_dtype(options.dtype)
    where = source.name
    _check_supported(config, where)
    if source.path is not None:
        from .tokenization import load_tokenizer

        tok_variant = "chatglm3" if variant == "chatglm3" else variant
        tokenizer = load_tokenizer(source.path, tok_variant)
        if variant == "chatglm2":
            _warn_variant_mismatch(source.path, variant, tokenizer)
        cfg = cfg_cls(**_config_kwargs(config))
        _apply_long_context(cfg, source, options)
        kwargs = {k: v for k, v in options.model_kwargs.items() if k != "attn_implementation"}
        model = model_cls.from_pretrained(source.path, config=cfg, dtype=dtype, **kwargs)
    else:
        import torch

        from lmforge.plugins.descriptors import resolve_ref

        preset = source.preset
        if preset.tokenizer is None:
            raise LmforgeError(f"preset {preset.name!r} has no weights or tokenizer; it only carries the "
                               "published architecture numbers (for `lmforge estimate`)")
        cfg = cfg_cls(**_config_kwargs(config))
        _apply_long_context(cfg, source, options)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(preset.seed)
            model = model_cls(cfg).to(dtype)
        tokenizer = resolve_ref(preset.tokenizer)()
    if arch == "glm":
        _fill_glm_ids(model, tokenizer)
    setattr(model, SOURCE_ATTR, {"config": copy.deepcopy(config), "path": source.path, "variant": variant})
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _load_native(source: ModelSource, options: LoadOptions, variant: str):
    """GLM-4 in transformers' layout: transformers' own classes; tokenizer.json, or the tiktoken file."""
    from lmforge.modeling.loading import hf_load

    mt = source.config.get("model_type")
    model_class = "transformers:Glm4ForCausalLM" if mt == "glm4" else "transformers:GlmForCausalLM"
    config_class = "transformers:Glm4Config" if mt == "glm4" else "transformers:GlmConfig"
    model, tokenizer = hf_load(source, options, model_class=model_class, config_class=config_class,
                               tokenizer_loader="llm_plugins_glm.loader:_native_tokenizer")
    setattr(model, SOURCE_ATTR, {"config": copy.deepcopy(dict(source.config)), "path": source.path,
                                 "variant": variant, "native": True})
    return model, tokenizer


def _native_tokenizer(path: str):
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from .tokenization import load_tokenizer

    return load_tokenizer(path, "glm4")


# ------------------------------------------------------------------ saving


def _released_config(model) -> dict:
    """``config.json`` to write: the source one (values refreshed from the model) without lmforge-derived keys."""
    source = getattr(model, SOURCE_ATTR, None) or {}
    current = model.config.to_dict()
    original = source.get("config")
    if original is None:
        out = {k: v for k, v in current.items() if not k.startswith("_")}
    else:
        out = copy.deepcopy(original)
        for key in list(out):
            if key in current and key not in ("architectures", "auto_map", "model_type", "_name_or_path",
                                              "torch_dtype", "dtype", "transformers_version"):
                out[key] = current[key]
    for key in DERIVED_KEYS:
        if original is None or key not in original:
            out.pop(key, None)
    if original is not None:  # a long_context extension sets keys the released config may lack
        defaults = type(model.config)().to_dict()
        for key in LONG_CONTEXT_KEYS:
            if key not in out and key in current and current[key] != defaults.get(key):
                out[key] = current[key]
    dtype = str(model.dtype).replace("torch.", "")
    if "dtype" in out and "torch_dtype" not in out:
        out["dtype"] = dtype
    else:
        out["torch_dtype"] = dtype
        out.pop("dtype", None)
    return out


def save(model, tokenizer, out_dir: str) -> None:
    """Write a GLM-family model in its released layout (see the module docstring)."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        raise LmforgeError("save() writes full checkpoints; merge the adapter first (peft models save their adapter)")
    os.makedirs(out_dir, exist_ok=True)
    source = getattr(model, SOURCE_ATTR, None) or {}
    model.save_pretrained(out_dir, safe_serialization=True)
    if source.get("native"):
        tokenizer.save_pretrained(out_dir)
        return
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(_released_config(model), f, indent=2, ensure_ascii=False)
        f.write("\n")
    stray = os.path.join(out_dir, "generation_config.json")
    src = source.get("path")
    if os.path.isfile(stray) and not (src and os.path.isfile(os.path.join(src, "generation_config.json"))):
        os.remove(stray)
    tokenizer.save_pretrained(out_dir)
    if src and os.path.isdir(src) and os.path.abspath(src) != os.path.abspath(out_dir):
        # the released code and auxiliary tokenizer files travel with the checkpoint (copied, never run)
        for path in glob.glob(os.path.join(src, "*.py")):
            shutil.copy2(path, out_dir)
        for name in ("added_tokens.json", "special_tokens_map.json", "generation_config.json"):
            if os.path.isfile(os.path.join(src, name)) and not os.path.isfile(os.path.join(out_dir, name)):
                shutil.copy2(os.path.join(src, name), out_dir)


# ------------------------------------------------------------------ tokenizer only (no weights)


def load_tokenizer_dir(path: str, variant: str):
    """The tokenizer of a checkpoint or lmforge run directory for a GLM variant, without loading weights.

    For a core hook that loads a family's tokenizer from a directory (adapter runs,
    ``lmforge data``) instead of ``AutoTokenizer``, which reads ``tokenizer.model`` as
    a generic sentencepiece/tiktoken tokenizer and prompts for remote code when
    ``tokenizer_config.json`` has an ``auto_map``.
    """
    if variant == "glm4" and os.path.isfile(os.path.join(path, "tokenizer.json")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    from .tokenization import load_tokenizer

    return load_tokenizer(path, variant)


def glm_tokenizer(path: str):
    return load_tokenizer_dir(path, "glm")


def chatglm_tokenizer(path: str):
    return load_tokenizer_dir(path, "chatglm")


def chatglm2_tokenizer(path: str):
    return load_tokenizer_dir(path, "chatglm2")


def chatglm3_tokenizer(path: str):
    return load_tokenizer_dir(path, "chatglm3")


def glm4_tokenizer(path: str):
    return load_tokenizer_dir(path, "glm4")
