"""Memory estimation: the job an estimator prices, the breakdown it returns, and dynamic batch.

Pure Python (no torch): ``lmforge estimate`` and the training pipeline's
dynamic-batch planner run before any model is loaded. The numbers themselves
come from a registered :class:`~lmforge.plugins.descriptors.MemoryEstimator` (the
built-in one is ``analytic``, in ``lmforge_builtins.estimator``); this module
holds what every estimator shares:

- :class:`EstimateJob`: the training job being priced (PEFT method, dtypes,
  optimizer, ZeRO, attention kernel, sequence length, micro-batch ...);
- :class:`MemoryBreakdown`: bytes per device, by category, and the peak;
- :func:`max_micro_batch` and :func:`plan_dynamic_batch`: the largest
  micro-batch that fits a budget, and the gradient accumulation that keeps the
  global batch;
- :func:`parse_size` / :func:`format_size`: ``"80GiB"`` <-> bytes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from lmforge.errors import ConfigError, LmforgeError

DEFAULT_ESTIMATOR = "analytic"
DEFAULT_MARGIN = 0.10
"""Share of the budget dynamic batch keeps free for allocator fragmentation and what no model sees."""

CUDA_CONTEXT_BYTES = 1 << 30
"""Default framework overhead per CUDA device: the CUDA context and kernel images
(~0.5 GiB on recent drivers with lazy loading), cuBLAS/cuDNN workspaces and the
NCCL communicator buffers. Override with ``EstimateJob.overhead_bytes``."""

DTYPES = ("fp32", "bf16", "fp16")
ATTENTION = ("eager", "sdpa", "flash")
OPTIMIZERS = ("adamw", "adamw8bit", "sgd")
OFFLOAD = ("none", "optimizer", "all")

# --------------------------------------------------------------------------
# sizes

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}


def parse_size(text: str | int | float) -> int:
    """``"80GiB"`` -> 85899345920; ``"40GB"`` -> 40e9; plain numbers are bytes.

    Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB) units, case-insensitive,
    optional space. Raises :class:`ConfigError` for anything else.
    """
    if isinstance(text, bool):
        raise ConfigError(f"memory size: expected a size like '80GiB', got {text!r}")
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ConfigError(f"memory size must be positive, got {text!r}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ConfigError(f"memory size: cannot read {text!r}; write e.g. 80GiB, 24GB or 16000MiB")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ConfigError(f"memory size must be positive, got {text!r}")
    return int(value)


def format_size(n: float) -> str:
    """Bytes as a short binary-unit string: ``1.50 GiB``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


# --------------------------------------------------------------------------
# the job


@dataclass(frozen=True)
class EstimateJob:
    """A training job as the estimator prices it (one optimizer step of one micro-batch).

    ``dtype`` is the parameter dtype. ``mixed_precision`` (``"bf16"``/``"fp16"``)
    means fp32 parameters with autocast (what ``transformers.Trainer(bf16=True)``
    does for an fp32 model); it is ignored for ZeRO, where DeepSpeed keeps
    16-bit parameters and fp32 master weights instead. ``attn`` is
    ``eager``/``sdpa``/``flash``. ``padding`` says whether batches carry an
    attention mask with padding (the mask is then materialised; packed or
    unpadded batches and flash attention have none). ``device`` is ``cuda`` or
    ``cpu`` (dropout masks and attention kernels differ). ``peft_options`` are
    the method's options (``r``, ``target_modules``, ``num_virtual_tokens``,
    ``num_layers`` ...); ``default_lora_targets`` is the family's choice, used
    for ``target_modules: default``. ``overhead_bytes`` overrides the per-device
    framework overhead (default: :data:`CUDA_CONTEXT_BYTES` on CUDA, 0 on CPU).
    ``optimizer_impl`` is how the optimizer steps (``fused``: HF Trainer's default
    ``adamw_torch_fused``; ``foreach``; ``single``), which sets its transient memory.
    ``param_groups`` is ``hf`` (transformers' Trainer: no weight decay for biases and
    norms, two groups) or ``single``; ZeRO pads each group. ``model_type`` is the
    checkpoint's ``config.json`` ``model_type`` (lets an estimator pick the forward
    pass it replays).
    """

    seq_len: int = 2048
    micro_batch: int = 1
    peft: str = "full"
    peft_options: Mapping[str, Any] = field(default_factory=dict)
    default_lora_targets: tuple[str, ...] = ()
    dtype: str = "bf16"
    mixed_precision: str = "no"
    optimizer: str = "adamw"
    optimizer_impl: str = "fused"
    momentum: float = 0.0
    zero_stage: int = 0
    offload: str = "none"
    world_size: int = 1
    gradient_checkpointing: bool = False
    attn: str = "sdpa"
    padding: bool = True
    device: str = "cuda"
    overhead_bytes: int | None = None
    param_groups: str = "hf"
    model_type: str = ""

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, allowed: Sequence) -> None:
            raise ConfigError(f"estimate: {key} must be one of {', '.join(map(str, allowed))}, got {value!r}")

        if self.dtype not in DTYPES:
            bad("dtype", self.dtype, DTYPES)
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            bad("mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))
        if self.attn not in ATTENTION:
            bad("attn", self.attn, ATTENTION)
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", self.optimizer, OPTIMIZERS)
        if self.optimizer_impl not in ("fused", "foreach", "single"):
            bad("optimizer_impl", self.optimizer_impl, ("fused", "foreach", "single"))
        if self.offload not in OFFLOAD:
            bad("offload", self.offload, OFFLOAD)
        if self.zero_stage not in (0, 1, 2, 3):
            bad("zero_stage", self.zero_stage, (0, 1, 2, 3))
        if self.device not in ("cuda", "cpu"):
            bad("device", self.device, ("cuda", "cpu"))
        if self.param_groups not in ("hf", "single"):
            bad("param_groups", self.param_groups, ("hf", "single"))
        for key in ("seq_len", "micro_batch", "world_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"estimate: {key} must be at least 1, got {getattr(self, key)!r}")
        if self.offload == "all" and self.zero_stage != 3:
            raise ConfigError("estimate: offload 'all' (parameters too) needs ZeRO stage 3; "
                              "use offload 'optimizer' with stages 1-2")
        if self.offload != "none" and self.zero_stage == 0:
            raise ConfigError("estimate: CPU offload needs ZeRO (stage 1, 2 or 3)")

    def with_(self, **changes: Any) -> "EstimateJob":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @property
    def overhead(self) -> int:
        if self.overhead_bytes is not None:
            return int(self.overhead_bytes)
        return CUDA_CONTEXT_BYTES if self.device == "cuda" else 0

    def to_json(self) -> dict:
        out = asdict(self)
        out["peft_options"] = dict(self.peft_options)
        out["default_lora_targets"] = list(self.default_lora_targets)
        return out


# --------------------------------------------------------------------------
# the breakdown


@dataclass
class MemoryBreakdown:
    """Bytes on one device (every data-parallel rank is alike) for one training step.

    ``params_bytes``/``grads_bytes``/``optimizer_bytes`` are resident (optimizer
    states include fp32 master weights where the setup keeps them);
    ``activations_bytes`` are the tensors the forward pass saves for backward,
    excluding the logits/loss block; ``logits_bytes`` is that block at its
    largest (log-probabilities and their gradients, ~12-14 bytes per token per
    vocabulary entry); ``transient_bytes`` is the largest short-lived allocation
    outside those (optimizer step temporaries, the recompute of one checkpointed
    layer, gradient buckets); ``overhead_bytes`` the framework term; ``peak_bytes``
    the estimated peak of allocated memory plus overhead. ``cpu_bytes`` is host
    memory taken by CPU offload. ``details`` holds sub-terms; ``notes`` says what
    was assumed.
    """

    total_params: int
    trainable_params: int
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    logits_bytes: int
    transient_bytes: int
    overhead_bytes: int
    peak_bytes: int
    peak_phase: str = ""
    cpu_bytes: int = 0
    estimator: str = DEFAULT_ESTIMATOR
    job: EstimateJob | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    FIELDS = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "logits_bytes",
              "transient_bytes", "overhead_bytes", "peak_bytes")

    def fits(self, budget_bytes: int, margin: float = 0.0) -> bool:
        """True when the peak fits ``budget_bytes`` with ``margin`` (a fraction) kept free."""
        return self.peak_bytes <= budget_bytes * (1.0 - margin)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "estimator": self.estimator,
            "per_device": True,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
        }
        for key in self.FIELDS:
            out[key] = int(getattr(self, key))
        out["peak_phase"] = self.peak_phase
        out["cpu_bytes"] = int(self.cpu_bytes)
        out["details"] = dict(self.details)
        out["notes"] = list(self.notes)
        if self.job is not None:
            out["job"] = self.job.to_json()
        return out

    def table(self, budget_bytes: int | None = None) -> str:
        """A readable table of the breakdown (what ``lmforge estimate`` prints)."""
        rows = [
            ("parameters", self.params_bytes, f"{self.total_params:,} total, {self.trainable_params:,} trainable"),
            ("gradients", self.grads_bytes, ""),
            ("optimizer states", self.optimizer_bytes, self.details.get("optimizer_note", "")),
            ("activations", self.activations_bytes, self.details.get("activations_note", "")),
            ("logits and loss", self.logits_bytes, self.details.get("logits_note", "")),
            ("transient peak", self.transient_bytes, self.details.get("transient_note", "")),
            ("framework overhead", self.overhead_bytes, "CUDA context, workspaces" if self.overhead_bytes else ""),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {format_size(value):>12}  {note}".rstrip() for name, value, note in rows]
        lines.append("-" * (width + 14))
        lines.append(f"{'peak per device':<{width}}  {format_size(self.peak_bytes):>12}  at {self.peak_phase}".rstrip())
        if self.cpu_bytes:
            lines.append(f"{'host memory (offload)':<{width}}  {format_size(self.cpu_bytes):>12}")
        if budget_bytes is not None:
            share = self.peak_bytes / budget_bytes
            lines.append(f"{'budget':<{width}}  {format_size(budget_bytes):>12}  {share:.0%} used")
        return "\n".join(lines)


EstimateFn = Callable[[Any, EstimateJob], MemoryBreakdown]


def get_estimator(name: str | None = None, registry=None) -> EstimateFn:
    """The ``estimate`` callable of the registered estimator ``name`` (default :data:`DEFAULT_ESTIMATOR`)."""
    from lmforge.plugins.descriptors import resolve_ref
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    return resolve_ref(reg.estimator(name or DEFAULT_ESTIMATOR).estimate)


# --------------------------------------------------------------------------
# dynamic batch

MAX_SEARCH_BATCH = 1 << 16


def max_micro_batch(arch: Any, job: EstimateJob, budget_bytes: int, margin: float = 0.0,
                    estimate: EstimateFn | None = None, limit: int = MAX_SEARCH_BATCH) -> int:
    """The largest micro-batch whose estimated peak fits ``budget_bytes`` less ``margin``; 0 if none.

    Memory grows monotonically with the micro-batch, so this doubles then bisects.
    """
    est = estimate or get_estimator()

    def fits(b: int) -> bool:
        return est(arch, job.with_(micro_batch=b)).fits(budget_bytes, margin)

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        return lo
    while hi - lo > 1:  # lo fits, hi does not
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def fit_suggestions(arch: Any, job: EstimateJob, budget_bytes: int, margin: float = 0.0,
                    estimate: EstimateFn | None = None) -> list[str]:
    """Changes to ``job`` that would make micro-batch 1 fit, each with its estimated peak."""
    est = estimate or get_estimator()
    j1 = job.with_(micro_batch=1)
    tries: list[tuple[str, dict]] = []
    if not job.gradient_checkpointing:
        tries.append(("turn on gradient checkpointing (gradient_checkpointing: true)", {"gradient_checkpointing": True}))
    if job.attn == "eager":
        tries.append(("use sdpa attention (attn_implementation: sdpa)", {"attn": "sdpa"}))
    if job.padding and job.attn != "flash":
        tries.append(("pack sequences or use flash attention (no materialised attention mask)", {"padding": False}))
    if job.optimizer == "adamw":
        tries.append(("use 8-bit AdamW (train.optim: adamw_bnb_8bit)", {"optimizer": "adamw8bit"}))
    if job.world_size > 1:
        for stage in range(max(job.zero_stage, 0) + 1, 4):
            tries.append((f"use DeepSpeed ZeRO stage {stage}", {"zero_stage": stage}))
    if job.zero_stage >= 1 and job.offload == "none":
        tries.append(("offload optimizer states to CPU (ZeRO offload_optimizer)", {"offload": "optimizer"}))
    if job.zero_stage == 3 and job.offload != "all":
        tries.append(("offload parameters and optimizer states to CPU (ZeRO-3 offload)", {"offload": "all"}))
    if job.peft in ("full", "freeze"):
        tries.append(("train LoRA adapters instead (peft.method: lora)", {"peft": "lora", "peft_options": {}}))
    if job.peft in ("full", "freeze", "lora"):
        tries.append(("train QLoRA (peft.method: qlora, 4-bit base)", {"peft": "qlora", "peft_options": dict(job.peft_options) if job.peft == "lora" else {}}))
    if job.dtype == "fp32" and job.mixed_precision == "no":
        tries.append(("load the model in bf16 (dtype: bf16)", {"dtype": "bf16"}))
    out: list[str] = []

    def check(text: str, change: dict) -> bool:
        try:
            bd = est(arch, j1.with_(**change))
        except (ConfigError, LmforgeError):
            return False
        if bd.fits(budget_bytes, margin):
            out.append(f"{text}: peak {format_size(bd.peak_bytes)}")
            return True
        return False

    fitted = [check(text, change) for text, change in tries]
    if not any(fitted) and not job.gradient_checkpointing:
        # no single change is enough: try each together with gradient checkpointing
        for text, change in tries[1:]:
            check(f"turn on gradient checkpointing and {text}", {**change, "gradient_checkpointing": True})
    if job.seq_len > 1:
        lo, hi = 0, job.seq_len
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if est(arch, j1.with_(seq_len=mid)).fits(budget_bytes, margin):
                lo = mid
            else:
                hi = mid
        if lo >= 1:
            out.append(f"shorten sequences to at most {lo} tokens (max_length: {lo})")
    return out


def plan_dynamic_batch(arch: Any, job: EstimateJob, budget_bytes: int, global_batch: int,
                       margin: float = DEFAULT_MARGIN,
                       estimate: EstimateFn | None = None) -> tuple[int, int, MemoryBreakdown]:
    """Pick the micro-batch for ``job`` and the gradient accumulation that keeps ``global_batch``.

    ``global_batch`` is samples per optimizer step over all ``job.world_size``
    ranks (per-device batch x accumulation x world size). Returns
    ``(micro_batch, grad_accum, breakdown)`` where ``micro_batch`` is the largest
    divisor of ``global_batch / world_size`` that fits ``budget_bytes`` with
    ``margin`` kept free, and ``breakdown`` is the estimate at that micro-batch.
    Called by the training pipeline before the model is loaded. Raises
    :class:`LmforgeError` carrying the micro-batch-1 breakdown and the changes
    that would make it fit when even micro-batch 1 does not.
    """
    est = estimate or get_estimator()
    if global_batch < job.world_size or global_batch % job.world_size:
        raise ConfigError(f"dynamic_batch: the global batch ({global_batch}) must be a multiple of the "
                          f"number of processes ({job.world_size})")
    per_rank = global_batch // job.world_size
    fit = max_micro_batch(arch, job, budget_bytes, margin, est, limit=per_rank)
    if fit == 0:
        bd = est(arch, job.with_(micro_batch=1))
        raise DoesNotFitError(bd, budget_bytes, margin, fit_suggestions(arch, job, budget_bytes, margin, est))
    micro = max(d for d in range(1, min(fit, per_rank) + 1) if per_rank % d == 0)
    return micro, per_rank // micro, est(arch, job.with_(micro_batch=micro))


# --------------------------------------------------------------------------
# the training pipeline

MEMORY_ESTIMATE = "memory_estimate.json"

_OPTIMIZERS = {"sgd": "sgd"}
_8BIT = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adamw_torch_8bit", "adamw_anyprecision_8bit")


def _deepspeed_config(value: Any) -> dict:
    if not value:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    import json
    import os

    if isinstance(value, str) and os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return json.load(f)
    return {}


def job_from_config(cfg: Mapping, source: Any, *, micro_batch: int, world_size: int, device: str) -> EstimateJob:
    """The :class:`EstimateJob` of a validated training config (``lmforge.config.schema.validate`` output).

    ``dtype: auto`` is bf16 on CUDA and fp32 on CPU (as loading does); ``train.bf16/fp16``
    on an fp32 model is autocast mixed precision; ``train.optim`` picks the optimizer;
    ``train.deepspeed`` (a dict or a JSON file) gives the ZeRO stage and offload;
    ``packing`` means no padded attention mask.
    """
    train = dict(cfg.get("train") or {})
    dtype = cfg.get("dtype") or "auto"
    if dtype == "auto":
        dtype = "bf16" if device == "cuda" else "fp32"
    mixed = "no"
    if dtype == "fp32" and train.get("bf16"):
        mixed = "bf16"
    elif dtype == "fp32" and train.get("fp16"):
        mixed = "fp16"
    optim = str(train.get("optim") or "adamw_torch_fused")
    optimizer = "sgd" if optim == "sgd" else ("adamw8bit" if optim in _8BIT else "adamw")
    impl = "fused" if optim.endswith("fused") or optimizer != "adamw" else ("foreach" if device == "cuda" else "single")
    ds = _deepspeed_config(train.get("deepspeed"))
    zero = ds.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0) or 0) if ds else 0
    off_opt = (zero.get("offload_optimizer") or {}).get("device", "none")
    off_par = (zero.get("offload_param") or {}).get("device", "none")
    offload = "all" if off_par not in (None, "none") and stage == 3 else ("optimizer" if off_opt not in (None, "none") else "none")
    ds_bf16 = (ds.get("bf16") or {}).get("enabled")
    if ds_bf16 == "auto":  # the Trainer fills "auto" from train.bf16
        ds_bf16 = bool(train.get("bf16"))
    if stage and dtype == "fp32" and (ds_bf16 or mixed == "bf16"):
        dtype, mixed = "bf16", "no"
    attn = {"flash_attention_2": "flash", "flash_attention_3": "flash", "eager": "eager"}.get(
        cfg.get("attn_implementation") or "sdpa", "sdpa")
    peft = dict(cfg.get("peft") or {})
    method = peft.pop("method", "full") or "full"
    return EstimateJob(
        seq_len=int(cfg.get("max_length") or 512), micro_batch=micro_batch, peft=method, peft_options=peft,
        default_lora_targets=tuple(source.family.default_lora_targets), dtype=dtype, mixed_precision=mixed,
        optimizer=optimizer, optimizer_impl=impl, zero_stage=stage, offload=offload if stage else "none",
        world_size=world_size, gradient_checkpointing=bool(cfg.get("gradient_checkpointing")), attn=attn,
        padding=not cfg.get("packing"), device=device, model_type=str(source.config.get("model_type") or ""),
    )


def plan_for_training(cfg: Mapping, source: Any, train_kwargs: dict, registry=None, log: Callable = print) -> MemoryBreakdown | None:
    """Called by the training pipeline after the config is validated and before the model is loaded.

    Estimates the job and writes the breakdown to ``OUTPUT_DIR/memory_estimate.json``
    (rank 0). With ``dynamic_batch: true`` it also sets
    ``per_device_train_batch_size`` and ``gradient_accumulation_steps`` in
    ``train_kwargs`` (the ``TrainingArguments`` keyword arguments) to the largest
    micro-batch that fits ``gpu_memory`` (default: the CUDA device's total
    memory; required on CPU-only machines) less ``memory_margin``, keeping the
    global batch; raises :class:`DoesNotFitError` before any weights load when
    micro-batch 1 does not fit. Without it, an estimator failure is logged, not raised.
    """
    import json
    import os

    world = int(os.environ.get("WORLD_SIZE") or 0) or max(
        1, int((cfg.get("launcher") or {}).get("nproc_per_node", 1)) * int((cfg.get("launcher") or {}).get("nnodes", 1)))
    device, total = _device_memory()
    dynamic = bool(cfg.get("dynamic_batch"))
    budget = parse_size(cfg["gpu_memory"]) if cfg.get("gpu_memory") not in (None, "") else total
    margin = DEFAULT_MARGIN if cfg.get("memory_margin") is None else float(cfg["memory_margin"])
    micro = int(train_kwargs.get("per_device_train_batch_size") or 8)
    accum = int(train_kwargs.get("gradient_accumulation_steps") or 1)
    try:
        arch = source.family.arch_from_config(source.config)
        job = job_from_config(cfg, source, micro_batch=micro, world_size=world, device=device)
        estimate = get_estimator(None, registry)
    except (LmforgeError, ValueError, KeyError, TypeError) as exc:
        if dynamic:
            raise
        log(f"memory estimate skipped: {exc}")
        return None
    plan: dict[str, Any] = {}
    if dynamic:
        if budget is None:
            raise ConfigError("gpu_memory: dynamic_batch needs the memory budget per device on a machine without "
                              "CUDA (e.g. gpu_memory: 24GiB)")
        global_batch = micro * accum * world
        new_micro, new_accum, bd = plan_dynamic_batch(arch, job, budget, global_batch, margin, estimate)
        train_kwargs["per_device_train_batch_size"] = new_micro
        train_kwargs["gradient_accumulation_steps"] = new_accum
        plan = {"dynamic_batch": True, "global_batch": global_batch, "micro_batch": new_micro,
                "gradient_accumulation_steps": new_accum, "budget_bytes": budget, "margin": margin,
                "configured_micro_batch": micro, "configured_gradient_accumulation_steps": accum}
        log(f"dynamic batch: micro-batch {new_micro} x accumulation {new_accum} x {world} process(es) = global batch "
            f"{global_batch} (was {micro} x {accum}); estimated peak {format_size(bd.peak_bytes)} of "
            f"{format_size(budget)} ({margin:.0%} margin)")
    else:
        try:
            bd = estimate(arch, job)
        except (LmforgeError, ValueError, KeyError, TypeError) as exc:
            log(f"memory estimate skipped: {exc}")
            return None
    if int(os.environ.get("RANK", "0")) == 0:
        out_dir = cfg["output_dir"]
        os.makedirs(out_dir, exist_ok=True)
        data = bd.to_json() | plan
        if budget is not None:
            data.setdefault("budget_bytes", budget)
        tmp = os.path.join(out_dir, MEMORY_ESTIMATE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, os.path.join(out_dir, MEMORY_ESTIMATE))
    return bd


def _device_memory() -> tuple[str, int | None]:
    """("cuda", total bytes of device 0) when CUDA is available, else ("cpu", None)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - training always has torch
        return "cpu", None
    if torch.cuda.is_available():
        return "cuda", int(torch.cuda.get_device_properties(0).total_memory)
    return "cpu", None


class DoesNotFitError(LmforgeError):
    """The job does not fit the memory budget even at micro-batch 1.

    ``breakdown`` is the micro-batch-1 estimate; ``suggestions`` the changes
    that would make it fit (each already checked with the estimator).
    """

    def __init__(self, breakdown: MemoryBreakdown, budget_bytes: int, margin: float, suggestions: list[str]):
        self.breakdown = breakdown
        self.budget_bytes = budget_bytes
        self.suggestions = suggestions
        usable = int(budget_bytes * (1 - margin))
        msg = (f"the job does not fit in {format_size(budget_bytes)} per device even at micro-batch 1 "
               f"(estimated peak {format_size(breakdown.peak_bytes)}, usable {format_size(usable)} "
               f"with a {margin:.0%} margin)\n{breakdown.table(budget_bytes)}\n")
        if suggestions:
            msg += "any one of these would fit:\n" + "\n".join(f"  - {s}" for s in suggestions)
        else:
            msg += "no single change checked (checkpointing, ZeRO, offload, LoRA/QLoRA, 8-bit optimizer, shorter sequences) makes it fit; use more or larger devices"
        super().__init__(msg)


__all__ = [
    "EstimateJob", "MemoryBreakdown", "DoesNotFitError", "parse_size", "format_size", "max_micro_batch",
    "plan_dynamic_batch", "fit_suggestions", "get_estimator", "DEFAULT_ESTIMATOR", "DEFAULT_MARGIN",
    "CUDA_CONTEXT_BYTES", "job_from_config", "plan_for_training", "MEMORY_ESTIMATE",
]
