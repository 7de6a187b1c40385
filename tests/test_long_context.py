"""Long context (issue 15): ``long_context:`` / ``use_long_glm``, the RoPE methods, saving, reloading, generation.

The frequencies each method gives are checked against the published formulas written out here
(position interpolation, NTK-aware base, YaRN's ramp, Llama 3.1's wavelength bands) and against
transformers' own implementation (the model's rotary embedding, which lmforge only configures).
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from lmforge.errors import CapabilityError, ConfigError, LmforgeError

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "examples", "data", "train.jsonl")
THETA, ORIG = 10000.0, 32


def lc(method="linear", factor=2.0, orig=ORIG, shift_attn=False):
    from lmforge.config.spec import LongContextSpec

    return LongContextSpec(method=method, factor=factor, original_max_position=orig, shift_attn=shift_attn)


def llama_config(**extra):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64, max_position_embeddings=ORIG, rope_theta=THETA, **extra)


def rotary_inv_freq(config, seq_len=None):
    """transformers' frequencies for a config: LlamaRotaryEmbedding built from it (run at ``seq_len``)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rot = LlamaRotaryEmbedding(config)
    if seq_len is not None:
        x = torch.zeros(1, seq_len, 8)
        rot(x, torch.arange(seq_len)[None])
    return rot.inv_freq.double(), rot.attention_scaling


def base_inv_freq(d, theta=THETA):
    return 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)


def extended(method, factor=4.0, **extra):
    from lmforge.modeling.longctx import rope_scaling

    cfg = llama_config(**extra)
    rope_scaling(cfg, lc(method, factor))
    return cfg


D = 32  # head_dim of llama_config


# ------------------------------------------------------------------ the formulas

def test_linear_is_position_interpolation():
    """PI (Chen et al. 2023): position m is read as m / s, i.e. every frequency theta_i / s."""
    cfg = extended("linear", 4.0)
    got, scale = rotary_inv_freq(cfg)
    assert cfg.rope_parameters["rope_type"] == "linear" and cfg.max_position_embeddings == 4 * ORIG
    positions = torch.arange(4 * ORIG, dtype=torch.float64)
    want_angles = torch.outer(positions / 4.0, base_inv_freq(D))  # theta-scaled positions
    assert torch.allclose(torch.outer(positions, got), want_angles, rtol=1e-6) and scale == 1.0


def test_ntk_is_the_ntk_aware_base():
    """NTK-aware scaling: base' = base * s^(d / (d - 2)), positions unchanged."""
    cfg = extended("ntk", 4.0)
    want = base_inv_freq(D, THETA * 4.0 ** (D / (D - 2)))
    got, _ = rotary_inv_freq(cfg)
    assert torch.allclose(got, want, rtol=1e-6)
    assert cfg.rope_parameters["rope_type"] == "default" and cfg.max_position_embeddings == 4 * ORIG
    # the highest frequency is untouched and the lowest is interpolated by exactly s (the NTK-aware property)
    assert math.isclose(float(got[0]), 1.0, rel_tol=1e-9)
    assert math.isclose(float(got[-1]), float(base_inv_freq(D)[-1]) / 4.0, rel_tol=1e-5)


def test_dynamic_ntk_grows_the_base_with_the_sequence():
    """Dynamic NTK: up to the original length the base is unchanged; at length L > L0,
    base' = base * (s * L / L0 - (s - 1))^(d / (d - 2)). max_position_embeddings stays L0 (transformers
    reads it as the pretraining length)."""
    cfg = extended("dynamic", 4.0)
    assert cfg.max_position_embeddings == ORIG and cfg.rope_parameters["factor"] == 4.0
    short, _ = rotary_inv_freq(cfg, seq_len=ORIG)
    assert torch.allclose(short, base_inv_freq(D), rtol=1e-6)
    L = 3 * ORIG
    long, _ = rotary_inv_freq(cfg, seq_len=L)
    base = THETA * (4.0 * L / ORIG - 3.0) ** (D / (D - 2))
    assert torch.allclose(long, base_inv_freq(D, base), rtol=1e-5)
    from lmforge.modeling.longctx import window

    assert window(cfg) == 4 * ORIG  # Completion's context


def test_yarn_ramp_and_attention_factor():
    """YaRN (Peng et al. 2023): with r_i = L0 / lambda_i (rotations of dimension i over the original
    context, lambda_i = 2 pi / theta_i), dimensions with r > beta (32) keep theta_i, those with r < alpha (1)
    are interpolated to theta_i / s, and between the two theta_i is blended by a linear ramp; the reference
    code (and transformers) ramps over the dimension index between the band edges
    i(r) = d * ln(L0 / (2 pi r)) / (2 ln base), floored / ceiled. Attention is scaled by 0.1 ln s + 1."""
    s = 4.0
    cfg = extended("yarn", s)
    assert cfg.rope_parameters["original_max_position_embeddings"] == ORIG and cfg.max_position_embeddings == 4 * ORIG
    got, scale = rotary_inv_freq(cfg)
    theta = base_inv_freq(D)
    r = ORIG / (2 * math.pi / theta)
    alpha, beta = 1.0, 32.0

    def edge(rot):
        return D * math.log(ORIG / (rot * 2 * math.pi)) / (2 * math.log(THETA))

    lo, hi = max(math.floor(edge(beta)), 0), min(math.ceil(edge(alpha)), D - 1)
    ramp = ((torch.arange(D // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)  # 0: keep, 1: interpolate
    want = theta * (1 - ramp) + theta / s * ramp
    assert torch.allclose(got, want, rtol=1e-5)
    assert torch.allclose(got[r > beta], theta[r > beta]) and torch.allclose(got[r < alpha], theta[r < alpha] / s)
    assert math.isclose(scale, 0.1 * math.log(s) + 1.0, rel_tol=1e-9)


def test_llama3_wavelength_bands():
    """Llama 3.1: wavelength lambda = 2 pi / theta; lambda < L0 / 4 keeps theta, lambda > L0 / 1 divides it by s,
    between, smooth = (L0 / lambda - 1) / (4 - 1) blends (1 - smooth) theta / s + smooth theta."""
    s = 8.0
    cfg = extended("llama3", s)
    got, _ = rotary_inv_freq(cfg)
    theta = base_inv_freq(D)
    lam = 2 * math.pi / theta
    smooth = (ORIG / lam - 1.0) / (4.0 - 1.0)
    want = torch.where(lam < ORIG / 4.0, theta, torch.where(lam > ORIG / 1.0, theta / s,
                                                                  (1 - smooth) * theta / s + smooth * theta))
    assert torch.allclose(got, want, rtol=1e-6)
    assert ((lam > ORIG / 4) & (lam < ORIG)).any()  # the middle band is exercised


def test_a_second_scaling_is_not_stacked_and_a_config_without_rope_is_refused():
    from transformers import GPT2Config

    from lmforge.modeling.longctx import rope_scaling

    cfg = extended("yarn", 2.0)
    with pytest.raises(LmforgeError, match="already scales its positions .rope_type 'yarn'"):
        rope_scaling(cfg, lc("linear"))
    with pytest.raises(CapabilityError, match="no RoPE parameters"):
        rope_scaling(GPT2Config(n_layer=1), lc("linear"))


# ------------------------------------------------------------------ config, capabilities

def _validate(**kw):
    from lmforge.config.schema import validate

    return validate({"model": "tiny-llama", "data": {"train_file": TRAIN}, **kw})


def test_config_section_aliases_and_errors():
    from lmforge.config.spec import JobSpec

    assert JobSpec.from_resolved(_validate(), cuda=False).long_context is None
    cfg = _validate(long_context={"method": "yarn", "factor": 4})
    spec = JobSpec.from_resolved(cfg, cuda=False)
    assert (spec.long_context.method, spec.long_context.factor, spec.long_context.original_max_position) == \
        ("yarn", 4.0, "auto")
    glm = _validate(use_long_glm=True, max_length=100, long_glm_factor=3)
    assert glm["max_length"] == 300 and glm["long_context"]["method"] == "family"
    assert glm["long_context"]["factor"] == 3.0 and not glm["use_long_glm"]
    from lmforge.config.schema import validate

    assert validate(glm) == glm  # what lmforge.yaml records validates to itself (no second x3)
    with pytest.raises(ConfigError, match=r"long_context.method: 'yarm' .*did you mean 'yarn'"):
        _validate(long_context={"method": "yarm"})
    with pytest.raises(ConfigError, match=r"long_context.factr: unknown key \(did you mean 'factor'\?\)"):
        _validate(long_context={"factr": 2})
    with pytest.raises(ConfigError, match="long_context.factor: must be >= 1"):
        _validate(long_context={"factor": 0.5})
    with pytest.raises(ConfigError, match="long_context.original_max_position: expected a positive integer or auto"):
        _validate(long_context={"original_max_position": "big"})
    with pytest.raises(ConfigError, match="use_long_glm: set either"):
        _validate(use_long_glm=True, long_context={"method": "linear"})
    with pytest.raises(ConfigError, match="use_lon_glm: unknown key .did you mean 'use_long_glm'"):
        _validate(use_lon_glm=True)


def test_unsupported_method_and_family_are_refused_with_the_reason():
    from lmforge.modeling.loading import ModelSource, resolve_model
    from lmforge.plugins.descriptors import ModelFamily, unsupported
    from lmforge.plugins.registry import get_registry
    from lmforge.train.job import check_capabilities

    reg = get_registry()
    minicpm3 = resolve_model("tiny-minicpm3", registry=reg)
    with pytest.raises(CapabilityError, match=r"long_context.method: 'llama3' is not supported by the 'minicpm3' "
                                              r"family \(it accepts yarn, linear, dynamic, ntk\)"):
        check_capabilities(_validate(long_context={"method": "llama3"}), minicpm3, reg)
    check_capabilities(_validate(long_context={"method": "yarn"}), minicpm3, reg)
    fixed = ModelFamily(name="fixed", loader="x:y", arch_from_config=lambda c: None,
                        capabilities={"long_context": unsupported("learned absolute positions")})
    with pytest.raises(CapabilityError, match="long_context: not supported by the 'fixed' family: learned absolute"):
        check_capabilities(_validate(long_context={"method": "linear"}), ModelSource(fixed, {}), reg)


def test_minicpm3_keeps_released_longrope():
    from transformers import MiniCPM3Config

    from llm_plugins_cpm.loader import extend_minicpm3

    cfg = MiniCPM3Config(hidden_size=64, num_attention_heads=4, qk_rope_head_dim=8, qk_nope_head_dim=8,
                         max_position_embeddings=64,
                         rope_scaling={"rope_type": "longrope", "long_factor": [1.0] * 4, "short_factor": [1.0] * 4,
                                       "original_max_position_embeddings": 32, "rope_theta": THETA})
    with pytest.raises(CapabilityError, match="already uses LongRoPE"):
        extend_minicpm3(cfg, lc("yarn"))


def test_the_estimator_prices_the_longer_sequence():
    from lmforge.modeling.loading import resolve_model
    from lmforge.modeling.memory import job_from_config

    source = resolve_model("tiny-llama")
    base = job_from_config(_validate(max_length=64), source, micro_batch=1, world_size=1, device="cpu")
    long = job_from_config(_validate(max_length=64, use_long_glm=True), source, micro_batch=1, world_size=1,
                           device="cpu")
    assert (base.seq_len, long.seq_len) == (64, 128)
    from lmforge.modeling.arch import llama_arch
    from lmforge.modeling.memory import get_estimator

    est = get_estimator()
    arch = llama_arch(dict(source.config))
    assert est(arch, long).activations_bytes > 1.9 * est(arch, base).activations_bytes
    assert est(arch, long).peak_bytes > est(arch, base).peak_bytes


# ------------------------------------------------------------------ models: load, save, reload, generate

@pytest.fixture(scope="module")
def short_llama(tmp_path_factory):
    """tiny-llama saved as a checkpoint whose context is only 32 positions."""
    import lmforge

    model, tok = lmforge.load("tiny-llama", dtype="fp32")
    model.config.max_position_embeddings = ORIG
    out = str(tmp_path_factory.mktemp("short-llama"))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _logits(model, n=80):
    ids = torch.arange(5, 5 + n)[None] % model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_checkpoint_directory_loads_extended_and_generates_beyond_its_positions(short_llama):
    from lmforge.inference.generation import Completion

    plain = Completion(short_llama, dtype="fp32")
    assert plain.context_length == ORIG
    with pytest.raises(ConfigError, match="context of 32 tokens"):
        plain.generate("What is 1 plus 1?", max_new_tokens=40)
    comp = Completion(short_llama, dtype="fp32", long_context={"method": "yarn", "factor": 4})
    assert comp.context_length == 4 * ORIG
    assert comp.model.config.rope_parameters["rope_type"] == "yarn"
    prompt = comp.encode("What is 1 plus 1?")
    res = comp.generate("What is 1 plus 1?", max_new_tokens=60)
    assert len(prompt) + len(res.token_ids[0]) > ORIG  # past the original positions
    # cached decoding equals full-sequence greedy decoding with the scaled positions
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(len(res.token_ids[0])):
            nxt = int(comp.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
    assert ids[len(prompt):] == res.token_ids[0]


def test_completion_use_long_glm_doubles_the_window_with_the_family_method(short_llama):
    from lmforge.inference.generation import Completion

    comp = Completion(short_llama, None, True, dtype="fp32")  # AntLLM's positional spelling
    assert comp.context_length == 2 * ORIG
    assert comp.model.config.rope_parameters["rope_type"] == "linear"  # LLaMA's first method
    with pytest.raises(ConfigError, match="either use_long_glm"):
        Completion(short_llama, use_long_glm=True, long_context={"method": "yarn"})


def _train(out, **kw):
    from lmforge import FineTune
    from lmforge_testing import torch_threads

    with torch_threads(1):
        return FineTune(model="tiny-llama").train_local(
            train_fpath=TRAIN, output_dir=out, max_steps=2, per_device_train_batch_size=2, report_to=[],
            logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, **kw)


def test_trained_run_saves_the_extension_and_reloads_to_the_same_logits(tmp_path):
    import lmforge

    out = str(tmp_path / "full")
    res = _train(out, peft="full", max_length=32, use_long_glm=True)  # trains at 64
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    assert saved["rope_parameters"]["rope_type"] == "linear" and saved["rope_parameters"]["factor"] == 2.0
    assert saved["max_position_embeddings"] == 2048
    from lmforge.config.schema import load_yaml

    run_cfg = load_yaml(os.path.join(out, "lmforge.yaml"))
    assert run_cfg["max_length"] == 64 and run_cfg["long_context"]["factor"] == 2.0
    model, _ = lmforge.load(out, dtype="fp32")  # nothing to pass
    res.model.eval()
    assert torch.allclose(_logits(model), _logits(res.model.float()), atol=1e-5)
    from lmforge.inference.generation import Completion

    served = Completion(out, use_long_glm=True, dtype="fp32")  # AntLLM: trained and served with use_long_glm
    assert served.context_length == 2048 and served.model.config.rope_parameters == model.config.rope_parameters
    with pytest.raises(LmforgeError, match="already scales its positions"):
        Completion(out, long_context={"method": "yarn"}, dtype="fp32")
    from transformers import LlamaForCausalLM  # transformers alone reads the same scaling

    hf = LlamaForCausalLM.from_pretrained(out)
    assert hf.model.rotary_emb.rope_type == "linear"
    assert torch.allclose(_logits(hf), _logits(model), atol=1e-5)


def test_adapter_run_reloads_its_base_with_the_extension(tmp_path):
    import lmforge

    out = str(tmp_path / "lora")
    res = _train(out, peft="lora", max_length=64,
                 long_context={"method": "yarn", "factor": 2, "original_max_position": ORIG})
    model, _ = lmforge.load(out, dtype="fp32")
    assert model.get_base_model().config.rope_parameters["rope_type"] == "yarn"
    res.model.eval()
    assert torch.allclose(_logits(model), _logits(res.model), atol=1e-5)


def test_packing_and_long_context_train_together(tmp_path):
    out = str(tmp_path / "packed")
    res = _train(out, peft="full", max_length=96, use_packed_training=True,
                 long_context={"method": "ntk", "factor": 3, "original_max_position": ORIG})
    assert math.isfinite(res.train_loss)
    with open(os.path.join(out, "train_results.json")) as f:
        assert json.load(f)["packing"]["mode"] == "online"
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    assert saved["max_position_embeddings"] == 3 * ORIG
    assert math.isclose(saved["rope_parameters"]["rope_theta"], 10000.0 * 3 ** (32 / 30), rel_tol=1e-9)


def test_minicpm_saves_the_released_spelling_and_reloads(tmp_path):
    import lmforge
    from lmforge.modeling.loading import resolve_model, save_model

    model, tok = lmforge.load("tiny-minicpm", dtype="fp32", long_context={"method": "linear", "factor": 2})
    out = str(tmp_path / "minicpm")
    save_model(model, tok, resolve_model("tiny-minicpm").family, out)
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    assert saved["rope_scaling"] == {"type": "linear", "factor": 2.0} and saved["max_position_embeddings"] == 2048
    again, _ = lmforge.load(out, dtype="fp32")
    assert again.model.rotary_emb.rope_type == "linear"
    assert torch.allclose(_logits(again), _logits(model), atol=1e-5)


def test_minicpm3_yarn_scales_the_rotary_part_and_reloads(tmp_path):
    import lmforge

    model, tok = lmforge.load("tiny-minicpm3", dtype="fp32",
                              long_context={"method": "yarn", "factor": 2, "original_max_position": ORIG})
    d = model.config.qk_rope_head_dim
    rot = model.model.rotary_emb
    assert rot.inv_freq.numel() == d // 2 and rot.rope_type == "yarn"
    assert math.isclose(rot.attention_scaling, 0.1 * math.log(2.0) + 1.0)
    out = str(tmp_path / "minicpm3")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    again, _ = lmforge.load(out, dtype="fp32")
    assert torch.allclose(_logits(again), _logits(model), atol=1e-5)


def test_generic_family_extends_a_rope_checkpoint(tmp_path):
    import lmforge
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmforge.modeling.loading import resolve_model

    cfg = AutoConfig.for_model("qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=256,
                               max_position_embeddings=ORIG)
    out = str(tmp_path / "qwen2")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    lmforge.load("tiny-llama")[1].save_pretrained(out)
    assert resolve_model(out).family.name == "causal-lm"
    model, _ = lmforge.load(out, dtype="fp32", long_context={"method": "linear", "factor": 4})
    assert model.config.max_position_embeddings == 4 * ORIG
    assert torch.allclose(model.model.rotary_emb.inv_freq.double(), base_inv_freq(16, cfg.rope_parameters["rope_theta"]) / 4,
                          rtol=1e-6)


def test_factor_one_changes_nothing_and_a_loader_that_skips_the_extension_is_refused():
    import dataclasses

    from lmforge.modeling.loading import LoadOptions, hf_load, load_model, resolve_model
    from lmforge.plugins.descriptors import ModelFamily, supported, unsupported
    from lmforge.plugins.registry import get_registry
    from lmforge.train.job import check_capabilities

    fixed = ModelFamily(name="fixed", loader="x:y", arch_from_config=lambda c: None,
                        capabilities={"long_context": unsupported("learned absolute positions")})
    source = resolve_model("tiny-llama")
    shift_only = _validate(long_context={"factor": 1, "shift_attn": True})
    check_capabilities(shift_only, dataclasses.replace(source, family=fixed), get_registry())  # nothing to extend
    model, _ = load_model(source, LoadOptions(long_context=lc("family", factor=1.0, orig="auto")))
    assert model.config.rope_parameters["rope_type"] == "default" and model.config.max_position_embeddings == 1024

    def lazy_loader(src, options):
        return hf_load(src, dataclasses.replace(options, long_context=None))

    lazy = ModelFamily(name="lazy", loader=lazy_loader, arch_from_config=lambda c: None,
                       capabilities={"long_context": supported()}, long_context_methods=("linear",),
                       extend_context="lmforge.modeling.longctx:rope_scaling")
    with pytest.raises(LmforgeError, match="the 'lazy' family's loader does not apply it"):
        load_model(dataclasses.replace(source, family=lazy), LoadOptions(long_context=lc("linear")))


def test_resume_compares_long_context_and_accepts_runs_saved_before_it():
    from lmforge.runs.rundir import config_differences, is_trajectory_key

    new = _validate(max_length=64)
    old = {k: v for k, v in new.items() if k not in ("long_context", "use_long_glm", "long_glm_factor")}
    assert config_differences(old, new) == []  # a run saved before these keys existed resumes as before
    longer = _validate(max_length=64, long_context={"method": "yarn"})
    diffs = config_differences(new, longer)
    assert diffs and all(is_trajectory_key(k) for k, _, _ in diffs)
