"""Built-in launchers: ``local`` (in process), ``torchrun`` (one worker per rank, one or many nodes),
``deepspeed`` (torchrun workers with a DeepSpeed ZeRO config), ``fsdp`` (torchrun workers under FSDP2),
and the schedulers ``slurm`` and
``kubernetes`` (:mod:`lmforge_builtins.schedulers`)."""

from __future__ import annotations

import json
import os
import sys

from lmforge import hookimpl
from lmforge.plugins.descriptors import LaunchSpec, Launcher, Option
from lmforge.errors import ConfigError

LOCAL = Launcher(
    name="local",
    description="run the job in this process (one CPU or GPU)",
    in_process=True,
)

TORCHRUN_OPTIONS = (
    Option("rdzv_backend", str, None, "torchrun rendezvous backend (c10d, etcd ...); with it, node ranks are "
           "assigned by the rendezvous"),
    Option("rdzv_endpoint", str, None, "rendezvous host:port (default master_addr:master_port)"),
    Option("rdzv_id", str, "lmforge", "rendezvous job id (the same on every node)"),
)


def torchrun_command(spec: LaunchSpec) -> list[str]:
    """``python -m torch.distributed.run`` with the spec's topology, then the worker argv."""
    argv = [sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={spec.nproc_per_node}", f"--nnodes={spec.nnodes}"]
    backend = spec.options.get("rdzv_backend")
    if backend:
        endpoint = spec.options.get("rdzv_endpoint") or f"{spec.master_addr}:{spec.master_port}"
        argv += [f"--rdzv_backend={backend}", f"--rdzv_endpoint={endpoint}",
                 f"--rdzv_id={spec.options.get('rdzv_id') or 'lmforge'}"]
    elif spec.nnodes > 1:
        argv += [f"--node_rank={spec.node_rank}", f"--master_addr={spec.master_addr}",
                 f"--master_port={spec.master_port}"]
    else:
        argv += ["--standalone"]
    # torchrun runs a script or a module: the worker is `-m lmforge.train.worker CONFIG`
    worker = list(spec.worker_argv)
    if worker[:2] == [sys.executable, "-m"]:
        argv += ["-m", *worker[2:]]
    else:
        argv += worker
    return argv


TORCHRUN = Launcher(
    name="torchrun",
    description="torch.distributed.run: nproc_per_node workers per node, nnodes nodes (DDP through "
                "transformers.Trainer)",
    command=torchrun_command,
    options=TORCHRUN_OPTIONS,
)


# ---------------------------------------------------------------- DeepSpeed
DEEPSPEED_FILE = "deepspeed.json"


def deepspeed_config(launcher_cfg: dict) -> dict:
    """The DeepSpeed JSON for ``launcher: {name: deepspeed, zero, offload_optimizer, offload_params, config}``.

    Sizes, accumulation, clipping and precision are ``"auto"``: the Trainer fills them
    from ``train:``, so the two can never disagree.
    """
    path = launcher_cfg.get("config")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except OSError as exc:
            raise ConfigError(f"launcher.config: cannot read {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"launcher.config: {path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    stage = launcher_cfg["zero"]
    zero: dict = {"stage": stage}
    if launcher_cfg["offload_optimizer"] == "cpu":
        if stage == 0:
            raise ConfigError("launcher.offload_optimizer: needs ZeRO stage 1, 2 or 3 (launcher.zero)")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if launcher_cfg["offload_params"] == "cpu":
        if stage != 3:
            raise ConfigError("launcher.offload_params: parameter offload needs ZeRO stage 3 (launcher.zero: 3)")
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if stage == 3:
        # save full 16-bit weights, not the per-rank shards
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }


def _with_train_keys(cfg: dict, keys: dict) -> dict:
    """A copy of the workers' config with ``keys`` added to ``train:``: what a launcher's ``prepare`` adds
    to the ``TrainingArguments`` (the workers' :func:`lmforge.config.spec.training_arguments` reads them)."""
    return {**cfg, "train": {**(cfg.get("train") or {}), **keys}}


def deepspeed_prepare(cfg: dict) -> dict:
    """Write ``OUTPUT_DIR/deepspeed.json`` and point ``train.deepspeed`` at it (the Trainer's DeepSpeed)."""
    ds = deepspeed_config(cfg["launcher"])
    path = os.path.join(os.path.abspath(cfg["output_dir"]), DEEPSPEED_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(ds, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return _with_train_keys(cfg, {"deepspeed": path})


def deepspeed_check(cfg: dict) -> None:
    deepspeed_config(cfg["launcher"])
    ours = os.path.join(os.path.abspath(cfg["output_dir"]), DEEPSPEED_FILE)  # the workers' config has it
    if cfg["train"].get("deepspeed") not in (None, ours):
        raise ConfigError("train.deepspeed: set by the deepspeed launcher; put a JSON of your own in "
                          "launcher.config instead")


DEEPSPEED = Launcher(
    name="deepspeed",
    description="torchrun workers training under DeepSpeed ZeRO 0-3 (optimizer/parameter offload to CPU); "
                "writes OUTPUT_DIR/deepspeed.json",
    command=torchrun_command,
    prepare=deepspeed_prepare,
    check=deepspeed_check,
    options=TORCHRUN_OPTIONS + (
        Option("zero", int, 2, "ZeRO stage: 0 (DDP), 1 (optimizer states sharded), 2 (+ gradients), "
               "3 (+ parameters)", choices=(0, 1, 2, 3)),
        Option("offload_optimizer", str, "none", "keep optimizer states on the CPU (stage >= 1)",
               choices=("none", "cpu")),
        Option("offload_params", str, "none", "keep parameters on the CPU (stage 3)", choices=("none", "cpu")),
        Option("config", str, None, "a DeepSpeed JSON of your own instead of the generated one"),
    ),
)


# ---------------------------------------------------------------- FSDP
def fsdp_settings(launcher_cfg: dict) -> dict:
    """``train.fsdp`` / ``train.fsdp_config`` for ``launcher: {name: fsdp, sharding, offload_params}`` (FSDP2)."""
    return {"fsdp": True,
            "fsdp_config": {"version": 2, "reshard_after_forward": launcher_cfg["sharding"] == "full_shard",
                            "cpu_offload": launcher_cfg["offload_params"] == "cpu"}}


def fsdp_check(cfg: dict) -> None:
    ours = fsdp_settings(cfg["launcher"])
    for key, value in ours.items():
        if cfg["train"].get(key) not in (None, value):
            raise ConfigError(f"train.{key}: set by the fsdp launcher (launcher.sharding, launcher.offload_params); "
                              f"remove it from train:")
    if cfg["launcher"].get("name") == "fsdp" and cfg["train"].get("deepspeed"):
        raise ConfigError("train.deepspeed: FSDP and DeepSpeed cannot both shard the model; pick one launcher")


def fsdp_prepare(cfg: dict) -> dict:
    """Put ``train.fsdp`` / ``train.fsdp_config`` (:func:`fsdp_settings`) into the workers' config."""
    return _with_train_keys(cfg, fsdp_settings(cfg["launcher"]))


FSDP = Launcher(
    name="fsdp",
    description="torchrun workers training under PyTorch FSDP2 through the Trainer (parameters, gradients and "
                "optimizer states sharded)",
    command=torchrun_command,
    prepare=fsdp_prepare,
    check=fsdp_check,
    options=TORCHRUN_OPTIONS + (
        Option("sharding", str, "full_shard", "full_shard: parameters re-sharded after each forward (ZeRO-3-like); "
               "shard_grad_op: kept gathered between forward and backward (ZeRO-2-like)",
               choices=("full_shard", "shard_grad_op")),
        Option("offload_params", str, "none", "keep parameters (and their optimizer states) on the CPU",
               choices=("none", "cpu")),
    ),
)


@hookimpl
def register_launchers(register):
    from .schedulers import KUBERNETES, SLURM

    register(LOCAL)
    register(TORCHRUN)
    register(DEEPSPEED)
    register(FSDP)
    register(SLURM)
    register(KUBERNETES)
