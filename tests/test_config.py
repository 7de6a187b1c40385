"""Config validation: every mistake fails before a model is loaded, naming the key."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import lmforge.train.pipeline as training
from lmforge.config.schema import apply_overrides, load_yaml, parse_override, validate
from lmforge.errors import ConfigError

DATA = "examples/data/train.jsonl"


def base(**over):
    cfg = {"model": "tiny-llama", "output_dir": "/tmp/unused", "data": {"train_file": DATA}}
    cfg.update(over)
    return cfg


@pytest.fixture
def no_model_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model must not be loaded for an invalid config")

    monkeypatch.setattr(training, "load_model", boom)


CASES = [
    (base(modle="x"), r"modle: unknown key \(did you mean 'model'\?\)"),
    (base(max_length="long"), r"max_length: expected int, got str 'long'"),
    (base(max_length=0), r"max_length: must be positive"),
    (base(dtype="fp8"), r"dtype: 'fp8' is not one of"),
    (base(peft={"method": "loar"}), r"peft.method: unknown peft method 'loar' \(did you mean 'lora'\?\)"),
    (base(peft={"method": "lora", "alpah": 16}), r"peft.alpah: unknown option \(did you mean 'alpha'\?\)"),
    (base(peft={"method": "lora", "r": "eight"}), r"peft.r: expected int, got str 'eight'"),
    (base(peft={"method": "lora", "bias": "some"}), r"peft.bias: 'some' is not one of"),
    (base(data={"train_fle": DATA}), r"data.train_fle: unknown key \(did you mean 'train_file'\?\)"),
    (base(data={}), r"data.train_file: required key is missing"),
    (base(data={"train_file": DATA, "format": "alpacca_xyz"}), r"data.format: unknown data format 'alpacca_xyz'"),
    (base(train={"max_step": 10}), r"train.max_step: not a transformers.TrainingArguments field \(did you mean 'max_steps'\?\)"),
    (base(train={"max_steps": "ten"}), r"train.max_steps: expected int, got str 'ten'"),
    (base(train={"output_dir": "x"}), r"train.output_dir: not allowed here"),
    (base(launcher={"name": "lokal"}), r"launcher.name: unknown launcher 'lokal' \(did you mean 'local'\?\)"),
    (base(data="file.jsonl"), r"data: expected a mapping"),
    (base(model="tiny-lama"), r"model: 'tiny-lama' is neither a local checkpoint directory nor a known preset \(did you mean 'tiny-llama'\?\)"),
    (base(family="llamma"), r"family: unknown model family 'llamma' \(did you mean 'llama'\?\)"),
]


@pytest.mark.parametrize("cfg,message", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_config_fails_before_model_load(cfg, message, no_model_load):
    with pytest.raises(ConfigError, match=message):
        training.run_training(cfg)


def test_required_model_key():
    with pytest.raises(ConfigError, match=r"^model: required key is missing"):
        validate({"data": {"train_file": DATA}})


def test_defaults_are_filled_and_peft_options_resolved():
    cfg = validate(base(peft={"method": "lora", "r": "4"}))
    assert cfg["peft"] == {"method": "lora", "r": 4, "alpha": 16.0, "dropout": 0.05, "target_modules": "default",
                           "bias": "none", "modules_to_save": None, "use_rslora": False}
    assert cfg["max_length"] == 512 and cfg["launcher"]["name"] == "local" and cfg["data"]["format"] == "auto"


def test_overrides_parse_yaml_values():
    assert parse_override("train.max_steps=10") == (["train", "max_steps"], 10)
    assert parse_override("peft.target_modules=[q_proj, v_proj]") == (["peft", "target_modules"], ["q_proj", "v_proj"])
    cfg = apply_overrides(base(), ["train.learning_rate=1e-4", "peft.method=lora", "data.valid_file=v.jsonl"])
    assert cfg["train"]["learning_rate"] == 1e-4 and cfg["peft"]["method"] == "lora"
    assert cfg["data"] == {"train_file": DATA, "valid_file": "v.jsonl"}
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("train.max_steps")


def test_yaml_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: tiny-llama\ndata:\n  train_file: [a, b\n")
    with pytest.raises(ConfigError, match=rf"{p}:\d+: invalid YAML"):
        load_yaml(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(p)


def test_cli_reports_config_errors_without_traceback(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(f"model: tiny-llama\noutput_dir: {tmp_path}/o\ndata: {{train_file: {DATA}}}\npeft: {{method: lora, rr: 4}}\n")
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(p)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert "error: peft.rr: unknown option (did you mean 'r'?)" in res.stderr
    assert "Traceback" not in res.stderr


TRAIN_CASES = [
    ({"optim": "adamw_torh"}, r"^error: train.optim: 'adamw_torh' is not one of transformers' OptimizerNames \(did you mean 'adamw_torch'\?\)"),
    ({"lr_scheduler_type": "cosin"}, r"^error: train.lr_scheduler_type: 'cosin' is not one of transformers' SchedulerType \(did you mean 'cosine'\?\)"),
    ({"save_strategy": False}, r"^error: train.save_strategy: YAML reads an unquoted no as False; write 'no' in quotes"),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"},
     r"^error: train: --load_best_model_at_end requires the save and eval strategy to match"),
]


@pytest.mark.parametrize("train,message", TRAIN_CASES, ids=[str(c[0])[:40] for c in TRAIN_CASES])
def test_dry_run_checks_training_arguments(train, message, tmp_path):
    """--dry-run (and the start of a run) check names and combinations: one error line, no traceback."""
    import yaml
    from click.testing import CliRunner

    from lmforge.cli.main import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": "tiny-llama", "data": {"train_file": DATA}, "train": train}))
    res = CliRunner().invoke(cli, ["train", str(cfg), "--dry-run"])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert re.match(message, res.output), res.output


def test_run_start_checks_optimizer_before_data(no_model_load):
    with pytest.raises(ConfigError, match=r"^train.optim: 'adamw_torh' is not one of transformers' OptimizerNames"):
        training.run_training(base(train={"optim": "adamw_torh"}))


def test_dry_run_accepts_a_good_train_section(tmp_path):
    import yaml
    from click.testing import CliRunner

    from lmforge.cli.main import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": "tiny-llama", "data": {"train_file": DATA},
                                   "train": {"optim": "adamw_torch", "lr_scheduler_type": "linear",
                                             "save_strategy": "no"}}))
    res = CliRunner().invoke(cli, ["train", str(cfg), "--dry-run"])
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- the typed, immutable job spec
def test_spec_is_immutable():
    import dataclasses

    from lmforge.config.spec import build_spec

    spec = build_spec(base(peft={"method": "lora", "r": 4}, train={"report_to": ["none"]}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.model.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.peft.options["r"] = 8  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.config["model"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.config["data"]["train_file"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.train.arguments["max_steps"] = 1  # type: ignore[index]
    assert spec.train.args["report_to"] == ("none",)  # lists are frozen too
    copy = spec.to_dict()  # a plain copy; changing it leaves the spec alone
    copy["peft"]["r"] = 8
    assert spec.peft.options["r"] == 4 and spec.to_dict()["peft"]["r"] == 4


def test_spec_sections_cover_the_schema_and_keep_the_resolved_config():
    import dataclasses

    from lmforge.config.spec import SECTIONS, build_spec, schema_keys

    spec = build_spec(base(peft={"method": "lora", "r": 4}, launcher={"name": "torchrun", "rdzv_id": "x"}))
    assert spec.to_dict() == validate(base(peft={"method": "lora", "r": 4},
                                           launcher={"name": "torchrun", "rdzv_id": "x"}))
    keys = {f.metadata["key"] for kind in SECTIONS.values() for f in dataclasses.fields(kind) if "key" in f.metadata}
    covered = {k for k in schema_keys() if k in keys or f"{k.split('.')[0]}.*" in keys}
    assert schema_keys() - covered == {"plugins", "lmforge_version"}  # provenance, not job settings
    assert spec.model.name == "tiny-llama" and spec.data.train_file == DATA and spec.run.output_dir == "/tmp/unused"
    assert spec.peft.method == "lora" and dict(spec.peft.options)["r"] == 4 and "method" not in spec.peft.options
    assert spec.launcher.name == "torchrun" and spec.launcher.options["rdzv_id"] == "x"
    assert "nnodes" not in spec.launcher.options and spec.launcher.world_size == 1


def test_training_arguments_is_the_one_place_for_trainer_keywords():
    from lmforge.config.spec import JobSpec, training_arguments
    from lmforge.config.trainargs import TRAIN_DEFAULTS

    cfg = validate(base(data={"train_file": DATA, "valid_file": DATA}, packing=True, gradient_checkpointing=True,
                        train={"max_steps": 3, "resume_from_checkpoint": True, "deepspeed": "/x/ds.json"}))
    args = training_arguments(JobSpec.from_resolved(cfg, cuda=False), cuda=False)
    assert args["max_steps"] == 3 and args["deepspeed"] == "/x/ds.json"  # user's and launcher's train: keys
    assert args["learning_rate"] == TRAIN_DEFAULTS["learning_rate"] and args["output_dir"] == "/tmp/unused"
    assert "resume_from_checkpoint" not in args  # Trainer.train's argument
    assert args["eval_strategy"] == "steps" and args["eval_steps"] == TRAIN_DEFAULTS["save_steps"]
    assert args["gradient_checkpointing"] is True and args["remove_unused_columns"] is False
    assert args["use_cpu"] is True and args["dataloader_pin_memory"] is False
    assert "use_cpu" not in training_arguments(JobSpec.from_resolved(cfg, cuda=True), cuda=True)


def test_dry_run_validates_once(tmp_path):
    from unittest import mock

    import yaml
    from click.testing import CliRunner

    import lmforge.config.schema as schema
    import lmforge.config.spec as specmod
    from lmforge.cli.main import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": "tiny-llama", "data": {"train_file": DATA}}))
    validate_ = mock.Mock(wraps=schema.validate)  # counted wherever it is called from
    with mock.patch.object(schema, "validate", validate_), mock.patch.object(specmod, "validate", validate_), \
            mock.patch.object(specmod, "training_arguments", wraps=specmod.training_arguments) as targs, \
            mock.patch.object(specmod.trainargs, "check_names", wraps=specmod.trainargs.check_names) as names, \
            mock.patch.object(specmod.trainargs, "check_combination",
                              wraps=specmod.trainargs.check_combination) as combination:
        res = CliRunner().invoke(cli, ["train", str(cfg), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert (validate_.call_count, targs.call_count, names.call_count, combination.call_count) == (1, 1, 1, 1)


def test_run_training_does_not_validate_a_spec_again(monkeypatch):
    import lmforge.config.spec as specmod

    spec = specmod.build_spec(base())
    calls = []
    monkeypatch.setattr(specmod, "validate", lambda *a, **k: calls.append("validate"))
    monkeypatch.setattr(specmod, "training_arguments", lambda *a, **k: calls.append("training_arguments"))

    class Reached(Exception):
        pass

    def stop(*a, **k):
        raise Reached

    monkeypatch.setattr(training, "resolve_model", stop)
    with pytest.raises(Reached):
        training.run_training(spec)
    assert calls == []
