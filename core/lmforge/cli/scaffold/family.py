"""``lmforge plugin new NAME --kind family``: a model family with a tiny offline preset.

The family is LLaMA's architecture under its own ``model_type`` (``NAME``), so a
checkpoint it saves loads back as this family; replace the classes in
``modeling.py`` with your architecture's.
"""

TESTS = "runs lmforge.testing.check_family on tiny-$name"
TEST_DEPS = ""

FILES = {
    "$pkg/plugin.py": '''"""Registers the $name model family (pure Python: no torch at import)."""

from lmforge import hookimpl
from lmforge.modeling.arch import llama_arch
from lmforge.plugins.descriptors import ChatTemplate, ModelFamily, Preset, supported

TINY = {
    "model_type": "$name", "architectures": ["${cls}ForCausalLM"], "vocab_size": 1024, "hidden_size": 64,
    "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
}

FAMILY = ModelFamily(
    name="$name",
    description="$name (LLaMA layout under model_type $name)",
    model_types=("$name",),
    architectures=("${cls}ForCausalLM",),
    loader="$pkg.modeling:load",
    arch_from_config=llama_arch,
    presets=(Preset("tiny-$name", TINY, "2-layer random $name for tests", tiny=True,
                    tokenizer="$pkg.modeling:tiny_tokenizer"),),
    default_lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    # prompt pieces end on a newline, not a space: byte-level BPE would merge " b" across the
    # boundary when the whole text is tokenized at once (check_family's template check catches it)
    chat_template=ChatTemplate(name="$ident", system="{content}\\n", user="### User:\\n{content}\\n",
                               assistant_prefix="### Assistant:\\n"),
    special_tokens={"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"},
    capabilities={"lora": supported(), "full": supported(), "gradient_checkpointing": supported(),
                  "packing": supported()},
)


@hookimpl
def register_model_families(register):
    register(FAMILY)
''',
    "$pkg/modeling.py": '''"""The $name model classes, its loader and its tiny tokenizer (imports torch/transformers)."""

from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lmforge.modeling.loading import hf_load
from lmforge.modeling.tiny_tokenizer import tiny_tokenizer as train_tiny_tokenizer


class ${cls}Config(LlamaConfig):
    model_type = "$name"


class ${cls}ForCausalLM(LlamaForCausalLM):
    config_class = ${cls}Config


AutoConfig.register("$name", ${cls}Config, exist_ok=True)
AutoModelForCausalLM.register(${cls}Config, ${cls}ForCausalLM, exist_ok=True)


def load(source, options):
    return hf_load(source, options, model_class=${cls}ForCausalLM, config_class=${cls}Config)


def tiny_tokenizer():
    """A byte-level BPE trained in memory (ids 0-3: <unk> <s> </s> <pad>, as in the tiny preset)."""
    return train_tiny_tokenizer({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
''',
    "tests/test_conformance.py": '''"""lmforge's conformance suite on this family's tiny preset."""

from lmforge.testing import check_family


def test_family_conforms(tmp_path):
    report = check_family("$name", workdir=str(tmp_path))
    assert not [c for c, _ in report.skipped], report.summary()
''',
}
