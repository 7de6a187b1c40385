"""What one training job is, below the pipeline and the run-start checks that both use it:
its result, its log line, the capability checks made before weights load, and the
resolved config recorded in ``lmforge.yaml``. The job itself is a
:class:`~lmforge.config.spec.JobSpec`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from lmforge import __version__
from lmforge.config.spec import JobSpec
from lmforge.errors import CapabilityError, LmforgeError
from lmforge.modeling.loading import ModelSource


TRAIN_LOG = "train_log.jsonl"
PARAMS_REPORT = "trainable_params.json"


@dataclass
class TrainResult:
    """What a finished job returns: where it wrote, and the losses it measured."""

    output_dir: str
    global_step: int
    train_loss: float | None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    params: dict = field(default_factory=dict)
    model: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)


GENERATION_METRIC_KEYS = ("eval_exact_match", "eval_bleu-4", "eval_rouge-1", "eval_rouge-2", "eval_rouge-l")


def log(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[lmforge] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# checks before loading weights


def check_capabilities(spec: JobSpec | Mapping, source: ModelSource, registry) -> None:
    """Refuse PEFT methods and features the family declares unsupported, with its reason.

    ``spec`` is the job's :class:`JobSpec` (or a config :func:`~lmforge.config.schema.validate` resolved).
    """
    if not isinstance(spec, JobSpec):
        spec = JobSpec.from_resolved(spec)
    fam = source.family
    method = registry.peft_method(spec.peft.method)
    cap = fam.capability(method.capability_key)
    if not cap.usable:
        raise CapabilityError(f"peft.method: {method.name!r} is not supported by the {fam.name!r} family: {cap.reason}")
    if cap.status == "experimental":
        log(f"warning: {method.name!r} on {fam.name!r} is experimental: {cap.reason}")
    if spec.model.gradient_checkpointing:
        gc = fam.capability("gradient_checkpointing")
        if not gc.usable:
            raise CapabilityError(f"gradient_checkpointing: not supported by {fam.name!r}: {gc.reason}")
    if spec.model.attn_implementation == "flash_attention_2":
        fa = fam.capability("flash_attention")
        if not fa.usable:
            raise CapabilityError(f"attn_implementation: flash attention is not supported by {fam.name!r}: {fa.reason}")
    if spec.packing.enabled:
        pk = fam.capability("packing")
        if not pk.usable:
            raise CapabilityError(f"packing: the {fam.name!r} family cannot be packed safely: {pk.reason}")
        if pk.status == "experimental":
            log(f"warning: packing on {fam.name!r} is experimental: {pk.reason}")
    if spec.long_context is not None:
        from lmforge.modeling.longctx import check

        check(fam, spec.long_context)  # the family and the method, with the family's reason
    for req in method.requires:
        import importlib.util

        if importlib.util.find_spec(req.replace("-", "_")) is None:
            raise LmforgeError(f"peft.method {method.name!r} needs the package {req!r}: pip install {req}")


def resolved_run_config(spec: JobSpec, source: ModelSource, registry) -> dict:
    """The config as written to ``lmforge.yaml``: resolved values plus plugin provenance, without the keys
    that only say how this run was started (:func:`lmforge.runs.rundir.strip_start_keys`)."""
    from lmforge.runs.rundir import strip_start_keys

    out = strip_start_keys(spec.to_dict())
    out["family"] = source.family.name
    out["lmforge_version"] = __version__

    def prov(kind: str, name: str) -> dict:
        rec = registry.plugin_of(kind, name)
        return {"name": name, "distribution": rec.distribution, "version": rec.version}

    out["plugins"] = {
        "family": prov("model_families", source.family.name),
        "peft": prov("peft_methods", spec.peft.method),
        "launcher": prov("launchers", spec.launcher.name),
    }
    if spec.data.format != "auto":
        out["plugins"]["data_format"] = prov("data_formats", spec.data.format)
    return out
