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
