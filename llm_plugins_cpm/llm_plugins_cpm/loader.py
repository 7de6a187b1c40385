"""Loading and saving CPM-Ant, MiniCPM 1/2 (and 9G) and MiniCPM3; tiny-preset tokenizers.

Imports torch/transformers only inside functions, so the registration module can
reference everything here by ``"module:attr"`` strings. Nothing here executes code
from a checkpoint directory: released MiniCPM configs name their own Python files in
``auto_map``; this plugin ignores them and uses its own classes.
"""

from __future__ import annotations

import json
import os
import shutil

from lmforge.modeling.loading import LoadOptions, ModelSource, apply_long_context, hf_load, torch_dtype

DATA = os.path.join(os.path.dirname(__file__), "data")
MINICPM_MODELING = "llm_plugins_cpm.minicpm_modeling"


# --------------------------------------------------------------------------
# tokenizers


def tiny_minicpm_tokenizer():
    """tiny-minicpm: byte-level BPE with MiniCPM's <s>/</s> ids and the <用户>/<AI> chat markers."""
    from lmforge.modeling.tiny_tokenizer import load_tokenizer_file

    return load_tokenizer_file(os.path.join(DATA, "tiny_minicpm_tokenizer.json"), bos_token="<s>",
                               eos_token="</s>", unk_token="<unk>", extra_special_tokens=["<用户>", "<AI>"])


def tiny_minicpm3_tokenizer():
    """tiny-minicpm3: byte-level BPE whose EOS is ChatML's <|im_end|>, as in MiniCPM3's tokenizer."""
    from lmforge.modeling.tiny_tokenizer import load_tokenizer_file

    return load_tokenizer_file(os.path.join(DATA, "tiny_minicpm3_tokenizer.json"), bos_token="<s>",
                               eos_token="<|im_end|>", unk_token="<unk>",
                               extra_special_tokens=["<|im_start|>", "<|im_end|>"])


def tiny_cpmant_tokenizer():
    """tiny-cpmant: transformers' real ``CpmAntTokenizer`` (needs ``rjieba``) on a small shipped vocab.txt."""
    from llm_plugins_cpm.cpmant_tokenizer import CpmAntTokenizer

    return CpmAntTokenizer(vocab_file=os.path.join(DATA, "tiny_cpmant_vocab.txt"))


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_local_tokenizer(path: str):
    """The tokenizer of a checkpoint directory, without running code from it.

    Released MiniCPM3 tokenizers name a custom class in ``auto_map`` (a LLaMA
    sentencepiece tokenizer underneath); CPM-Ant ships ``vocab.txt``. Order:
    ``vocab.txt`` -> ``CpmAntTokenizer`` (this plugin's save-safe subclass); no ``auto_map`` -> ``AutoTokenizer``;
    otherwise ``tokenizer.json`` -> ``PreTrainedTokenizerFast``, ``tokenizer.model``
    -> ``LlamaTokenizer`` (special tokens from ``tokenizer_config.json``).
    """
    from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast

    cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
    if os.path.isfile(os.path.join(path, "vocab.txt")) and str(cfg.get("tokenizer_class", "CpmAnt")).startswith("CpmAnt"):
        from llm_plugins_cpm.cpmant_tokenizer import CpmAntTokenizer

        return CpmAntTokenizer.from_pretrained(path)
    if not cfg.get("auto_map"):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return PreTrainedTokenizerFast.from_pretrained(path)
    if os.path.isfile(os.path.join(path, "tokenizer.model")):
        return LlamaTokenizer.from_pretrained(path)
    raise FileNotFoundError(f"{path}: no tokenizer.json, tokenizer.model or vocab.txt to load a tokenizer from")


# --------------------------------------------------------------------------
# CPM-Ant and MiniCPM3: transformers' own models


def load_cpmant(source: ModelSource, options: LoadOptions):
    """CPM-Ant from a checkpoint directory or preset, as this plugin's training-ready ``CpmAntForCausalLM``."""
    return hf_load(source, options, model_class="llm_plugins_cpm.cpmant_modeling:CpmAntForCausalLM",
                   config_class="transformers:CpmAntConfig", tokenizer_loader=load_local_tokenizer)


def load_minicpm3(source: ModelSource, options: LoadOptions):
    """MiniCPM3 through transformers' native ``MiniCPM3ForCausalLM`` (the checkpoint's auto_map is ignored)."""
    return hf_load(source, options, model_class="transformers:MiniCPM3ForCausalLM",
                   config_class="transformers:MiniCPM3Config", tokenizer_loader=load_local_tokenizer)


def extend_minicpm3(config, lc) -> None:
    """``long_context`` for MiniCPM3: transformers' RoPE scaling of the rotary half of its latent attention.

    The released MiniCPM3 configs already use LongRoPE (per-dimension factors searched for their 32K
    window); new LongRoPE factors cannot be derived for another length without that search, and
    transformers applies one ``rope_type``, so such a config is refused rather than overwritten.
    """
    from lmforge.errors import CapabilityError
    from lmforge.modeling.longctx import rope_parameters, rope_scaling

    if rope_parameters(config).get("rope_type") == "longrope":
        raise CapabilityError("long_context: this MiniCPM3 config already uses LongRoPE (factors searched for its "
                              f"{getattr(config, 'max_position_embeddings', '?')}-token window); lmforge keeps it as "
                              "released and does not stack another scaling or search new LongRoPE factors")
    rope_scaling(config, lc)


# --------------------------------------------------------------------------
# MiniCPM 1/2 and 9G: this plugin's architecture


def load_minicpm(source: ModelSource, options: LoadOptions):
    """MiniCPM 1/2 or a 9G model: this plugin's ``MiniCPMForCausalLM`` with the released weights.

    A directory is read with the released state-dict keys (``pytorch_model.bin`` or
    safetensors); a missing ``lm_head.weight`` is the tied embedding matrix. A config
    without ``model_type`` (as released) is read as ``minicpm``.
    """
    from llm_plugins_cpm.minicpm_modeling import MiniCPMConfig, MiniCPMForCausalLM

    if source.path is None:
        return hf_load(source, options, model_class=MiniCPMForCausalLM, config_class=MiniCPMConfig)
    cfg = {k: v for k, v in source.config.items() if k not in ("model_type", "auto_map")}
    config = MiniCPMConfig(**cfg)
    if source.config.get("auto_map"):
        config.auto_map = dict(source.config["auto_map"])  # written back by the saver
    if options.attn_implementation:
        config._attn_implementation = options.attn_implementation
    apply_long_context(config, source, options)
    kwargs = {k: v for k, v in options.model_kwargs.items()}
    model = MiniCPMForCausalLM.from_pretrained(source.path, config=config, dtype=torch_dtype(options.dtype), **kwargs)
    return model, load_local_tokenizer(source.path)


def save_minicpm(model, tokenizer, out_dir: str) -> None:
    """Save in the released layout: released keys, no tied ``lm_head``, released config keys.

    ``config.json`` keeps ``architectures: ["MiniCPMForCausalLM"]`` and the source's
    ``auto_map``, and also carries ``rope_theta``/``rope_scaling`` (what the released
    code reads) besides transformers 5's ``rope_parameters``. The Python files that
    ``auto_map`` names are copied from the source directory when it has them, so the
    output still loads with the released code too.
    """
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "config.json")
    cfg = _read_json(cfg_path)
    cfg["architectures"] = ["MiniCPMForCausalLM"]
    rope = dict(cfg.get("rope_parameters") or {})
    if rope:
        cfg["rope_theta"] = rope.pop("rope_theta", 10000.0)
        kind = rope.pop("rope_type", "default")
        cfg["rope_scaling"] = None if kind == "default" else {"type": kind, **rope}
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    src = getattr(model.config, "_name_or_path", "") or ""
    if cfg.get("auto_map") and os.path.isdir(src) and os.path.abspath(src) != os.path.abspath(out_dir):
        for ref in cfg["auto_map"].values():
            for r in ref if isinstance(ref, list) else [ref]:
                if isinstance(r, str) and "." in r:
                    py = r.split("--")[-1].rsplit(".", 1)[0] + ".py"
                    if os.path.isfile(os.path.join(src, py)):
                        shutil.copy2(os.path.join(src, py), os.path.join(out_dir, py))
