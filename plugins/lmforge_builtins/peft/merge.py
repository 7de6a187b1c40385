"""``lmforge merge RUN_DIR -o OUT``: a run's adapter folded into its base, saved as a plain checkpoint."""

from __future__ import annotations

import os

from lmforge.errors import LmforgeError


def merge_run(run_dir: str, output_dir: str, dtype: str = "fp32", registry=None) -> str:
    """Load ``run_dir`` (base + trained part), merge with the method's ``merge`` and save to ``output_dir``.

    The output is what the family saves for a full model (``config.json``,
    safetensors, tokenizer) and loads with plain ``from_pretrained``. Raises
    :class:`LmforgeError` for a directory that is not an lmforge run, a full
    fine-tune (already a plain checkpoint) or a method that cannot merge.
    Returns ``output_dir``.
    """
    from lmforge.plugins.descriptors import resolve_ref
    from lmforge.modeling.loading import family_of_run, load, read_run_config, save_model, torch_dtype
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    if is_sharded_checkpoint(run_dir):
        return consolidate_checkpoint(run_dir, output_dir, dtype)
    run_cfg = read_run_config(run_dir)
    if run_cfg is None:
        raise LmforgeError(f"{run_dir}: not an lmforge run directory (no lmforge.yaml) nor a DeepSpeed checkpoint")
    name = (run_cfg.get("peft") or {}).get("method", "full")
    method = reg.peft_method(name)
    mergeable = [m.name for m in reg.all("peft_methods") if m.merge is not None]
    if method.load is None:
        raise LmforgeError(f"{run_dir}: a {name!r} run is already a full checkpoint; nothing to merge")
    if method.merge is None:
        raise LmforgeError(
            f"{run_dir}: runs of {name!r} cannot be merged into the base weights "
            f"(methods that merge: {', '.join(mergeable)}); load the run directory itself instead"
        )
    if os.path.abspath(output_dir) == os.path.abspath(run_dir):
        raise LmforgeError("merge: the output directory must differ from the run directory")
    model, tokenizer = load(run_dir, dtype="fp32", registry=reg)
    merged = resolve_ref(method.merge)(model)
    merged = merged.to(torch_dtype(dtype))
    save_model(merged, tokenizer, family_of_run(run_dir, reg), output_dir)
    return output_dir


# --------------------------------------------------------------------------
# DeepSpeed ZeRO checkpoints -> one plain checkpoint (PaddleNLP's shard merge)

HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
            "special_tokens_map.json", "vocab.json", "merges.txt", "adapter_config.json", "chat_template.jinja")


def is_sharded_checkpoint(path: str) -> bool:
    """A ``checkpoint-N`` written under DeepSpeed (its ``latest`` file names a ``global_stepN`` of shards)."""
    latest = os.path.join(path, "latest")
    if not os.path.isfile(latest):
        return False
    with open(latest, encoding="utf-8") as f:
        tag = f.read().strip()
    return os.path.isdir(os.path.join(path, tag))


def consolidate_checkpoint(ckpt: str, output_dir: str, dtype: str = "fp32") -> str:
    """Write one plain checkpoint from a ZeRO checkpoint: config, tokenizer and the fp32 master weights.

    The weights are rebuilt from the per-rank optimizer shards with DeepSpeed's own
    ``get_fp32_state_dict_from_zero_checkpoint`` (any stage), so this works even when
    the checkpoint's ``model.safetensors`` holds only ZeRO-3 placeholders. The tensor
    names are the ones the checkpoint's own weights file uses (tied copies dropped).
    """
    import shutil

    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lmforge.modeling.loading import torch_dtype

    if os.path.abspath(output_dir) == os.path.abspath(ckpt):
        raise LmforgeError("merge: the output directory must differ from the checkpoint")
    weights_name = next((n for n in ("model.safetensors", "adapter_model.safetensors")
                         if os.path.isfile(os.path.join(ckpt, n))), None)
    state = get_fp32_state_dict_from_zero_checkpoint(ckpt)
    if weights_name is not None:
        with safe_open(os.path.join(ckpt, weights_name), "pt") as f:
            names = list(f.keys())
    else:  # ZeRO-3 without gathering on save: only the shards exist; drop tied copies (first name wins)
        weights_name = "model.safetensors"
        seen: set[int] = set()
        names = []
        for name, tensor in state.items():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                names.append(name)
    if weights_name == "adapter_model.safetensors":
        # peft saves adapter tensors without the adapter name: base_model.model.x.lora_A.weight
        state = {k.replace(".default.", "."): v for k, v in state.items()}
    missing = [n for n in names if n not in state]
    if missing:
        raise LmforgeError(f"{ckpt}: the ZeRO shards lack {len(missing)} tensors of {weights_name} "
                           f"(first: {missing[0]}); is this checkpoint complete?")
    target = torch_dtype(dtype)
    out = {n: state[n].to(target).contiguous() for n in names}
    os.makedirs(output_dir, exist_ok=True)
    save_file(out, os.path.join(output_dir, weights_name), metadata={"format": "pt"})
    for name in HF_FILES:
        src = os.path.join(ckpt, name)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(output_dir, name))
    del torch
    return output_dir

