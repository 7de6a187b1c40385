"""The memory estimator: job/breakdown plumbing, dynamic batch, the ``lmforge estimate`` command.

Accuracy against real models and PyTorch's own measurements is in
``test_estimator_accuracy.py`` (and ``test_estimator_zero.py`` for DeepSpeed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmforge.errors import ConfigError, LmforgeError
from lmforge.modeling.memory import (
    DoesNotFitError,
    EstimateJob,
    MemoryBreakdown,
    format_size,
    get_estimator,
    max_micro_batch,
    parse_size,
    plan_dynamic_batch,
)
from lmforge.plugins.registry import get_registry

GiB = 1 << 30
REQUIRED_JSON = ("total_params", "trainable_params", "params_bytes", "grads_bytes", "optimizer_bytes",
                 "activations_bytes", "logits_bytes", "overhead_bytes", "peak_bytes")


def llama(name="llama-2-7b"):
    fam = get_registry().family("llama")
    return fam, fam.arch_from_config(fam.preset(name).config)


def job(**kw) -> EstimateJob:
    fam = get_registry().family("llama")
    kw.setdefault("default_lora_targets", fam.default_lora_targets)
    return EstimateJob(**kw)


estimate = get_estimator()


# ------------------------------------------------------------------ sizes and jobs


@pytest.mark.parametrize("text,value", [
    ("80GiB", 80 * GiB), ("80 GiB", 80 * GiB), ("24GB", 24 * 10**9), ("1.5GiB", int(1.5 * GiB)),
    ("16000MiB", 16000 * 2**20), ("512", 512), (1024, 1024), ("2tib", 2 * 2**40),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "80 parsecs", "-1GiB", "GiB", True, 0])
def test_parse_size_rejects_nonsense(bad):
    with pytest.raises(ConfigError):
        parse_size(bad)


def test_format_size():
    assert format_size(1536) == "1.50 KiB"
    assert format_size(80 * GiB) == "80.00 GiB"


@pytest.mark.parametrize("kw,msg", [
    ({"dtype": "fp8"}, "dtype"), ({"attn": "xformers"}, "attn"), ({"zero_stage": 4}, "zero_stage"),
    ({"optimizer": "adam"}, "optimizer"), ({"micro_batch": 0}, "micro_batch"),
    ({"offload": "all", "zero_stage": 2}, "stage 3"), ({"offload": "optimizer"}, "ZeRO"),
])
def test_job_validation_names_the_field(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        EstimateJob(**kw)


# ------------------------------------------------------------------ the estimate


def test_builtin_estimator_is_registered_as_a_plugin():
    reg = get_registry()
    assert "analytic" in reg.names("memory_estimators")
    assert reg.plugin_of("memory_estimators", "analytic").distribution == "lmforge"


def test_breakdown_json_has_every_field_and_adds_up():
    fam, arch = llama()
    bd = estimate(arch, job(peft="lora", seq_len=4096, micro_batch=4))
    assert isinstance(bd, MemoryBreakdown)
    out = bd.to_json()
    for key in REQUIRED_JSON:
        assert isinstance(out[key], int) and out[key] >= 0, key
    assert out["total_params"] == 6_738_415_616 + 19_988_480  # LLaMA-2-7B + LoRA r=8 on all 7 linears
    assert out["trainable_params"] == 19_988_480
    # the peak is at least everything resident plus what the forward pass keeps
    assert bd.peak_bytes >= bd.params_bytes + bd.optimizer_bytes + bd.activations_bytes + bd.logits_bytes
    json.dumps(out)


def test_published_parameter_counts():
    """Parameter counts from the architecture numbers alone match the published models."""
    reg = get_registry()
    expected = {"llama-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192,
                "llama-3-8b": 8_030_261_248}
    for name, n in expected.items():
        fam = reg.family("llama")
        arch = fam.arch_from_config(fam.preset(name).config)
        assert estimate(arch, job(seq_len=128)).total_params == n, name


def test_logits_block_is_priced_and_dominates_at_large_vocabularies():
    """~12 bytes per token per vocabulary entry (fp32 log-probs and two fp32 gradients) for the default loss."""
    _, arch = llama("llama-3-8b")
    bd = estimate(arch, job(peft="lora", seq_len=4096, micro_batch=2, gradient_checkpointing=True))
    tokens = 2 * 4096
    assert 12 * tokens * arch.vocab_size <= bd.logits_bytes <= 12.01 * tokens * arch.vocab_size
    assert bd.logits_bytes > bd.activations_bytes


def test_sdpa_has_no_quadratic_term_and_eager_does():
    _, arch = llama("llama-2-7b")

    def act(attn, s):
        return estimate(arch, job(attn=attn, seq_len=s, padding=False)).activations_bytes

    assert act("sdpa", 4096) / act("sdpa", 2048) == pytest.approx(2.0, rel=0.01)
    assert act("eager", 4096) / act("eager", 2048) > 2.5


def test_grouped_query_attention_saves_memory():
    _, mha = llama("llama-2-7b")
    from dataclasses import replace

    gqa = replace(mha, num_key_value_heads=8, attention_kind="gqa")
    j = job(seq_len=4096, padding=False)
    assert estimate(gqa, j).params_bytes < estimate(mha, j).params_bytes
    assert estimate(gqa, j).activations_bytes < estimate(mha, j).activations_bytes
    # with a padding mask transformers repeats K/V for SDPA (GQA kernels take no mask): no saving
    padded = j.with_(padding=True)
    assert estimate(gqa, padded).activations_bytes == estimate(mha, padded).activations_bytes


def test_checkpointing_zero_and_offload_each_reduce_the_peak():
    _, arch = llama("llama-2-7b")
    base = job(seq_len=2048, micro_batch=2, world_size=8)
    p0 = estimate(arch, base).peak_bytes
    assert estimate(arch, base.with_(gradient_checkpointing=True)).peak_bytes < p0
    z = [estimate(arch, base.with_(zero_stage=s)).peak_bytes for s in (1, 2, 3)]
    # DeepSpeed 0.19 reduces stage-1 gradients into partitions during backward too, so 1 and 2 tie here
    assert p0 > z[0] >= z[1] > z[2]
    assert estimate(arch, base.with_(zero_stage=2, offload="optimizer")).peak_bytes < z[1]
    assert estimate(arch, base.with_(zero_stage=2, offload="optimizer")).cpu_bytes > 0


def test_peft_methods_price_their_trainable_parameters():
    _, arch = llama("llama-2-7b")
    tp = {m: estimate(arch, job(peft=m, seq_len=128)).trainable_params
          for m in ("full", "freeze", "lora", "qlora", "prefix", "dora", "adalora", "ia3", "prompt", "ptuning",
                    "unipelt")}
    assert tp["full"] == 6_738_415_616
    assert tp["freeze"] == 2 * 202_383_360  # two LLaMA-2-7B blocks
    assert tp["lora"] == tp["qlora"] == 19_988_480
    assert tp["prefix"] == 16 * 32 * 2 * 4096
    assert tp["dora"] > tp["lora"]
    assert all(v > 0 for v in tp.values())
    q = estimate(arch, job(peft="qlora", seq_len=128))
    assert q.params_bytes < 0.35 * estimate(arch, job(peft="lora", seq_len=128)).params_bytes


def test_lora_targets_and_rank_follow_the_options():
    _, arch = llama("llama-2-7b")
    qv = estimate(arch, job(peft="lora", peft_options={"target_modules": ["q_proj", "v_proj"], "r": 16}, seq_len=128))
    assert qv.trainable_params == 32 * 2 * 16 * (4096 + 4096)
    with pytest.raises(ConfigError, match="no linear layer 'wqkv'"):
        estimate(arch, job(peft="lora", peft_options={"target_modules": ["wqkv"]}, seq_len=128))


def test_fused_module_names_of_other_families():
    """BLOOM's fused query_key_value / dense_4h_to_h come from its model-type profile."""
    reg = get_registry()
    try:
        fam = reg.family("bloom")
    except LmforgeError:
        pytest.skip("llm-plugins-bloom is not installed")
    preset = fam.preset("bloom-560m")
    arch = fam.arch_from_config(preset.config)
    bd = estimate(arch, EstimateJob(peft="lora", model_type="bloom", seq_len=128,
                                    peft_options={"target_modules": "query_key_value,dense_4h_to_h"}))
    assert bd.total_params - bd.trainable_params == 559_214_592  # BLOOM-560M
    assert bd.trainable_params == 24 * 8 * ((1024 + 3 * 1024) + (4096 + 1024))


def test_a_family_registers_its_own_estimator_profile():
    """The profile comes from the family descriptor (by model_type); the arch's own extra wins over it."""
    import dataclasses
    import types

    from lmforge import hookimpl
    from lmforge.plugins.descriptors import ModelFamily
    from lmforge.plugins.registry import PluginRecord, Registry, set_registry

    seen = []

    def profile(arch, model_type):
        seen.append(model_type)
        return {"attn_kernel": "eager", "approximate": "Toy (its own attention)"}

    llama_fam = get_registry().family("llama")
    toy = dataclasses.replace(llama_fam, name="toy", aliases=(), presets=(), model_types=("toy",),
                              estimator_profile=profile)
    plugin = types.ModuleType("toy_plugin")
    plugin.register_model_families = hookimpl(lambda register: register(toy))
    reg = Registry()
    reg.load_entry_points()
    reg.add_plugin(plugin, PluginRecord(entry_point="toy", module="toy_plugin", distribution="toy", version="0"))
    assert reg.family("toy").estimator_profile is profile
    _, arch = llama("tiny-llama")
    previous = get_registry()
    set_registry(reg)
    try:
        plain = estimate(arch, job(model_type="llama", seq_len=64))
        toyed = estimate(arch, job(model_type="toy", seq_len=64))
        own = estimate(dataclasses.replace(arch, extra={"attn_kernel": "sdpa"}), job(model_type="toy", seq_len=64))
    finally:
        set_registry(previous)
    assert "toy" in seen
    assert toyed.activations_bytes > plain.activations_bytes  # eager attention keeps the probabilities
    assert any("Toy (its own attention)" in n and "approximate" in n for n in toyed.notes)
    assert not any("approximate" in n for n in plain.notes)
    assert own.activations_bytes == plain.activations_bytes


def test_built_in_families_declare_their_profiles():
    """Families whose forward pass is not LLaMA's carry an estimator profile in their own plugin."""
    reg = get_registry()
    for name in ("bloom", "chatglm2", "chatglm3", "glm4", "glm", "chatglm", "minicpm", "minicpm3", "cpmant"):
        try:
            fam = reg.family(name)
        except LmforgeError:
            continue
        assert fam.estimator_profile is not None, (name, reg.plugin_of("model_families", name).label)
        assert not fam.estimator_profile.startswith("lmforge"), name
    assert reg.family("llama").estimator_profile is None


# ------------------------------------------------------------------ dynamic batch


def test_max_micro_batch_is_the_largest_that_fits():
    _, arch = llama("llama-2-7b")
    j = job(peft="lora", seq_len=2048, gradient_checkpointing=True)
    budget = 80 * GiB
    m = max_micro_batch(arch, j, budget, margin=0.1)
    assert m >= 1
    assert estimate(arch, j.with_(micro_batch=m)).fits(budget, 0.1)
    assert not estimate(arch, j.with_(micro_batch=m + 1)).fits(budget, 0.1)


def test_plan_keeps_the_global_batch():
    _, arch = llama("llama-2-7b")
    j = job(peft="lora", seq_len=2048, gradient_checkpointing=True, world_size=2)
    micro, accum, bd = plan_dynamic_batch(arch, j, 80 * GiB, global_batch=96)
    assert micro * accum * 2 == 96
    assert bd.job.micro_batch == micro and bd.fits(80 * GiB, 0.1)
    fit = max_micro_batch(arch, j, 80 * GiB, 0.1)
    assert micro == max(d for d in range(1, fit + 1) if 48 % d == 0)


def test_a_job_that_cannot_fit_stops_with_the_breakdown_and_what_would_fit():
    _, arch = llama("llama-2-7b")
    with pytest.raises(DoesNotFitError) as info:
        plan_dynamic_batch(arch, job(peft="full", seq_len=4096), 24 * GiB, global_batch=8)
    err = info.value
    assert isinstance(err, LmforgeError)
    assert err.breakdown.job.micro_batch == 1 and not err.breakdown.fits(24 * GiB, 0.1)
    text = str(err)
    assert "does not fit in 24.00 GiB" in text and "optimizer states" in text
    # no single change is enough here; checkpointing together with LoRA or QLoRA is
    assert any("checkpointing and train QLoRA" in s for s in err.suggestions), err.suggestions
    assert estimate(arch, job(peft="qlora", seq_len=4096, gradient_checkpointing=True)).fits(24 * GiB, 0.1)


def test_plan_rejects_a_global_batch_the_processes_cannot_share():
    _, arch = llama("llama-2-7b")
    with pytest.raises(ConfigError, match="multiple"):
        plan_dynamic_batch(arch, job(peft="lora", world_size=4), 80 * GiB, global_batch=6)


def test_training_config_accepts_the_dynamic_batch_keys():
    from lmforge.config.schema import validate

    cfg = validate({"model": "tiny-llama", "data": {"train_file": "x.jsonl"}, "dynamic_batch": True,
                    "gpu_memory": "24GiB", "memory_margin": 0.2})
    assert cfg["dynamic_batch"] is True and cfg["gpu_memory"] == "24GiB" and cfg["memory_margin"] == 0.2


def test_plan_for_training_sets_micro_batch_and_accumulation(tmp_path):
    from lmforge.config.schema import validate
    from lmforge.modeling.memory import MEMORY_ESTIMATE, plan_for_training
    from lmforge.modeling.loading import resolve_model

    cfg = validate({"model": "llama-2-7b", "output_dir": str(tmp_path), "data": {"train_file": "x.jsonl"},
                    "peft": {"method": "lora"}, "max_length": 2048, "gradient_checkpointing": True,
                    "dtype": "bf16", "dynamic_batch": True, "gpu_memory": "80GiB"})
    source = resolve_model("llama-2-7b")
    kwargs = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 64}
    logs = []
    bd = plan_for_training(cfg, source, kwargs, log=logs.append)
    assert kwargs["per_device_train_batch_size"] * kwargs["gradient_accumulation_steps"] == 64
    assert kwargs["per_device_train_batch_size"] > 1
    saved = json.loads((tmp_path / MEMORY_ESTIMATE).read_text())
    assert saved["micro_batch"] == kwargs["per_device_train_batch_size"] and saved["global_batch"] == 64
    assert saved["peak_bytes"] == bd.peak_bytes
    assert any("dynamic batch" in line for line in logs)


def test_plan_for_training_needs_a_budget_without_cuda(tmp_path, monkeypatch):
    from lmforge.modeling import memory
    from lmforge.config.schema import validate
    from lmforge.modeling.loading import resolve_model

    monkeypatch.setattr(memory, "_device_memory", lambda: ("cpu", None))
    cfg = validate({"model": "tiny-llama", "output_dir": str(tmp_path), "data": {"train_file": "x.jsonl"},
                    "dynamic_batch": True})
    with pytest.raises(ConfigError, match="gpu_memory"):
        memory.plan_for_training(cfg, resolve_model("tiny-llama"), {}, log=lambda m: None)


# ------------------------------------------------------------------ the command


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``lmforge estimate ...`` in a fresh interpreter that asserts torch was never imported."""
    code = (
        "import sys\n"
        "from lmforge.cli.main import main\n"
        f"sys.argv = ['lmforge', 'estimate', *{list(args)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code or 0\nelse:\n    code = 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'deepspeed') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "sys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_cli_json_matches_the_issue_example_without_torch():
    r = run_cli("--model", "llama-2-7b", "--peft", "lora", "--seq-len", "4096", "--micro-batch", "4", "--zero", "2",
                "--gpus", "8", "--gpu-memory", "80GiB", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in REQUIRED_JSON + ("max_micro_batch",):
        assert key in out, key
    assert out["job"]["zero_stage"] == 2 and out["job"]["world_size"] == 8
    fam, arch = llama()
    j = job(peft="lora", seq_len=4096, micro_batch=4, zero_stage=2, world_size=8)
    assert out["peak_bytes"] == estimate(arch, j).peak_bytes
    assert out["max_micro_batch"] == max_micro_batch(arch, j, 80 * GiB, 0.1)


def test_cli_table_and_options(tmp_path):
    r = run_cli("--model", "llama-2-7b", "--peft", "lora", "--peft-opt", "r=16",
                "--peft-opt", "target_modules=q_proj,v_proj", "--attn", "flash", "--grad-ckpt", "--dtype", "bf16",
                "--optimizer", "adamw8bit", "--zero", "3", "--offload", "optimizer", "--gpus", "2")
    assert r.returncode == 0, r.stderr
    assert "peak per device" in r.stdout and "activations" in r.stdout and "logits and loss" in r.stdout
    assert f"{32 * 2 * 16 * 8192:,} trainable" in r.stdout


def test_cli_reads_a_checkpoint_config_only(tmp_path):
    fam = get_registry().family("llama")
    (tmp_path / "config.json").write_text(json.dumps(dict(fam.preset("llama-3-8b").config)))
    r = run_cli("--model", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total_params"] == 8_030_261_248


def test_cli_errors_are_for_people():
    r = run_cli("--model", "llama-2-7x")
    assert r.returncode == 2 and "did you mean 'llama-2-7b'" in r.stderr
    r = run_cli("--model", "llama-2-7b", "--peft", "lora", "--peft-opt", "alpah=8")
    assert r.returncode == 2 and "alpah" in r.stderr and "did you mean 'alpha'" in r.stderr
    r = run_cli("--model", "llama-2-7b", "--gpu-memory", "lots")
    assert r.returncode == 2 and "80GiB" in r.stderr


def test_cli_every_family_preset_estimates():
    """Every registered preset (tiny and published) prices without error."""
    reg = get_registry()
    for fam in reg.families():
        for preset in fam.presets:
            arch = fam.arch_from_config(preset.config)
            j = EstimateJob(seq_len=512, peft="lora", default_lora_targets=fam.default_lora_targets,
                            model_type=str(preset.config.get("model_type", "")))
            bd = estimate(arch, j)
            assert bd.peak_bytes > bd.params_bytes > 0, preset.name


def test_train_local_with_dynamic_batch_picks_the_micro_batch_before_loading(tmp_path):
    """End to end on CPU: the planner sets micro-batch and accumulation, the run keeps the global batch."""
    pytest.importorskip("torch")
    from lmforge.api import FineTune
    from lmforge.modeling.memory import MEMORY_ESTIMATE

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"input": f"{i} plus {i}?", "output": str(2 * i)}) + "\n" for i in range(40)))
    out = tmp_path / "run"
    FineTune(model="tiny-llama").train_local(
        train_fpath=str(data), output_dir=str(out), peft="full", max_steps=1, max_length=32,
        per_device_train_batch_size=16, gradient_accumulation_steps=1, report_to=[], save_strategy="no",
        disable_tqdm=True, dynamic_batch=True, gpu_memory="75MiB", memory_margin=0.0,
    )
    plan = json.loads((out / MEMORY_ESTIMATE).read_text())
    assert plan["global_batch"] == 16
    assert plan["micro_batch"] * plan["gradient_accumulation_steps"] == 16
    assert 1 <= plan["micro_batch"] < 16 and plan["peak_bytes"] <= 75 * 2**20
    with pytest.raises(DoesNotFitError, match="does not fit"):
        FineTune(model="tiny-llama").train_local(
            train_fpath=str(data), output_dir=str(tmp_path / "run2"), peft="full", max_steps=1, max_length=32,
            report_to=[], dynamic_batch=True, gpu_memory="20MiB")
    assert not (tmp_path / "run2" / "model.safetensors").exists()
