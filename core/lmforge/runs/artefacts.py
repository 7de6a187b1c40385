"""Checks of the files a run reads, done before they are loaded, with errors that name the file.

A truncated ``model.safetensors``, a checkpoint cut short by a kill, a corrupt
``optimizer.pt`` or a tokenizer that needs its own code would otherwise fail deep
inside transformers or torch with a traceback that never names the file. These
checks read headers only (safetensors metadata, zip central directories, JSON),
so they cost milliseconds even for large checkpoints.

torch-free: safetensors headers are read with ``safetensors.safe_open`` on the
numpy backend.
"""

from __future__ import annotations

import json
import os
import zipfile

from lmforge.errors import LmforgeError

# what a checkpoint or model directory holds its weights in, in the forms lmforge and transformers write
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "trained_weights.safetensors",
                "pytorch_model.bin", "adapter_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class ArtefactError(LmforgeError):
    """A file a run reads is missing, truncated or corrupt. The message names the file."""


def check_safetensors(path: str) -> None:
    """Raise :class:`ArtefactError` unless ``path`` is a complete safetensors file (header and data length)."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - safetensors is a training dependency
        return
    try:
        with safe_open(path, framework="numpy"):
            pass
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: all mean "unusable file"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = _size(path)
        raise ArtefactError(f"{path}: corrupt or truncated safetensors file ({msg}; {size} bytes); "
                            "the run that wrote it was probably interrupted, or the copy is incomplete") from None


def check_json_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ArtefactError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}; {_size(path)} bytes); "
                            "the file is truncated or corrupt") from None
    except UnicodeDecodeError:
        raise ArtefactError(f"{path}: not UTF-8 text; the file is corrupt") from None
    except OSError as exc:
        raise ArtefactError(f"{path}: cannot read: {exc.strerror}") from None


def check_torch_file(path: str) -> None:
    """A ``torch.save`` file is a zip archive: a truncated one has no central directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            if not zf.namelist():
                raise zipfile.BadZipFile("empty archive")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ArtefactError(f"{path}: truncated or corrupt torch file ({exc}; {_size(path)} bytes); "
                            "it was probably cut short by a kill or a full disk") from None


def _size(path: str) -> int | str:
    try:
        return os.path.getsize(path)
    except OSError:
        return "?"


def check_weight_files(directory: str) -> None:
    """Check every weight file directly in ``directory`` (safetensors headers, shard indexes, torch zips)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise ArtefactError(f"{directory}: cannot read the directory: {exc.strerror}") from None
    for name in names:
        path = os.path.join(directory, name)
        if os.path.islink(path) and not os.path.exists(path):
            raise ArtefactError(f"{path}: a link to {os.readlink(path)}, which does not exist")
        if not os.path.isfile(path):
            continue
        if not os.access(path, os.R_OK):
            raise ArtefactError(f"{path}: not readable (permission denied)")
        if name.endswith(".safetensors"):
            check_safetensors(path)
        elif name.endswith(".index.json"):
            index = check_json_file(path)
            for shard in sorted(set((index.get("weight_map") or {}).values())):
                if not os.path.isfile(os.path.join(directory, shard)):
                    raise ArtefactError(f"{path}: names the shard {shard!r}, which is missing from {directory}")
        elif name.endswith(TORCH_SUFFIXES) and name.startswith(("pytorch_model", "adapter_model", "optimizer",
                                                                   "scheduler", "rng_state", "training_args")):
            check_torch_file(path)


def check_model_dir(path: str) -> None:
    """Before loading a checkpoint directory: readable, ``config.json`` parses, weights present and whole."""
    if not os.access(path, os.R_OK | os.X_OK):
        raise ArtefactError(f"{path}: the model directory is not readable (permission denied)")
    check_json_file(os.path.join(path, "config.json"))
    names = set(os.listdir(path))
    if not names & set(WEIGHT_FILES) and not any(n.endswith(".safetensors") for n in names):
        raise ArtefactError(f"{path}: no weights found (expected one of {', '.join(WEIGHT_FILES[:4])}, ...)")
    for name in ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.json"):
        if name in names:
            check_json_file(os.path.join(path, name))
    check_weight_files(path)


def check_checkpoint(path: str) -> None:
    """Before resuming from ``checkpoint-N``: its trainer state, weights and optimizer files are whole.

    Checkpoints are written atomically (staged, then renamed), so this fails only
    for one damaged after the fact, or copied incompletely.
    """
    if not os.path.isdir(path):
        raise ArtefactError(f"{path}: checkpoint directory not found")
    names = set(os.listdir(path))
    if "trainer_state.json" not in names:
        raise ArtefactError(f"{path}: not a complete checkpoint (no trainer_state.json); it was cut short while "
                            "being written or deleted; resume from another checkpoint or delete it")
    check_json_file(os.path.join(path, "trainer_state.json"))
    if not names & set(WEIGHT_FILES) and not any(n.endswith(".safetensors") for n in names):
        raise ArtefactError(f"{path}: not a complete checkpoint (no model or adapter weights); resume from "
                            "another checkpoint or delete it")
    for name in sorted(names):
        if name.endswith(".json"):
            check_json_file(os.path.join(path, name))
    check_weight_files(path)


def check_tokenizer_code(path: str, trust_remote_code: bool) -> None:
    """Refuse a tokenizer whose ``tokenizer_config.json`` maps to Python files in ``path`` unless trusted."""
    if trust_remote_code:
        return
    cfg_path = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(cfg_path):
        return
    cfg = check_json_file(cfg_path)
    auto_map = cfg.get("auto_map") if isinstance(cfg, dict) else None
    if isinstance(auto_map, dict) and "AutoTokenizer" in auto_map:
        raise ArtefactError(
            f"{cfg_path}: the tokenizer needs code from its own directory (auto_map.AutoTokenizer: "
            f"{auto_map['AutoTokenizer']}); lmforge does not execute checkpoint code unless you pass "
            "--trust-remote-code (trust_remote_code: true)")


def refused_pickle(directory: str) -> str:
    """The torch file in ``directory`` that ``torch.load(weights_only=True)`` refuses (called on that error only)."""
    import pickle

    import torch

    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(TORCH_SUFFIXES) and os.path.isfile(path):
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError:
                return path
            except Exception:  # noqa: BLE001 - some other problem; not the refused pickle
                continue
    return directory


def unpickling_message(path: str, exc: BaseException) -> str:
    """The one line for a pickle that ``torch.load(weights_only=True)`` refused (``path``: file or directory)."""
    if os.path.isdir(path):
        path = refused_pickle(path)
    first = str(exc).strip().splitlines()
    detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
    return (f"{path}: refused to unpickle: the file holds Python objects other than tensors ({detail[:200]}); "
            "lmforge only loads weights with torch.load(weights_only=True). Convert it to safetensors from a "
            "source you trust")
