"""lmforge.testing's conformance suites on the built-in plugins, and on broken plugins they must refuse.

Family suites run in each family plugin's own tests (llm_plugins_*/tests/test_conformance.py).
Here: every built-in data format, two PEFT methods (the rest slow), and for each
suite a plugin with one planted defect, which must fail naming the check.
"""

from __future__ import annotations

import types
from functools import partial

import pytest

from lmforge import hookimpl
from lmforge.plugins.descriptors import ChatTemplate, DataFormat, Example, Message, ModelFamily, Option, PeftMethod, Preset
from lmforge.plugins.registry import PluginRecord, Registry, get_registry, set_registry
from lmforge.testing import ConformanceError, check_data_format, check_family, check_peft_method

torch = pytest.importorskip("torch")



@pytest.fixture
def with_plugin():
    """Install plugin hook functions into a fresh registry (entry points + them) for the test."""

    def install(**hooks):
        reg = Registry()
        reg.load_entry_points()
        mod = types.ModuleType("planted_defect")
        for hook, fn in hooks.items():
            setattr(mod, hook, hookimpl(fn))
        reg.add_plugin(mod, PluginRecord(entry_point="planted", module="planted_defect", distribution="planted",
                                         version="0"))
        set_registry(reg)
        return reg

    yield install
    set_registry(None)


@pytest.mark.parametrize("name", sorted(get_registry().names("data_formats")))
def test_every_builtin_data_format_conforms(name):
    report = check_data_format(name)
    assert [c for c, _ in report.passed] == ["registered", "detect", "convert", "file round trip", "encoding"]


@pytest.mark.parametrize("method,options,lr", [
    ("lora", {}, 1e-2),
    pytest.param("prefix", {"num_virtual_tokens": 8}, 1e-1, marks=pytest.mark.slow),
    pytest.param("bitfit", {"add_biases": True}, 3e-2, marks=pytest.mark.slow),
])
def test_builtin_peft_methods_conform(method, options, lr, tmp_path):
    check_peft_method(method, options=options, lr=lr, workdir=str(tmp_path))


# ------------------------------------------------------------------ the suites have teeth

def _llama_like(name, template, model_type=None):
    cfg = dict(get_registry().find_preset("tiny-llama")[1].config, model_type=model_type or name)
    from lmforge.modeling.loading import hf_load

    return ModelFamily(
        name=name, model_types=(model_type or name,),
        loader=partial(hf_load, model_class="transformers:LlamaForCausalLM", config_class="transformers:LlamaConfig"),
        arch_from_config=get_registry().family("llama").arch_from_config,
        presets=(Preset(f"tiny-{name}", cfg, tiny=True, tokenizer="llm_plugins_llama.loader:tiny_tokenizer"),),
        chat_template=template)


def test_family_whose_preset_another_family_claims_fails_presets(with_plugin):
    pytest.importorskip("llm_plugins_llama")
    fam = _llama_like("shadow", ChatTemplate(name="plain"), model_type="llama")
    with_plugin(register_model_families=lambda register: register(fam))
    with pytest.raises(ConformanceError, match="'presets': preset 'tiny-shadow': .* would load as family 'llama'"):
        check_family("shadow")


def test_family_whose_template_splits_a_bpe_merge_fails_template(with_plugin):
    pytest.importorskip("llm_plugins_llama")
    spacey = ChatTemplate(name="spacey", user="User: {content}\n", assistant_prefix="Assistant: ")
    fam = _llama_like("spacey", spacey)
    with_plugin(register_model_families=lambda register: register(fam))
    with pytest.raises(ConformanceError, match="'template': apply_chat_template .* training renders"):
        check_family("spacey")


def test_format_that_claims_every_record_fails_detect(with_plugin):
    greedy = DataFormat(name="greedy", detect=lambda r: True,
                        convert=lambda r: [Example(messages=(Message("user", r["q"]), Message("assistant", r["a"])))])
    with_plugin(register_data_formats=lambda register: register(greedy))
    with pytest.raises(ConformanceError, match=r"data format 'greedy' .* 'detect': detect\(\) claims the unrelated"):
        check_data_format("greedy", [{"q": "x", "a": "y"}])


def test_peft_method_with_an_undocumented_option_fails_options(with_plugin):
    method = PeftMethod(name="mute", apply="lmforge_builtins.peft.full:apply", options=(Option("rank", int, 8),),
                        capability="full")
    with_plugin(register_peft_methods=lambda register: register(method))
    with pytest.raises(ConformanceError, match="'options': option 'rank' has no help text"):
        check_peft_method("mute")
