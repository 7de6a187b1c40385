"""Loading BLOOM checkpoints and building the tiny preset (imports torch/transformers)."""

from __future__ import annotations

import os

from lmforge.modeling.loading import LoadOptions, ModelSource, hf_load

TOKENIZER_FILE = os.path.join(os.path.dirname(__file__), "data", "tiny_tokenizer.json")


def tiny_tokenizer():
    """The tiny-bloom tokenizer: byte-level BPE shipped with this package, BLOOM's special-token ids."""
    from lmforge.modeling.tiny_tokenizer import load_tokenizer_file

    return load_tokenizer_file(TOKENIZER_FILE, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def load(source: ModelSource, options: LoadOptions):
    """A BLOOM/BLOOMZ model and tokenizer from a local checkpoint directory or a preset.

    The model is :class:`llm_plugins_bloom.modeling.BloomForCausalLM`: transformers'
    class with per-sample ALiBi for packed batches; weights and saved files are unchanged.
    """
    return hf_load(
        source,
        options,
        model_class="llm_plugins_bloom.modeling:BloomForCausalLM",
        config_class="transformers:BloomConfig",
    )


def extend(config, lc) -> None:
    """``long_context`` for BLOOM (``method: family``): ALiBi has no position table, so nothing is rescaled.

    ALiBi adds ``-slope_h * distance`` to the attention scores; the bias is a linear function of the
    distance, defined for every length, so a longer sequence extrapolates it rather than leaving a
    table. The extension only raises ``seq_length`` (the length lmforge and generation read as the
    model's window) to ``factor x original``; the weights and the bias are those of the checkpoint.
    Other methods (linear, dynamic, yarn, llama3, ntk) rescale RoPE frequencies BLOOM does not have.
    """
    from lmforge.errors import CapabilityError, ConfigError

    if lc.method != "family":
        raise CapabilityError(f"long_context.method: {lc.method!r} rescales rotary (RoPE) frequencies, which BLOOM "
                              "does not have (ALiBi: a linear distance bias that extrapolates as it is); use "
                              "method: family, which only raises seq_length")
    factor = float(lc.factor)
    if not factor > 1.0:
        raise ConfigError(f"long_context.factor: must be greater than 1 to extend the context, got {lc.factor!r}")
    orig = lc.original_max_position
    if not isinstance(orig, int) or isinstance(orig, bool) or orig <= 0:
        orig = getattr(config, "seq_length", None)
    if not isinstance(orig, int) or orig <= 0:
        raise ConfigError("long_context.original_max_position: the BLOOM config has no seq_length; set it to a number")
    config.seq_length = int(round(factor * orig))
