"""`lmforge export --format transformers`: ChatGLM2/3 and GLM-4 load in plain transformers, same logits."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from glm_testing import PRESET, load_preset


def saved_checkpoint(tmp_path, variant):
    from lmforge.modeling.loading import save_model

    model, tok, fam = load_preset(variant)
    path = str(tmp_path / f"{variant}-ckpt")
    save_model(model, tok, fam, path)
    return path, model


def probe():
    return torch.tensor([[5, 17, 200, 31, 77, 402, 9]])


@pytest.mark.parametrize("variant", ["chatglm2", "chatglm3", "glm4"])
def test_export_loads_in_plain_transformers_with_the_same_logits(tmp_path, variant):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmforge.cli.main import build_cli

    ckpt, model = saved_checkpoint(tmp_path, variant)
    out = str(tmp_path / "export")
    res = CliRunner().invoke(build_cli(), ["export", ckpt, "-o", out, "--format", "transformers"])
    assert res.exit_code == 0, res.output
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model_type"] == "glm" and "auto_map" not in cfg
    assert AutoConfig.from_pretrained(out).architectures == ["GlmForCausalLM"]
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False, dtype=torch.float32).eval()
    assert type(plain).__name__ == "GlmForCausalLM"
    assert not any(f.endswith(".py") for f in os.listdir(out))
    with torch.no_grad():
        torch.testing.assert_close(plain(probe()).logits, model.eval()(probe()).logits, rtol=1e-4, atol=1e-5)


def test_lora_run_is_merged_then_exported(tmp_path):
    from transformers import AutoModelForCausalLM

    import lmforge
    from lmforge.api import FineTune
    from lmforge.modeling.export import export_run

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(8)))
    run = str(tmp_path / "run")
    FineTune(model=PRESET["chatglm3"]).train_local(train_fpath=str(data), output_dir=run, peft="lora", max_steps=2,
                                                   per_device_train_batch_size=4, learning_rate=5e-2, report_to=[],
                                                   save_strategy="no", disable_tqdm=True, threads=1, max_length=32)
    ref, _ = lmforge.load(run)
    out = export_run(run, str(tmp_path / "export"))
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(probe()).logits, ref(probe()).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["glm", "chatglm"])
def test_variants_transformers_lacks_are_refused_with_what_loads_them(tmp_path, variant):
    from lmforge.cli.main import build_cli

    ckpt, _ = saved_checkpoint(tmp_path, variant)
    res = CliRunner().invoke(build_cli(), ["export", ckpt, "-o", str(tmp_path / "export")])
    assert res.exit_code == 2
    line = res.output.strip()
    assert line.startswith("error: export: transformers has no architecture") and "\n" not in line
    assert "lmforge" in line and "trust_remote_code" in line
