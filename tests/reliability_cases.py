"""Shared pieces of the fault-injection suite (tests/test_reliability.py, benchmarks/reliability.py).

Small tiny-llama runs on a 64-record slice of the bundled data; the catalogue of
corrupt artefacts (:data:`CORRUPTIONS`): each one damages one kind of file a run
reads and names the command that must then end in one ``error:`` line naming
the file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "examples", "data", "train.jsonl")


def small_data(path: str, n: int = 64) -> str:
    with open(TRAIN, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= n:
                break
            dst.write(line)
    return path


def write_config(path: str, data: str, out: str, *, steps: int = 4, save_steps: int = 2, peft: str = "lora",
                 **train) -> str:
    import yaml

    cfg = {"model": "tiny-llama", "output_dir": out, "max_length": 48, "peft": {"method": peft},
           "data": {"train_file": data},
           "train": {"max_steps": steps, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": save_steps,
                     "learning_rate": 5e-3, "report_to": [], "disable_tqdm": True, "seed": 0,
                     "dataloader_num_workers": 0, **train}}
    if peft == "lora":
        cfg["peft"]["dropout"] = 0.0
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    return path


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}, **extra)
    return env


def lmforge(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=ROOT)


def popen_train(cfg: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmforge.cli", "train", cfg, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or cli_env(), cwd=ROOT)


def weights(run_dir: str) -> dict:
    """The trained tensors of a run (adapter or full model) as numpy arrays."""
    from safetensors.numpy import load_file

    for name in ("adapter_model.safetensors", "model.safetensors", "trained_weights.safetensors"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return load_file(path)
    raise FileNotFoundError(f"no weights in {run_dir}")


def max_abs_diff(a: dict, b: dict) -> float:
    import numpy as np

    assert set(a) == set(b), (sorted(a)[:3], sorted(b)[:3])
    return max(float(np.max(np.abs(a[k].astype("float64") - b[k].astype("float64")))) for k in a)


def run_state(run_dir: str) -> str | None:
    try:
        with open(os.path.join(run_dir, "lmforge_run.json"), encoding="utf-8") as f:
            return json.load(f).get("status")
    except (OSError, ValueError):
        return None


def wait_for(pred: Callable[[], bool], timeout: float = 300, every: float = 0.02) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(every)
    return False


def one_error_line(stderr: str) -> str:
    """The ``error:`` line of a failed command; asserts there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def kill_and_resume(cfg: str, out: str, rng: random.Random, window: float) -> int:
    """Start a run, SIGKILL it at a random moment of its training window, resume until complete.

    The window runs from the first step to the end of the final save. Returns 1
    when the kill landed, 0 when the run finished first.
    """
    p = popen_train(cfg)
    assert wait_for(lambda: run_state(out) in ("training", "saving", "complete") or p.poll() is not None)
    time.sleep(rng.uniform(0, window))
    landed = p.poll() is None
    if landed:
        p.send_signal(signal.SIGKILL)
    p.communicate()
    for _ in range(3):
        if run_state(out) == "complete":
            break
        res = lmforge("train", cfg, "--resume")
        assert res.returncode == 0, res.stderr[-3000:]
    assert run_state(out) == "complete"
    return int(landed)


# --------------------------------------------------------------------------
# corrupt artefacts: (name, damage(tmp, fixtures) -> (argv, expected substring))


def _truncate(path: str, keep: float = 0.5) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _copy(src: str, dst: str) -> str:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _mark_interrupted(run_dir: str, status: str = "training") -> None:
    path = os.path.join(run_dir, "lmforge_run.json")
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    state["status"] = status
    with open(path, "w", encoding="utf-8") as f:
        json.dump(state, f)


def _resume_argv(run_dir: str) -> list[str]:
    return ["train", os.path.join(run_dir, "lmforge.yaml"), "--resume", "-o", run_dir]


def c_model_safetensors_truncated_train(tmp, fx):
    d = _copy(fx["full"], os.path.join(tmp, "m"))
    _truncate(os.path.join(d, "model.safetensors"))
    cfg = write_config(os.path.join(tmp, "c.yaml"), fx["data"], os.path.join(tmp, "out"), peft="full")
    return ["train", cfg, "--model", d], os.path.join(d, "model.safetensors")


def c_model_safetensors_truncated_generate(tmp, fx):
    d = _copy(fx["full"], os.path.join(tmp, "m"))
    _truncate(os.path.join(d, "model.safetensors"), 0.9)
    return ["generate", d, "hi", "--max-new-tokens", "2"], os.path.join(d, "model.safetensors")


def c_model_safetensors_garbage_header(tmp, fx):
    d = _copy(fx["full"], os.path.join(tmp, "m"))
    with open(os.path.join(d, "model.safetensors"), "r+b") as f:
        f.seek(8)
        f.write(b"{not json")
    return ["generate", d, "hi", "--max-new-tokens", "2"], os.path.join(d, "model.safetensors")


def c_config_json_empty(tmp, fx):
    d = _copy(fx["full"], os.path.join(tmp, "m"))
    open(os.path.join(d, "config.json"), "w").close()
    os.unlink(os.path.join(d, "lmforge_run.json"))  # a plain checkpoint, not a run
    return ["generate", d, "hi"], os.path.join(d, "config.json")


def c_config_json_empty_in_interrupted_run(tmp, fx):
    d = _copy(fx["full"], os.path.join(tmp, "m"))
    open(os.path.join(d, "config.json"), "w").close()
    _mark_interrupted(d, "saving")
    return ["generate", d, "hi"], "--resume"


def c_tokenizer_auto_map_without_flag(tmp, fx):
    d = _copy(fx["full"], os.path.join(tmp, "m"))
    path = os.path.join(d, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        tc = json.load(f)
    tc["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tc, f)
    cfg = write_config(os.path.join(tmp, "c.yaml"), fx["data"], os.path.join(tmp, "out"), peft="full")
    return ["train", cfg, "--model", d], "--trust-remote-code"


def c_tokenizer_json_truncated(tmp, fx):
    d = _copy(fx["full"], os.path.join(tmp, "m"))
    _truncate(os.path.join(d, "tokenizer.json"))
    return ["generate", d, "hi"], os.path.join(d, "tokenizer.json")


def c_pickle_refused(tmp, fx):
    import argparse

    import torch

    d = _copy(fx["full"], os.path.join(tmp, "m"))
    os.unlink(os.path.join(d, "model.safetensors"))
    torch.save({"model.embed_tokens.weight": argparse.Namespace(evil=True)}, os.path.join(d, "pytorch_model.bin"))
    return ["generate", d, "hi"], os.path.join(d, "pytorch_model.bin") + ": refused to unpickle"


def c_adapter_truncated(tmp, fx):
    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    _truncate(os.path.join(d, "adapter_model.safetensors"))
    return ["generate", d, "hi"], os.path.join(d, "adapter_model.safetensors")


def c_run_config_garbage(tmp, fx):
    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    with open(os.path.join(d, "lmforge.yaml"), "w") as f:
        f.write("model: [unclosed\n")
    return ["generate", d, "hi"], os.path.join(d, "lmforge.yaml")


def c_run_state_garbage(tmp, fx):
    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    with open(os.path.join(d, "lmforge_run.json"), "w") as f:
        f.write("{tor")
    return ["generate", d, "hi"], "did not finish"


def c_checkpoint_half_deleted(tmp, fx):
    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    _mark_interrupted(d)
    os.unlink(os.path.join(d, "checkpoint-4", "trainer_state.json"))
    return _resume_argv(d), os.path.join(d, "checkpoint-4")


def c_checkpoint_weights_deleted(tmp, fx):
    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    _mark_interrupted(d)
    os.unlink(os.path.join(d, "checkpoint-4", "adapter_model.safetensors"))
    return _resume_argv(d), os.path.join(d, "checkpoint-4")


def c_checkpoint_optimizer_truncated(tmp, fx):
    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    _mark_interrupted(d)
    _truncate(os.path.join(d, "checkpoint-4", "optimizer.pt"))
    return _resume_argv(d), os.path.join(d, "checkpoint-4", "optimizer.pt")


def c_checkpoint_trainer_state_garbage(tmp, fx):
    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    _mark_interrupted(d)
    with open(os.path.join(d, "checkpoint-4", "trainer_state.json"), "w") as f:
        f.write('{"global_step": 4,')
    return _resume_argv(d), os.path.join(d, "checkpoint-4", "trainer_state.json")


def c_checkpoint_rng_pickle_refused(tmp, fx):
    import argparse

    import torch

    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    _mark_interrupted(d)
    shutil.rmtree(os.path.join(d, "checkpoint-4"))  # so training resumes from checkpoint-2 and reads its RNG state
    torch.save({"python": argparse.Namespace(evil=True)}, os.path.join(d, "checkpoint-2", "rng_state.pth"))
    return _resume_argv(d), os.path.join(d, "checkpoint-2", "rng_state.pth") + ": refused to unpickle"


def c_resume_checkpoint_missing(tmp, fx):
    cfg = write_config(os.path.join(tmp, "c.yaml"), fx["data"], os.path.join(tmp, "out"))
    missing = os.path.join(tmp, "nowhere", "checkpoint-3")
    return ["train", cfg, "--set", f"train.resume_from_checkpoint={missing}"], missing


def c_train_results_garbage(tmp, fx):
    d = _copy(fx["lora"], os.path.join(tmp, "r"))
    with open(os.path.join(d, "train_results.json"), "w") as f:
        f.write("{")
    return _resume_argv(d), os.path.join(d, "train_results.json")


def c_data_gzip_corrupt(tmp, fx):
    path = os.path.join(tmp, "d.jsonl.gz")
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00garbage")
    cfg = write_config(os.path.join(tmp, "c.yaml"), path, os.path.join(tmp, "out"))
    return ["train", cfg], path


def c_lock_file_garbage_is_harmless_but_held_lock_is_named(tmp, fx):
    # a lock file with junk in it (no holder) does not block; an unreadable model dir is named
    d = _copy(fx["full"], os.path.join(tmp, "m"))
    os.chmod(os.path.join(d, "model.safetensors"), 0o000)
    if os.geteuid() == 0:  # root reads anything: use a directory where the weights are a dangling link
        os.unlink(os.path.join(d, "model.safetensors"))
        os.symlink(os.path.join(tmp, "gone.safetensors"), os.path.join(d, "model.safetensors"))
    return ["generate", d, "hi"], os.path.join(d, "model.safetensors")


CORRUPTIONS = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_") and callable(fn)}
