"""Registers the built-in ``analytic`` memory estimator and the ``lmforge estimate`` command.

Pure Python: neither registration nor the command imports torch (the estimator
is arithmetic on the family's :class:`~lmforge.plugins.descriptors.ArchSpec`).
"""

from __future__ import annotations

import json
from typing import Any

import click

from lmforge import hookimpl
from lmforge.plugins.descriptors import MemoryEstimator

ANALYTIC = MemoryEstimator(
    name="analytic",
    estimate="lmforge_builtins.estimator.analytic:estimate",
    description="exact parameter/gradient/optimizer bytes (ZeRO-aware) and a replay of what autograd saves; "
                "see docs/memory.md",
)


@hookimpl
def register_memory_estimators(register):
    register(ANALYTIC)


# ---------------------------------------------------------------------- command


def parse_peft_options(pairs: tuple[str, ...] | list[str], method: str, registry=None) -> dict[str, Any]:
    """``["r=8", "target_modules=q_proj,v_proj"]`` -> ``{"r": 8, "target_modules": ["q_proj", "v_proj"]}``.

    Values are checked against the method's option schema when the method is
    registered (types, choices, unknown names); otherwise numbers, booleans and
    comma-separated lists are recognised. Raises :class:`~lmforge.errors.ConfigError`.
    """
    from lmforge.plugins.descriptors import validate_options
    from lmforge.errors import ConfigError, PluginError

    raw: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--peft-opt {pair!r}: expected NAME=VALUE (lists comma-separated)")
        raw[key.strip()] = value.strip()
    schema = None
    if registry is not None:
        try:
            schema = registry.peft_method(method).options
        except PluginError:
            schema = None
    if schema:
        known = {o.name for o in schema}
        given = {k: v for k, v in raw.items() if k in known}
        try:
            checked = validate_options(schema, given, "--peft-opt")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        out = {k: checked[k] for k in given}
        unknown = [k for k in raw if k not in known]
        if unknown and not set(unknown) <= ESTIMATOR_ONLY_OPTIONS:
            from lmforge.errors import did_you_mean

            bad = [k for k in unknown if k not in ESTIMATOR_ONLY_OPTIONS][0]
            raise ConfigError(f"--peft-opt {bad}: not an option of {method!r}{did_you_mean(bad, known)}; "
                              f"its options: {', '.join(sorted(known))}")
        out.update({k: _guess(raw[k]) for k in unknown})
        return out
    return {k: _guess(v) for k, v in raw.items()}


# options the estimator reads that a method's schema may not declare
ESTIMATOR_ONLY_OPTIONS = {"upcast_non_quantized", "double_quant", "init_r", "encoder_hidden_size",
                          "prefix_projection", "use_dora", "num_layers", "trainable_modules", "extra_modules"}


def _guess(value: str) -> Any:
    low = value.lower()
    if low in ("true", "yes", "false", "no"):
        return low in ("true", "yes")
    if "," in value:
        return [v.strip() for v in value.split(",") if v.strip()]
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def build_job(arch_family, **kw) -> Any:
    """An :class:`~lmforge.modeling.memory.EstimateJob` from CLI-style keyword arguments."""
    from lmforge.modeling.memory import EstimateJob

    return EstimateJob(default_lora_targets=tuple(arch_family.default_lora_targets), **kw)


@click.command("estimate")
@click.option("--model", "-m", required=True, help="preset name or local checkpoint directory (only config.json is read)")
@click.option("--family", default=None, help="force a model family")
@click.option("--peft", default="full", show_default=True, help="PEFT method (full, freeze, lora, qlora, prefix, ...)")
@click.option("--peft-opt", "peft_opts", multiple=True, metavar="NAME=VALUE",
              help="a PEFT option, repeatable; lists comma-separated (target_modules=q_proj,v_proj)")
@click.option("--seq-len", type=int, default=2048, show_default=True, help="tokens per sample")
@click.option("--micro-batch", type=int, default=1, show_default=True, help="samples per device per forward pass")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="bf16", show_default=True,
              help="parameter dtype")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no", show_default=True,
              help="autocast with fp32 parameters (use with --dtype fp32)")
@click.option("--attn", type=click.Choice(["eager", "sdpa", "flash"]), default="sdpa", show_default=True,
              help="attention implementation")
@click.option("--grad-ckpt/--no-grad-ckpt", default=False, show_default=True, help="gradient checkpointing")
@click.option("--optimizer", type=click.Choice(["adamw", "adamw8bit", "sgd"]), default="adamw", show_default=True)
@click.option("--zero", type=click.IntRange(0, 3), default=0, show_default=True, help="DeepSpeed ZeRO stage")
@click.option("--offload", type=click.Choice(["none", "optimizer", "all"]), default="none", show_default=True,
              help="ZeRO CPU offload")
@click.option("--gpus", type=int, default=1, show_default=True, help="data-parallel processes (world size)")
@click.option("--gpu-memory", default=None, help="memory per device, e.g. 80GiB or 24GB: adds max_micro_batch")
@click.option("--margin", type=float, default=None, help="share of --gpu-memory kept free (default 0.10)")
@click.option("--overhead", default=None, help="framework overhead per device (default 1GiB on cuda, 0 on cpu)")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--padding/--no-padding", default=True, show_default=True,
              help="batches are padded (an attention mask is materialised); --no-padding for packed batches")
@click.option("--estimator", "estimator_name", default=None, help="a registered estimator (default analytic)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON object")
def estimate_cmd(model, family, peft, peft_opts, seq_len, micro_batch, dtype, mixed_precision, attn, grad_ckpt,
                 optimizer, zero, offload, gpus, gpu_memory, margin, overhead, device, padding, estimator_name,
                 as_json) -> None:
    """Estimate per-device training memory for MODEL without loading it (no torch).

    \b
    lmforge estimate --model llama-2-7b --peft lora --seq-len 4096 --micro-batch 4 \\
                     --zero 2 --gpus 8 --gpu-memory 80GiB
    """
    import sys

    from lmforge.errors import LmforgeError

    try:
        out = run_estimate(model=model, family=family, peft=peft, peft_opts=peft_opts, seq_len=seq_len,
                           micro_batch=micro_batch, dtype=dtype, mixed_precision=mixed_precision, attn=attn,
                           grad_ckpt=grad_ckpt, optimizer=optimizer, zero=zero, offload=offload, gpus=gpus,
                           gpu_memory=gpu_memory, margin=margin, overhead=overhead, device=device, padding=padding,
                           estimator_name=estimator_name)
    except LmforgeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(out["json"], indent=2))
    else:
        click.echo(out["text"])


def run_estimate(*, model: str, family: str | None = None, peft: str = "full", peft_opts=(), seq_len: int = 2048,
                 micro_batch: int = 1, dtype: str = "bf16", mixed_precision: str = "no", attn: str = "sdpa",
                 grad_ckpt: bool = False, optimizer: str = "adamw", zero: int = 0, offload: str = "none",
                 gpus: int = 1, gpu_memory: str | None = None, margin: float | None = None,
                 overhead: str | None = None, device: str = "cuda", padding: bool = True,
                 estimator_name: str | None = None, registry=None) -> dict:
    """What ``lmforge estimate`` prints, as ``{"json": {...}, "text": str}``."""
    from lmforge.modeling.memory import DEFAULT_MARGIN, format_size, get_estimator, max_micro_batch, parse_size
    from lmforge.modeling.loading import resolve_model
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    source = resolve_model(model, family=family, registry=reg)
    arch = source.family.arch_from_config(source.config)
    options = parse_peft_options(tuple(peft_opts), peft, reg)
    job = build_job(source.family, model_type=str(source.config.get("model_type") or ""), seq_len=seq_len, micro_batch=micro_batch, peft=peft, peft_options=options,
                    dtype=dtype, mixed_precision=mixed_precision, attn=attn, gradient_checkpointing=grad_ckpt,
                    optimizer=optimizer, zero_stage=zero, offload=offload, world_size=gpus, device=device,
                    padding=padding, overhead_bytes=parse_size(overhead) if overhead not in (None, "0") else
                    (0 if overhead == "0" else None))
    est = get_estimator(estimator_name, reg)
    bd = est(arch, job)
    out = bd.to_json()
    out["model"] = source.name
    out["family"] = source.family.name
    budget = parse_size(gpu_memory) if gpu_memory else None
    margin = DEFAULT_MARGIN if margin is None else float(margin)
    header = (f"{source.name} ({source.family.name}): {peft}, {gpus} x micro-batch {micro_batch} x {seq_len} tokens, "
              f"{dtype}{'' if mixed_precision == 'no' else ' + ' + mixed_precision + ' autocast'}, {attn}, "
              f"ZeRO-{zero}{'' if offload == 'none' else ' offload ' + offload}, {optimizer}, "
              f"checkpointing {'on' if grad_ckpt else 'off'}")
    lines = [header, bd.table(budget)]
    if budget is not None:
        mmb = max_micro_batch(arch, job, budget, margin, est)
        out["gpu_memory_bytes"] = budget
        out["margin"] = margin
        out["max_micro_batch"] = mmb
        lines.append(f"max micro-batch that fits {format_size(budget)} with a {margin:.0%} margin: {mmb}")
    for note in bd.notes:
        lines.append(f"note: {note}")
    return {"json": out, "text": "\n".join(lines)}


@hookimpl
def register_commands(cli):
    cli.add_command(estimate_cmd)
