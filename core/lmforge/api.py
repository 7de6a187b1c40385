"""The Python API in the seeds' shape: ``FineTune(model=...).train_local(...)``."""

from __future__ import annotations

import copy
from typing import Any

from lmforge.config.spec import JobSpec
from lmforge.train.pipeline import TrainResult, run_training

# train_local keyword -> config key path
_KEYMAP = {
    "max_length": "max_length",
    "dtype": "dtype",
    "attn_implementation": "attn_implementation",
    "gradient_checkpointing": "gradient_checkpointing",
    "trust_remote_code": "trust_remote_code",
    "data_format": "data.format",
    "train_on_prompt": "data.train_on_prompt",
    "template": "data.template",
    "use_packed_training": "packing",
    "packing": "packing",
    "online_packing": "data.online_packing",
    "dynamic_batch": "dynamic_batch",
    "gpu_memory": "gpu_memory",
    "memory_margin": "memory_margin",
    "overwrite": "overwrite",
    "force_resume": "force_resume",
    "threads": "threads",
    "use_long_glm": "use_long_glm",
    "long_glm_factor": "long_glm_factor",
    "long_context": "long_context",
}


class FineTune:
    """A fine-tuning job for one model (a preset name or a checkpoint directory).

    ``config`` is an optional base config (a dict or a YAML path); keyword
    arguments of :meth:`train_local` override it.
    """

    def __init__(self, model: str, config: dict | str | None = None, **config_overrides: Any) -> None:
        from lmforge.config.schema import load_yaml

        base = load_yaml(config) if isinstance(config, str) else copy.deepcopy(config or {})
        base["model"] = model
        for key, value in config_overrides.items():
            base[key] = value
        self.config = base

    def build_config(self, train_fpath, output_dir: str, validation_fpath=None, peft: str | None = None,
                     peft_options: dict | None = None, **kwargs: Any) -> dict:
        """The config :meth:`train_local` would run, without running it."""
        from lmforge.config.schema import set_key

        cfg = copy.deepcopy(self.config)
        cfg["output_dir"] = output_dir
        cfg.setdefault("data", {})["train_file"] = train_fpath
        if validation_fpath is not None:
            cfg["data"]["valid_file"] = validation_fpath
        if peft is not None or peft_options:
            section = cfg.setdefault("peft", {})
            if peft is not None:
                section["method"] = peft
            section.update(peft_options or {})
        if "epoch" in kwargs:  # the seeds' spelling
            kwargs["num_train_epochs"] = kwargs.pop("epoch")
        if kwargs.pop("resume", False):
            cfg.setdefault("train", {})["resume_from_checkpoint"] = True
        for key, value in kwargs.items():
            if value is None:
                continue
            if key in _KEYMAP:
                set_key(cfg, _KEYMAP[key], value)
            else:  # everything else is a TrainingArguments field (validated)
                cfg.setdefault("train", {})[key] = value
        return cfg

    def train_local(self, train_fpath, output_dir: str, validation_fpath=None, peft: str | None = None,
                    peft_options: dict | None = None, **kwargs: Any) -> TrainResult:
        """Train in this process; returns a :class:`~lmforge.train.pipeline.TrainResult`.

        Keyword arguments: ``max_length``, ``dtype``, ``data_format``,
        ``train_on_prompt``, ``use_packed_training=True`` (= ``packing: true``),
        ``online_packing``, ``resume=True`` (continue the run in ``output_dir``),
        ``overwrite=True`` (replace it), ``force_resume=True``, ``epoch`` (= ``num_train_epochs``),
        ``dynamic_batch=True`` with ``gpu_memory`` / ``memory_margin`` (see docs/memory.md),
        ``long_context={...}`` or AntLLM's ``use_long_glm=True`` (with ``long_glm_factor``; the job
        trains at ``max_length x long_glm_factor``, see docs/long-context.md)
        and any ``transformers.TrainingArguments`` field (``max_steps``,
        ``learning_rate``, ``per_device_train_batch_size`` ...).
        """
        return run_training(self.build_spec(train_fpath, output_dir, validation_fpath, peft, peft_options, **kwargs))

    def build_spec(self, train_fpath, output_dir: str, validation_fpath=None, peft: str | None = None,
                   peft_options: dict | None = None, **kwargs: Any) -> JobSpec:
        """The validated, frozen :class:`~lmforge.config.spec.JobSpec` :meth:`train_local` would run."""
        from lmforge.config.spec import build_spec

        return build_spec(self.build_config(train_fpath, output_dir, validation_fpath, peft, peft_options, **kwargs))
