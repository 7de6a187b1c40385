"""The one tiny-tokenizer builder reproduces every shipped tiny-preset tokenizer byte for byte.

Each plugin's ``scripts/build_tiny_tokenizer*.py`` is its corpus plus a call to
``lmforge.modeling.tiny_tokenizer``; here each writes into tmp_path and the files
must equal the ones in the plugin's ``data/``.
"""

from __future__ import annotations

import filecmp
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(plugin: str, name: str):
    path = os.path.join(ROOT, f"llm_plugins_{plugin}", "scripts", name)
    spec = importlib.util.spec_from_file_location(f"build_{plugin}_tokenizers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shipped(plugin: str, name: str) -> str:
    return os.path.join(ROOT, f"llm_plugins_{plugin}", f"llm_plugins_{plugin}", "data", name)


@pytest.mark.parametrize("plugin,name", [("llama", "build_tiny_tokenizer.py"), ("bloom", "build_tiny_tokenizer.py")])
def test_single_file_builders_reproduce_the_shipped_tokenizer(tmp_path, plugin, name):
    mod = script(plugin, name)
    mod.OUT = str(tmp_path / "tiny_tokenizer.json")
    mod.main()
    assert filecmp.cmp(mod.OUT, shipped(plugin, "tiny_tokenizer.json"), shallow=False)


@pytest.mark.parametrize("plugin,attr,files", [
    ("cpm", "DATA", ["tiny_minicpm_tokenizer.json", "tiny_minicpm3_tokenizer.json", "tiny_cpmant_vocab.txt"]),
    ("glm", "OUT", ["chatglm2.model", "ice_text.model", "cog-pretrain.model", "glm4_tiktoken.model"]),
])
def test_multi_file_builders_reproduce_the_shipped_files(tmp_path, plugin, attr, files):
    if plugin == "cpm":
        pytest.importorskip("rjieba")
    if plugin == "glm":
        pytest.importorskip("sentencepiece")
    mod = script(plugin, "build_tiny_tokenizers.py")
    setattr(mod, attr, str(tmp_path))
    mod.main()
    for name in files:
        assert filecmp.cmp(tmp_path / name, shipped(plugin, name), shallow=False), name


def test_in_memory_tiny_tokenizer_is_deterministic_and_round_trips():
    from lmforge.modeling.tiny_tokenizer import tiny_tokenizer

    specials = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"}
    a = tiny_tokenizer(specials, extra_special=["<|im_start|>"], vocab_size=512)
    b = tiny_tokenizer(specials, extra_special=["<|im_start|>"], vocab_size=512)
    assert a.get_vocab() == b.get_vocab() and len(a) <= 512
    assert [a.pad_token_id, a.eos_token_id, a.convert_tokens_to_ids("<|im_start|>")] == [0, 1, 2]
    text = "<|im_start|>user\n小明有5个苹果 and 3 pears?<|im_end|>"
    ids = a.encode(text, add_special_tokens=False)
    assert a.decode(ids) == text and ids[0] == 2 and ids[-1] == 1
