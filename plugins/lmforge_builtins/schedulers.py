"""Scheduler launchers: ``slurm`` (an sbatch script) and ``kubernetes`` (a Kubeflow PyTorchJob).

Both write what the scheduler needs into the run directory and print where; with
``--submit`` (``launcher.submit: true``) they hand it to ``sbatch`` / ``kubectl``.
Every node runs one ``torchrun`` with the node's rank and the first host as
master: the layout the 9G authors found more reliable than one multi-task
``srun`` per process. Workers read the resolved config lmforge wrote
(``OUTPUT_DIR/launch_config.yaml``), so the run directory must be on storage every
node sees.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import click

from lmforge.plugins.descriptors import LaunchSpec, Launcher, Option
from lmforge.errors import ConfigError, LmforgeError

SLURM_SCRIPT = "slurm.sbatch"
K8S_MANIFEST = "pytorchjob.yaml"


def _torchrun(nproc: str, nnodes: str, node_rank: str, master_addr: str, master_port: str, config: str,
              python: str) -> str:
    standalone = nnodes == "1"
    parts = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    if standalone:
        parts.append("--standalone")
    else:
        parts += [f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}"]
    return " ".join(parts + ["-m", "lmforge.train.worker", shlex.quote(config)])


# ---------------------------------------------------------------- Slurm
def slurm_script(spec: LaunchSpec, cfg: dict, config_path: str) -> str:
    """The sbatch script: one task per node, each running torchrun for its node."""
    lc = cfg["launcher"]
    nodes = lc.get("nodes") or spec.nnodes
    gpus = lc.get("gpus_per_node") or 0
    nproc = gpus or spec.nproc_per_node
    out = os.path.abspath(cfg["output_dir"])
    name = lc.get("job_name") or f"lmforge-{os.path.basename(out)}"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --output={out}/slurm-%j.out"]
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if lc.get("cpus_per_task"):
        lines.append(f"#SBATCH --cpus-per-task={lc['cpus_per_task']}")
    for key in ("partition", "time", "account"):
        value = lc.get(key)
        if key == "time" and isinstance(value, int):
            # YAML 1.1 reads an unquoted 24:00:00 as the number of seconds
            value = f"{value // 3600}:{value % 3600 // 60:02d}:{value % 60:02d}"
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    for extra in lc.get("extra_sbatch") or []:
        lines.append(extra if extra.startswith("#SBATCH") else f"#SBATCH {extra}")
    python = shlex.quote(lc.get("python") or sys.executable)
    lines += [
        "set -euo pipefail",
        "# the allocation's first host is the rendezvous master",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MASTER_PORT={spec.master_port}",
        "export MASTER_ADDR MASTER_PORT",
        f"cd {shlex.quote(os.getcwd())}",
    ]
    torchrun = _torchrun(str(nproc), "$SLURM_NNODES", "$SLURM_NODEID", "$MASTER_ADDR", "$MASTER_PORT",
                         config_path, python)
    if nodes == 1:
        lines.append(_torchrun(str(nproc), "1", "0", "", "", config_path, python))
    else:
        # one task per node; a failing node ends the whole step
        lines.append(f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote('exec ' + torchrun)}")
    return "\n".join(lines) + "\n"


def slurm_launch(spec: LaunchSpec, cfg: dict, config_path: str) -> int:
    path = os.path.join(os.path.abspath(cfg["output_dir"]), SLURM_SCRIPT)
    script = slurm_script(spec, cfg, config_path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(script)
    os.chmod(path, 0o755)
    click.echo(f"[lmforge] wrote {path}", err=True)
    if not cfg["launcher"].get("submit"):
        click.echo(script, nl=False)
        click.echo("[lmforge] not submitted (add --submit, or run: sbatch " + path + ")", err=True)
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LmforgeError("launcher slurm: --submit needs sbatch on PATH (is this a Slurm login node?)")
    res = subprocess.run([sbatch, "--parsable", path], capture_output=True, text=True)
    if res.returncode != 0:
        raise LmforgeError(f"sbatch {path}: {res.stderr.strip() or res.stdout.strip()}")
    job = res.stdout.strip().split(";")[0]
    click.echo(job)
    click.echo(f"[lmforge] submitted Slurm job {job}; log: {os.path.abspath(cfg['output_dir'])}/slurm-{job}.out",
               err=True)
    return 0


SLURM = Launcher(
    name="slurm",
    description="writes OUTPUT_DIR/slurm.sbatch (one torchrun per node) and submits it with --submit",
    launch=slurm_launch,
    options=(
        Option("nodes", int, None, "nodes to allocate (default launcher.nnodes)"),
        Option("gpus_per_node", int, 0, "GPUs per node (= processes per node; 0: launcher.nproc_per_node)"),
        Option("partition", str, None, "sbatch --partition"),
        Option("time", (str, int), None, "sbatch --time, e.g. 24:00:00"),
        Option("account", str, None, "sbatch --account"),
        Option("cpus_per_task", int, None, "sbatch --cpus-per-task"),
        Option("job_name", str, None, "sbatch --job-name (default lmforge-<output dir name>)"),
        Option("extra_sbatch", list, None, "more #SBATCH lines, e.g. ['--exclusive', '--qos=high']"),
        Option("python", str, None, "the interpreter on the nodes (default: this one)"),
        Option("submit", bool, False, "submit with sbatch (the --submit flag)"),
    ),
)


# ---------------------------------------------------------------- Kubernetes
def pytorchjob(spec: LaunchSpec, cfg: dict, config_text: str) -> list[dict]:
    """A ConfigMap with the resolved config and a Kubeflow ``PyTorchJob`` (Master + Workers) running it."""
    kubernetes_check(cfg)
    lc = cfg["launcher"]
    nodes = lc.get("nodes") or spec.nnodes
    gpus = lc.get("gpus") or 0
    nproc = gpus or spec.nproc_per_node
    out = os.path.abspath(cfg["output_dir"])
    name = (lc.get("job_name") or f"lmforge-{os.path.basename(out)}").lower().replace("_", "-")
    namespace = lc.get("namespace") or "default"
    config_in_pod = "/etc/lmforge/lmforge.yaml"
    # the training operator sets MASTER_ADDR, MASTER_PORT and RANK (the replica's index: Master 0,
    # Worker i -> i + 1) in every pod; torchrun turns them into the per-process ranks
    torchrun = _torchrun(str(nproc), str(nodes), "$RANK", "$MASTER_ADDR", "$MASTER_PORT", config_in_pod, "python")
    resources: dict = {}
    if gpus:
        resources = {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}}
    for key, res in (("cpu", lc.get("cpu")), ("memory", lc.get("memory"))):
        if res:
            resources.setdefault("limits", {})[key] = res
            resources.setdefault("requests", {})[key] = res
    volumes = [{"name": "lmforge-config", "configMap": {"name": f"{name}-config"}}]
    mounts = [{"name": "lmforge-config", "mountPath": "/etc/lmforge", "readOnly": True}]
    if lc.get("output_pvc"):
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": lc["output_pvc"]}})
        mounts.append({"name": "output", "mountPath": out})
    pod_spec: dict = {
        "containers": [{
            "name": "pytorch",  # the name the training operator looks for
            "image": lc["image"],
            "command": ["bash", "-c", "exec " + torchrun],
            "resources": resources,
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    if lc.get("priority"):
        pod_spec["priorityClassName"] = lc["priority"]
    if lc.get("gpu_type"):
        pod_spec["nodeSelector"] = {lc.get("gpu_type_label") or "nvidia.com/gpu.product": lc["gpu_type"]}

    def replica(count: int) -> dict:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": pod_spec}}

    replicas = {"Master": replica(1)}
    if nodes > 1:
        replicas["Worker"] = replica(nodes - 1)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"{name}-config", "namespace": namespace},
                 "data": {"lmforge.yaml": config_text}}
    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/created-by": "lmforge"}},
           "spec": {"runPolicy": {"cleanPodPolicy": "None"}, "pytorchReplicaSpecs": replicas}}
    return [configmap, job]


def kubernetes_launch(spec: LaunchSpec, cfg: dict, config_path: str) -> int:
    import yaml

    with open(config_path, encoding="utf-8") as f:
        docs = pytorchjob(spec, cfg, f.read())
    path = os.path.join(os.path.abspath(cfg["output_dir"]), K8S_MANIFEST)
    text = yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    click.echo(f"[lmforge] wrote {path}", err=True)
    if not cfg["launcher"].get("submit"):
        click.echo(text, nl=False)
        click.echo(f"[lmforge] not submitted (add --submit, or run: kubectl apply -f {path})", err=True)
        return 0
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise LmforgeError("launcher kubernetes: --submit needs kubectl on PATH")
    res = subprocess.run([kubectl, "apply", "-f", path], capture_output=True, text=True)
    if res.returncode != 0:
        raise LmforgeError(f"kubectl apply -f {path}: {res.stderr.strip()}")
    click.echo(res.stdout.strip(), err=True)
    return 0


def kubernetes_check(cfg: dict) -> None:
    if not cfg["launcher"].get("image"):
        raise ConfigError("launcher.image: required for the kubernetes launcher (a container image with "
                          "lmforge and its plugins installed)")


KUBERNETES = Launcher(
    name="kubernetes",
    description="writes OUTPUT_DIR/pytorchjob.yaml (Kubeflow PyTorchJob + ConfigMap) and applies it with --submit",
    launch=kubernetes_launch,
    check=kubernetes_check,
    options=(
        Option("image", str, None, "container image with lmforge and the plugins the job needs"),
        Option("nodes", int, None, "pods (one Master, the rest Workers; default launcher.nnodes)"),
        Option("gpus", int, 0, "GPUs per pod (= processes per pod; 0: launcher.nproc_per_node)"),
        Option("gpu_type", str, None, "GPU model to schedule on (a node selector value)"),
        Option("gpu_type_label", str, None, "node label carrying the GPU model (default nvidia.com/gpu.product)"),
        Option("namespace", str, "default", "Kubernetes namespace"),
        Option("priority", str, None, "priorityClassName"),
        Option("cpu", str, None, "CPU request/limit per pod, e.g. '16'"),
        Option("memory", str, None, "memory request/limit per pod, e.g. 128Gi"),
        Option("output_pvc", str, None, "PersistentVolumeClaim mounted at output_dir (shared by every pod)"),
        Option("job_name", str, None, "PyTorchJob name (default lmforge-<output dir name>)"),
        Option("submit", bool, False, "apply with kubectl (the --submit flag)"),
    ),
)
