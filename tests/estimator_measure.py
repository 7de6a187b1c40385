"""Ground truth for the estimator, measured with torch (tests and benchmarks only; not shipped).

Imported as ``estimator_measure`` by tests/test_estimator_*.py (pytest puts
``tests/`` on ``sys.path``) and benchmarks/estimator_accuracy.py; never by the
estimator or the CLI. It imports torch, transformers and peft inside its
functions. Everything runs on CPU; large shapes run under ``FakeTensorMode``
(tensors have shapes and storages but no data).

- :func:`build_family_model`: the family's model for a preset, wrapped by a PEFT
  method the way lmforge's built-in methods do it (or with peft directly);
- :func:`saved_tensor_bytes`: bytes of unique storages autograd saves in one
  forward pass (``saved_tensors_hooks``, keyed by storage, parameters excluded);
- :func:`tracked_peak`: PyTorch's ``MemTracker`` peak over two optimizer steps;
- :func:`parameter_bytes` / :func:`optimizer_state_bytes`: actual tensors.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def build_family_model(family, preset, *, dtype: str = "fp32", attn: str = "sdpa", peft: str = "full",
                       peft_options: Mapping[str, Any] | None = None, gradient_checkpointing: bool = False):
    """The model ``family``'s own loader builds for ``preset`` (random weights), PEFT-wrapped as lmforge does.

    A preset without a tokenizer (a published size) borrows the family's tiny
    tokenizer, so large shapes build too (use :func:`fake_mode`). PEFT methods go
    through lmforge's registered implementations when they can run here (not
    under fake tensors for qlora), else through :func:`apply_peft`.
    """
    import dataclasses

    import torch

    from lmforge.modeling.loading import LoadOptions, ModelSource, resolve_ref

    tok = preset.tokenizer or next((p.tokenizer for p in family.presets if p.tiny and p.tokenizer), None)
    surrogate = dataclasses.replace(preset, tiny=True, tokenizer=tok)
    source = ModelSource(family=family, config=dict(preset.config), preset=surrogate)
    options = LoadOptions(dtype=dtype, attn_implementation={"flash": "flash_attention_2"}.get(attn, attn),
                          for_training=True)
    old = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, TORCH_DTYPES[dtype]))
    try:
        with _fake_safe_conversions(), warnings_off():
            try:
                model, tokenizer = resolve_ref(family.loader)(source, options)
            except ValueError as exc:  # an architecture with one attention path (BLOOM: eager only)
                if "attention implementation" not in str(exc):
                    raise
                options.attn_implementation = None
                model, tokenizer = resolve_ref(family.loader)(source, options)
    finally:
        torch.set_default_dtype(old)
    if options.attn_implementation and getattr(model.config, "_attn_implementation", None) != options.attn_implementation:
        try:
            model.config._attn_implementation = options.attn_implementation
        except Exception:  # noqa: BLE001 - families with their own attention keep theirs
            pass
    model.config.use_cache = False
    model.train()
    with _fake_safe_conversions():
        model = apply_peft(model, peft, dict(peft_options or {}), family.default_lora_targets, family=family,
                           gradient_checkpointing=gradient_checkpointing, tokenizer=tokenizer)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if peft != "full" and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    return model


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _fake_safe_conversions():
    """Under FakeTensorMode, ``Module.to(...)`` swaps parameters, which fake parameters refuse.
    No-op conversions (same dtype and device) are skipped; peft's round trip of new adapter weights
    to the base layer's dtype and (``autocast_adapter_dtype``) back to fp32 is skipped, leaving them
    in fp32, which is where peft puts them."""
    from torch._guards import detect_fake_mode

    if detect_fake_mode() is None:
        yield
        return
    import torch.utils
    from peft.tuners.tuners_utils import BaseTunerLayer

    orig_move = BaseTunerLayer._move_adapter_to_device_of_base_layer
    orig_swap = torch.utils.swap_tensors

    def swap(t1, t2):
        # ``.to(device)`` onto the device a fake parameter already has is a no-op; only that is skipped
        if t1.dtype == t2.dtype and t1.device == t2.device and t1.shape == t2.shape:
            return
        orig_swap(t1, t2)

    BaseTunerLayer._move_adapter_to_device_of_base_layer = lambda self, *a, **k: None
    torch.utils.swap_tensors = swap
    try:
        yield
    finally:
        BaseTunerLayer._move_adapter_to_device_of_base_layer = orig_move
        torch.utils.swap_tensors = orig_swap


def apply_peft(model, method: str, options: dict, default_lora_targets=(), family=None,
               gradient_checkpointing: bool = False, tokenizer=None):
    """Wrap ``model`` as lmforge's method does: full, freeze, lora, dora, qlora-style adapters, prefix, prompt.

    With ``family`` given and the method registered, lmforge's own ``apply`` runs (options
    validated against its schema); otherwise a reference wrapper built on peft does.
    """
    if family is not None:
        try:
            from lmforge.plugins.descriptors import PeftContext, resolve_ref, validate_options
            from lmforge.plugins.registry import get_registry

            desc = get_registry().peft_method(method)
        except Exception:  # noqa: BLE001 - no registry: fall back to the reference wrappers
            desc = None
        if desc is not None:
            opts = validate_options(desc.options, options, "peft")
            ctx = PeftContext(family=family, tokenizer=tokenizer,
                              config={"gradient_checkpointing": gradient_checkpointing, "peft": opts})
            return resolve_ref(desc.apply)(model, opts, ctx)
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "freeze":
        n = int(options.get("num_layers", 2))
        layers = _decoder_layers(model)
        L = len(layers)
        keep = set(range(L - n, L)) if n >= 0 else set(range(0, -n))
        for p in model.parameters():
            p.requires_grad_(False)
        for i in keep:
            for p in layers[i].parameters():
                p.requires_grad_(True)
        return model
    from peft import get_peft_model

    if method in ("lora", "dora", "qlora"):
        from peft import LoraConfig

        targets = options.get("target_modules", "default")
        if targets in (None, "default"):
            targets = list(default_lora_targets) or "all-linear"
        cfg = LoraConfig(r=int(options.get("r", 8)), lora_alpha=float(options.get("alpha", 16)),
                         lora_dropout=float(options.get("dropout", 0.05)), target_modules=targets,
                         bias=options.get("bias", "none"), use_dora=method == "dora" or bool(options.get("use_dora")),
                         modules_to_save=options.get("modules_to_save"), task_type="CAUSAL_LM")
        return get_peft_model(model, cfg)
    if method == "prefix":
        from peft import PrefixTuningConfig

        return get_peft_model(model, PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=int(options.get("num_virtual_tokens", 20)),
            prefix_projection=bool(options.get("prefix_projection", False))))
    if method == "prompt":
        from peft import PromptTuningConfig

        return get_peft_model(model, PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=int(options.get("num_virtual_tokens", 20))))
    raise ValueError(f"measure: no reference wrapper for {method!r}")


def _decoder_layers(model):
    for name, mod in model.named_modules():
        if name.endswith(("layers", ".h", "blocks", "encoder.layer")) and hasattr(mod, "__len__"):
            return list(mod)
    raise ValueError("cannot find the decoder layers")


def batch(b: int, s: int, vocab: int, padding: bool = True):
    """input_ids, attention_mask (first row left-padded by a quarter when ``padding``), labels."""
    import torch

    ids = torch.randint(0, vocab, (b, s))
    mask = torch.ones(b, s, dtype=torch.long)
    if padding:
        mask[0, : max(1, s // 4)] = 0
    labels = ids.clone()
    return ids, mask, labels


def saved_tensor_bytes(model, b: int, s: int, padding: bool = True, autocast: str | None = None) -> int:
    """Bytes of the unique storages autograd saves during one forward pass (parameters excluded)."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef

    params = {StorageWeakRef(p.untyped_storage()) for p in model.parameters()}
    seen: dict[Any, int] = {}

    def pack(t):
        key = StorageWeakRef(t.untyped_storage())
        if key not in params and key not in seen:
            seen[key] = t.untyped_storage().nbytes()
        return t

    ids, mask, labels = batch(b, s, model.config.vocab_size, padding)
    ac = (torch.autocast("cpu", dtype=getattr(torch, TORCH_DTYPES[autocast])) if autocast
          else contextlib.nullcontext())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ac:
        out = model(input_ids=ids, attention_mask=mask if padding else None, labels=labels)
    del out
    return sum(seen.values())


def tracked_peak(model, b: int, s: int, padding: bool = True, optimizer: str = "adamw", steps: int = 2,
                 fused: bool = True) -> dict:
    """PyTorch ``MemTracker`` peak (bytes) over ``steps`` training steps, with its category snapshot."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=1e-3)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, fused=fused)
    ids, mask, labels = batch(b, s, model.config.vocab_size, padding)
    mt = MemTracker()
    mt.track_external(model, opt, ids, mask, labels)
    with mt, _frozen_params_take_no_hooks():
        for _ in range(steps):
            mt.reset_mod_stats()
            loss = model(input_ids=ids, attention_mask=mask if padding else None, labels=labels).loss
            loss.backward()
            del loss
            opt.step()
            opt.zero_grad(set_to_none=True)
    snap = mt.get_tracker_snapshot("peak")
    dev = next(iter(snap))
    return {"peak": int(snap[dev]["Total"]),
            "snapshot": {getattr(k, "value", k): int(v) for k, v in snap[dev].items()}}


class _NoHandle:
    def remove(self) -> None:
        pass


@contextlib.contextmanager
def _frozen_params_take_no_hooks():
    """MemTracker registers a gradient hook on every parameter it sees; frozen ones refuse hooks."""
    import torch

    originals = {name: getattr(torch.Tensor, name) for name in ("register_hook", "register_post_accumulate_grad_hook")}

    def guarded(orig):
        def register(self, hook):
            if not self.requires_grad:
                return _NoHandle()
            return orig(self, hook)
        return register

    for name, orig in originals.items():
        setattr(torch.Tensor, name, guarded(orig))
    try:
        yield
    finally:
        for name, orig in originals.items():
            setattr(torch.Tensor, name, orig)


def parameter_bytes(model) -> dict:
    """Counts and bytes of the model's actual parameters (4-bit weights and their quantization state included)."""
    total = trainable = nbytes = trainable_bytes = 0
    quant_state = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            n = n * 2  # packed: two 4-bit weights per byte
            quant_state += _quant_state_bytes(qs)
        total += n
        nbytes += p.numel() * p.element_size()
        if p.requires_grad:
            trainable += n
            trainable_bytes += p.numel() * p.element_size()
    return {"total_params": total, "trainable_params": trainable, "params_bytes": nbytes + quant_state,
            "trainable_bytes": trainable_bytes, "quant_state_bytes": quant_state}


def _quant_state_bytes(qs) -> int:
    import torch

    out = 0
    for t in (qs.absmax, qs.code, getattr(qs, "offset", None)):
        if isinstance(t, torch.Tensor):
            out += t.numel() * t.element_size()
    nested = getattr(qs, "state2", None)
    if nested is not None:
        for t in (nested.absmax, nested.code):
            if isinstance(t, torch.Tensor):
                out += t.numel() * t.element_size()
    return out


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (moments, step counters, quantization maps), by storage."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef

    seen = set()
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                key = StorageWeakRef(v.untyped_storage())
                if key not in seen:
                    seen.add(key)
                    total += v.untyped_storage().nbytes()
    return total


def grad_bytes(model) -> int:
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
