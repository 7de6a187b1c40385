"""Every built-in PEFT method, end to end on tiny-llama.

Each method trains for a few steps on top of ``trained_tiny_llama`` (a briefly
fully fine-tuned base, see conftest.py) on a task the base has not seen, and we
check, per method: exactly the intended parameters train; the validation loss
falls clearly; the run directory reloads to the same logits; generation works
from it (API and CLI); ``checkpoint-N`` resumes to the same final model; and,
for mergeable methods, ``lmforge merge`` writes a plain checkpoint with the
same logits. Each method is trained once per module and shared by its tests.
"""

from __future__ import annotations

import json
import os

import pytest

from lmforge_testing import torch_threads, write_comparison_task

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)

LAYERS = range(4)  # tiny-llama
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
STEPS, CHECKPOINT = 20, 16
PROBE = "Which is larger, 12 or 40?"

# per method: options, learning rate, and the largest eval-loss ratio (after / before) we accept.
# Measured ratios on this set-up are in docs/peft.md; the bounds leave room for run-to-run noise.
SETUP = {
    "full": ({}, 2e-3, 0.3),
    "freeze": ({}, 5e-3, 0.5),
    "lora": ({}, 5e-3, 0.5),
    "dora": ({}, 5e-3, 0.5),
    "qlora": ({}, 5e-3, 0.5),
    "adalora": ({"init_r": 8, "target_r": 4}, 1e-2, 0.6),
    "ia3": ({}, 1e-1, 0.7),
    "prefix": ({}, 1e-1, 0.75),
    "prompt": ({}, 1e-1, 0.8),
    "ptuning": ({"encoder_hidden_size": 128}, 3e-2, 0.85),
    "bitfit": ({"add_biases": True}, 3e-2, 0.7),
    "unipelt": ({}, 5e-3, 0.55),
}
METHODS = list(SETUP)


def _base_names(prefix: str = "") -> set[str]:
    names = {f"{prefix}model.embed_tokens.weight", f"{prefix}model.norm.weight", f"{prefix}lm_head.weight"}
    for i in LAYERS:
        names |= {f"{prefix}model.layers.{i}.{m}.weight" for m in LINEARS}
        names |= {f"{prefix}model.layers.{i}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")}
    return names


def _adapted(suffixes, modules=LINEARS, prefix="base_model.model.") -> set[str]:
    return {f"{prefix}model.layers.{i}.{m}.{s}" for i in LAYERS for m in modules for s in suffixes}


def _unipelt_names() -> set[str]:
    out = set()
    for i in LAYERS:
        layer = f"model.layers.{i}"
        for proj in ("q_proj", "v_proj"):
            out |= {f"{layer}.self_attn.{proj}.{n}" for n in
                    ("lora_A.weight", "lora_B.weight", "lora_gate.weight", "lora_gate.bias")}
        out |= {f"{layer}.mlp.{n}.{w}" for n in ("adapter_down", "adapter_up", "adapter_gate") for w in ("weight", "bias")}
        out |= {f"{layer}.self_attn.unipelt_prefix.{n}" for n in
                ("prefix_key", "prefix_value", "prefix_gate.weight", "prefix_gate.bias")}
    return out


EXPECTED_TRAINABLE = {
    "full": _base_names(),
    "freeze": {n for n in _base_names() if n.startswith(("model.layers.2.", "model.layers.3."))},
    "lora": _adapted(("lora_A.default.weight", "lora_B.default.weight")),
    "dora": _adapted(("lora_A.default.weight", "lora_B.default.weight", "lora_magnitude_vector.default.weight")),
    "qlora": _adapted(("lora_A.default.weight", "lora_B.default.weight")),
    "adalora": _adapted(("lora_A.default", "lora_B.default", "lora_E.default")),
    "ia3": _adapted(("ia3_l.default",), ("self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")),
    "prefix": {"prompt_encoder.default.embedding.weight"},
    "prompt": {"prompt_encoder.default.embedding.weight"},
    "ptuning": {"prompt_encoder.default.embedding.weight"}
    | {f"prompt_encoder.default.mlp_head.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")},
    "bitfit": _adapted(("bias",), prefix=""),
    "unipelt": _unipelt_names(),
}


# --------------------------------------------------------------------------
# one training run per method, shared by the tests below


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("comparison-task")
    return {"train": write_comparison_task(str(root / "train.jsonl"), 256, seed=0),
            "valid": write_comparison_task(str(root / "valid.jsonl"), 8, seed=1)}


def _probe_logits(model, tokenizer):
    ids = torch.tensor([tokenizer.encode(PROBE)])
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float().cpu()


def _train(method, base, task, out, monkeypatch, steps=STEPS, **extra):
    """Run the real pipeline; return (TrainResult, logits of the in-memory final model on PROBE)."""
    import lmforge.train.pipeline as training
    from lmforge.api import FineTune

    captured = {}
    original = training.save_outputs

    def save_and_probe(model, tokenizer, *args, **kwargs):
        original(model, tokenizer, *args, **kwargs)
        captured["logits"] = _probe_logits(model, tokenizer)

    options, lr, _ = SETUP[method]
    with monkeypatch.context() as m:
        m.setattr(training, "save_outputs", save_and_probe)
        result = FineTune(model=base).train_local(
            train_fpath=task["train"], validation_fpath=task["valid"], output_dir=out, peft=method,
            peft_options=dict(options), max_steps=steps, save_steps=CHECKPOINT, eval_strategy="no",
            max_length=40, per_device_train_batch_size=8, learning_rate=lr, lr_scheduler_type="constant",
            warmup_steps=0, report_to=[], logging_steps=5, disable_tqdm=True, seed=0, **extra,
        )
    return result, captured["logits"]


class Runs:
    def __init__(self, base, task, root, monkeypatch_factory):
        self.base, self.task, self.root = base, task, root
        self.monkeypatch_factory = monkeypatch_factory
        self.cache: dict = {}

    def get(self, method: str) -> dict:
        if method not in self.cache:
            out = str(self.root / method)
            mp = self.monkeypatch_factory()
            try:
                result, logits = _train(method, self.base, self.task, out, mp)
            finally:
                mp.undo()
            self.cache[method] = {"dir": out, "result": result, "logits": logits}
        return self.cache[method]


@pytest.fixture(scope="module")
def runs(trained_tiny_llama, task, tmp_path_factory) -> Runs:
    return Runs(trained_tiny_llama, task, tmp_path_factory.mktemp("peft-runs"), pytest.MonkeyPatch)


# --------------------------------------------------------------------------
# per method


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_exactly_its_parameters_and_loss_falls(method, runs):
    run = runs.get(method)
    res = run["result"]
    with open(os.path.join(run["dir"], "trainable_params.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert set(report["trainable_names"]) == EXPECTED_TRAINABLE[method]
    assert report["trainable_params"] == res.params["trainable_params"] > 0
    assert report["trainable_percent"] == pytest.approx(100 * report["trainable_params"] / report["total_params"],
                                                        abs=1e-3)
    if method != "full":
        assert report["trainable_params"] < report["total_params"]
    bound = SETUP[method][2]
    assert res.eval_loss_after < bound * res.eval_loss_before, (method, res.eval_loss_before, res.eval_loss_after)


@pytest.mark.parametrize("method", METHODS)
def test_run_dir_reloads_to_identical_logits_and_generates(method, runs):
    import lmforge
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli
    from lmforge.inference.generation import Completion

    run = runs.get(method)
    model, tokenizer = lmforge.load(run["dir"])
    torch.testing.assert_close(_probe_logits(model, tokenizer), run["logits"], atol=1e-5, rtol=1e-5)

    completion = Completion(run["dir"])
    result = completion.generate("Which is larger, 3 or 8?", max_new_tokens=6)
    assert result.finish_reasons[0] in ("stop", "length") and (result.token_ids[0] or result.finish_reasons[0] == "stop")
    # a left-padded batch generates what each prompt generates alone (virtual tokens included)
    prompts = ["Which is larger, 3 or 8?", "Which is larger, 91 or 17? Answer carefully please.", "2 plus 2?"]
    batch = [r.text for r in completion.generate_batch(prompts, max_new_tokens=6)]
    assert batch == [completion.generate(p, max_new_tokens=6).text for p in prompts]
    cli = CliRunner().invoke(build_cli(), ["generate", run["dir"], "Which is larger, 3 or 8?",
                                           "--max-new-tokens", "6", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)[0]["text"] == result.text


PEFT_FORMAT = ["lora", "dora", "qlora", "adalora", "ia3", "prefix", "prompt", "ptuning"]
TRAINED_TENSORS = ["freeze", "bitfit", "unipelt"]


@pytest.mark.parametrize("method", PEFT_FORMAT + TRAINED_TENSORS)
def test_run_dir_holds_only_the_trained_part(method, runs):
    from safetensors import safe_open

    run = runs.get(method)
    files = set(os.listdir(run["dir"]))
    assert "model.safetensors" not in files and "config.json" not in files
    if method in TRAINED_TENSORS:
        with safe_open(os.path.join(run["dir"], "trained_weights.safetensors"), "pt") as f:
            assert set(f.keys()) == EXPECTED_TRAINABLE[method]
        with open(os.path.join(run["dir"], "lmforge_peft.json"), encoding="utf-8") as f:
            assert json.load(f)["method"] == method
        return
    # peft's own format: plain peft loads it onto the plain base and computes the same logits
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(runs.base, dtype=torch.float32, **kwargs)
    for m in base.modules():  # as lmforge does on CPU (see qlora.keep_weights_unpacked)
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    model = PeftModel.from_pretrained(base, run["dir"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run["dir"])
    torch.testing.assert_close(_probe_logits(model, tokenizer), run["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_resume_from_checkpoint_reaches_the_same_model(method, runs, tmp_path, monkeypatch):
    run = runs.get(method)
    checkpoint = os.path.join(run["dir"], f"checkpoint-{CHECKPOINT}")
    assert os.path.isdir(checkpoint)
    result, logits = _train(method, runs.base, runs.task, str(tmp_path / "resumed"), monkeypatch,
                            resume_from_checkpoint=checkpoint)
    assert result.global_step == STEPS
    torch.testing.assert_close(logits, run["logits"], atol=1e-4, rtol=1e-4)


MERGEABLE = ["lora", "dora", "ia3", "qlora", "adalora", "freeze"]


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_writes_a_plain_checkpoint_with_base_plus_adapter_logits(method, runs, tmp_path):
    import lmforge
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from lmforge.cli.main import build_cli

    run = runs.get(method)
    out = str(tmp_path / "merged")
    cli = CliRunner().invoke(build_cli(), ["merge", run["dir"], "-o", out])
    assert cli.exit_code == 0, cli.output
    assert not os.path.exists(os.path.join(out, "adapter_config.json"))
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        assert "quantization_config" not in json.load(f)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in n or "ia3" in n for n, _ in plain.named_parameters())
    model, tokenizer = lmforge.load(run["dir"])
    torch.testing.assert_close(_probe_logits(plain, tokenizer), _probe_logits(model, tokenizer), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["qlora", "freeze", "bitfit", "unipelt", "prefix"])
def test_preset_runs_keep_their_base_and_reload_identically(method, task, tmp_path, monkeypatch):
    """A preset has no directory: the run saves its base next to the adapter (qlora re-quantizes it on load)."""
    import lmforge

    out = str(tmp_path / method)
    _, logits = _train(method, "tiny-llama", task, out, monkeypatch, steps=2)
    assert os.path.isfile(os.path.join(out, "base_model", "config.json"))
    model, tokenizer = lmforge.load(out)
    torch.testing.assert_close(_probe_logits(model, tokenizer), logits, atol=1e-5, rtol=1e-5)


def test_method_is_chosen_by_cli_flag_and_options_by_set(tmp_path):
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli

    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "quickstart.yaml")
    cli = CliRunner().invoke(build_cli(), ["train", config, "--peft", "dora", "--set", "peft.r=4", "--dry-run"])
    assert cli.exit_code == 0, cli.output
    assert "method: dora" in cli.stdout and "r: 4" in cli.stdout and "alpha: 16.0" in cli.stdout
    cli = CliRunner().invoke(build_cli(), ["train", config, "--peft", "dora", "--set", "peft.r=four", "--dry-run"])
    assert cli.exit_code == 2 and "peft.r: expected int" in cli.output


# --------------------------------------------------------------------------
# method specifics


def test_qlora_base_is_4bit_nf4_at_a_quarter_of_fp16_bytes(runs):
    import bitsandbytes as bnb

    import lmforge

    model, _ = lmforge.load(runs.get("qlora")["dir"])
    base = model.get_base_model()
    linears = [(n, m) for n, m in base.named_modules() if n.startswith("model.layers.")
               and isinstance(m, (bnb.nn.Linear4bit, torch.nn.Linear)) and not n.endswith(("lora_A.default", "lora_B.default"))
               and "lora_" not in n]
    assert len(linears) == 4 * 7
    assert all(isinstance(m, bnb.nn.Linear4bit) for _, m in linears), [type(m).__name__ for _, m in linears]
    assert all(m.weight.quant_state.quant_type == "nf4" for _, m in linears)
    packed = sum(m.weight.data.nbytes for _, m in linears)
    fp16 = sum(m.in_features * m.out_features * 2 for _, m in linears)
    assert 0.24 <= packed / fp16 <= 0.26
    # trainable_params.json counts a 4-bit weight as its number of values, not its bytes
    with open(os.path.join(runs.get("qlora")["dir"], "trainable_params.json"), encoding="utf-8") as f:
        qreport = json.load(f)
    with open(os.path.join(runs.get("lora")["dir"], "trainable_params.json"), encoding="utf-8") as f:
        lreport = json.load(f)
    assert qreport["total_params"] == lreport["total_params"]


def test_adalora_reallocates_ranks(runs):
    import lmforge

    run = runs.get("adalora")
    with open(os.path.join(run["dir"], "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    assert cfg["rank_pattern"], "the rank allocator never ran"
    ranks = {name: sum(mask) for name, mask in cfg["rank_pattern"].items()}
    assert len(ranks) == 4 * 7
    assert len(set(ranks.values())) > 1 and all(r < cfg["init_r"] for r in ranks.values() if r != max(ranks.values()))
    assert sum(ranks.values()) == cfg["target_r"] * len(ranks)
    model, _ = lmforge.load(run["dir"])
    loaded = {n.split(".lora_E")[0]: p.shape[0] for n, p in model.named_parameters() if ".lora_E." in n}
    assert sorted(loaded.values()) == sorted(ranks.values())


def test_unipelt_gates_are_per_token_and_causal(trained_tiny_llama):
    import lmforge
    from lmforge.plugins.descriptors import PeftContext
    from lmforge.plugins.registry import get_registry
    from lmforge_builtins.peft import unipelt

    base, tok = lmforge.load(trained_tiny_llama)
    ids = torch.tensor([tok.encode(PROBE)])
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    opts = {o.name: o.default for o in get_registry().peft_method("unipelt").options}
    ctx = PeftContext(family=get_registry().family("llama"), tokenizer=tok, config={"peft": {"method": "unipelt"}})
    model = unipelt.apply(base, opts, ctx).eval()
    assert model.config._attn_implementation == unipelt.ATTENTION_NAME
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # as if trained: every gate, LoRA, adapter and prefix weight non-zero
                p.normal_(0, 0.05)
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 7) % 2000
        a = model(input_ids=ids).logits
        gates = [m.current_gate for m in model.modules() if hasattr(m, "prefix_key")]
        b = model(input_ids=changed).logits
    assert len(gates) == 4 and all(g.shape == (1, ids.shape[1], 1) for g in gates)
    assert all(0 < float(g.min()) and float(g.max()) < 1 for g in gates)
    # a token never influences earlier positions, through the gates or otherwise
    torch.testing.assert_close(a[0, :-1], b[0, :-1])
    assert not torch.allclose(a[0, -1], b[0, -1])
    assert not torch.allclose(a, ref, atol=1e-3)


# --------------------------------------------------------------------------
# errors before the model loads


@pytest.fixture
def no_model_load(monkeypatch):
    import lmforge.train.pipeline as training

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(training, "load_model", refuse)


@pytest.mark.parametrize("method,options,needle", [
    ("lora", {"r": "eight"}, "peft.r: expected int"),
    ("lora", {"alpah": 8}, "peft.alpah: unknown option (did you mean 'alpha'?)"),
    ("qlora", {"quant_type": "int3"}, "peft.quant_type: 'int3' is not one of ['nf4', 'fp4']"),
    ("adalora", {"init_rank": 8}, "peft.init_rank: unknown option (did you mean 'init_r'?)"),
    ("prefix", {"num_virtual_tokens": "many"}, "peft.num_virtual_tokens: expected int"),
    ("prompt", {"init": "zeros"}, "peft.init: 'zeros' is not one of"),
    ("freeze", {"trainable_layers": 1.5}, "peft.trainable_layers: expected int"),
    ("unipelt", {"adapter_act": "swish"}, "peft.adapter_act: 'swish' is not one of"),
    ("ia3", {"target": ["k_proj"]}, "peft.target: unknown option"),
    # rules across options, also before loading
    ("adalora", {"init_r": 4, "target_r": 8}, "peft.target_r: 8 is above init_r (4)"),
    ("prompt", {"init": "text"}, "peft.init_text: required when init is 'text'"),
    ("unipelt", {"prefix_tokens": 0}, "peft.prefix_tokens: must be positive"),
    ("ia3", {"target_modules": ["q_proj"]}, "peft.feedforward_modules: with custom target_modules"),
    ("freeze", {"trainable_layers": 0}, "peft.trainable_layers: 0 with no extra_modules"),
])
def test_bad_options_fail_before_model_load_naming_the_option(method, options, needle, no_model_load, task, tmp_path):
    from lmforge.api import FineTune
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        FineTune(model="tiny-llama").train_local(train_fpath=task["train"], output_dir=str(tmp_path), peft=method,
                                                 peft_options=options, max_steps=1, report_to=[])
    assert needle in str(err.value)


def test_every_method_is_registered_with_an_option_schema():
    from lmforge.plugins.registry import get_registry

    reg = get_registry()
    assert set(METHODS) <= set(reg.names("peft_methods"))
    assert "roem" not in reg.names("peft_methods")
    for name in METHODS:
        method = reg.peft_method(name)
        assert reg.plugin_of("peft_methods", name).distribution == "lmforge"
        for opt in method.options:
            assert opt.help and opt.type_name()


def test_family_capability_map_refuses_a_method_up_front(monkeypatch, no_model_load, task, tmp_path):
    from dataclasses import replace

    from lmforge.api import FineTune
    from lmforge.plugins.descriptors import unsupported
    from lmforge.errors import CapabilityError
    from lmforge.plugins.registry import get_registry

    reg = get_registry()
    entry = reg.entries["model_families"]["llama"]
    why = "this attention implementation ignores past_key_values"
    fake = replace(entry.descriptor, capabilities={**entry.descriptor.capabilities, "prefix": unsupported(why)})
    monkeypatch.setattr(entry, "descriptor", fake)
    with pytest.raises(CapabilityError) as err:
        FineTune(model="tiny-llama").train_local(train_fpath=task["train"], output_dir=str(tmp_path), peft="prefix",
                                                 max_steps=1, report_to=[])
    assert "'prefix' is not supported by the 'llama' family" in str(err.value) and why in str(err.value)


def test_bitfit_refuses_a_model_without_biases(task, tmp_path):
    from lmforge.api import FineTune
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        FineTune(model="tiny-llama").train_local(train_fpath=task["train"], output_dir=str(tmp_path), peft="bitfit",
                                                 max_steps=1, report_to=[])
    assert "has no bias parameters" in str(err.value) and "add_biases" in str(err.value)


def test_freeze_names_an_unknown_module(trained_tiny_llama, task, tmp_path):
    from lmforge.api import FineTune
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        FineTune(model=trained_tiny_llama).train_local(train_fpath=task["train"], output_dir=str(tmp_path),
                                                       peft="freeze", peft_options={"trainable_modules": ["ffn"]},
                                                       max_steps=1, report_to=[])
    assert "peft.trainable_modules: 'ffn' matches no module" in str(err.value) and "mlp" in str(err.value)


def test_merge_refuses_a_method_that_cannot_merge(runs, tmp_path):
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli

    cli = CliRunner().invoke(build_cli(), ["merge", runs.get("prefix")["dir"], "-o", str(tmp_path / "m")])
    assert cli.exit_code == 2
    assert "'prefix' cannot be merged" in cli.output and "lora" in cli.output


def test_docs_peft_md_names_every_method_and_option():
    from lmforge.plugins.registry import get_registry

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "peft.md"), encoding="utf-8") as f:
        text = f.read()
    for name in METHODS:
        assert f"`{name}`" in text, name
        for opt in get_registry().peft_method(name).options:
            assert f"| `{opt.name}` |" in text, (name, opt.name)
    assert "`roem`" in text


def test_prompt_learning_cache_renaming_goes_both_ways():
    """transformers >= 5.24 names the KV cache ``cache``, peft 0.21 ``past_key_values``: renamed in, renamed back."""
    from lmforge.modeling.hfcompat import _renaming

    seen = {}

    def peft_prepare(input_ids, **kwargs):
        seen.update(kwargs)
        return {"input_ids": input_ids, "past_key_values": kwargs.get("past_key_values"), "use_cache": True}

    out = _renaming(peft_prepare, "cache", "past_key_values")([1], cache="C", use_cache=True)
    assert seen == {"past_key_values": "C", "use_cache": True}
    assert out == {"input_ids": [1], "cache": "C", "use_cache": True}
    assert _renaming(peft_prepare, "cache", "past_key_values")([1]) == {"input_ids": [1], "cache": None, "use_cache": True}
