"""Scale-out on this CPU machine (gloo): DeepSpeed ZeRO 1-3, two torchrun "nodes", Slurm and Kubernetes job files.

Two processes with per-device batch 2 must follow the same loss curve as one
process with batch 4 (fp32, 1e-4), save weights that load in plain
transformers/peft with the same logits, and resume from a ZeRO checkpoint to the
uninterrupted run's weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = f"""model: tiny-llama
data: {{train_file: {ROOT}/examples/data/train.jsonl}}
max_length: 48
train: {{max_steps: 4, logging_steps: 1, report_to: [], save_steps: 100, learning_rate: 5.0e-3, seed: 0,
        disable_tqdm: true}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(tmp_path, name, *args, env=None, check=True):
    cfg = tmp_path / "base.yaml"
    if not cfg.exists():
        cfg.write_text(BASE)
    out = tmp_path / name
    cmd = [sys.executable, "-m", "lmforge.cli", "train", str(cfg), "-o", str(out), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    if check:
        assert res.returncode == 0, res.stderr[-4000:]
    return out, res


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(out / "train_log.jsonl")) if "loss" in r]


def weights(out) -> dict:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(out / name))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, batch 4: the curve every 2-process run must reproduce (full and LoRA)."""
    tmp = tmp_path_factory.mktemp("one-process")
    return {peft: train(tmp, peft, "--peft", peft, "--set", "train.per_device_train_batch_size=4", *NO_DROPOUT[peft])[0]
            for peft in ("full", "lora")}


# LoRA dropout draws from each rank's own RNG stream: equal curves need it off
NO_DROPOUT = {"full": [], "lora": ["--set", "peft.dropout=0.0"]}


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["full", "lora"])
@pytest.mark.parametrize("zero", [1, 2, 3])
def test_deepspeed_zero_two_processes_equal_one(tmp_path, reference, zero, peft):
    out, res = train(tmp_path, f"z{zero}", "--peft", peft, "--set", "train.per_device_train_batch_size=2",
                     *NO_DROPOUT[peft],
                     "--launcher", "deepspeed", "--zero", str(zero), "--nproc-per-node", "2",
                     "--master-port", str(free_port()))
    ds = json.load(open(out / "deepspeed.json"))
    assert ds["zero_optimization"]["stage"] == zero
    assert json.load(open(out / "checkpoint-4" / "trainer_state.json"))["train_batch_size"] == 2
    ref = reference[peft]
    assert losses(out) == pytest.approx(losses(ref), abs=1e-4)
    # the estimate the launched job wrote: the same figures as `lmforge estimate` with the same settings, and
    # its optimizer bytes per rank are what DeepSpeed really keeps (each rank's optimizer shard file)
    job = json.load(open(out / "memory_estimate.json"))
    cli = subprocess.run([sys.executable, "-m", "lmforge.cli", "estimate", "--model", "tiny-llama", "--peft", peft,
                          "--zero", str(zero), "--gpus", "2", "--seq-len", "48", "--micro-batch", "2", "--dtype",
                          "fp32", "--device", "cpu", "--json"], capture_output=True, text=True, timeout=120)
    est = json.loads(cli.stdout)
    for key in ("params_bytes", "grads_bytes", "optimizer_bytes"):
        assert job[key] == est[key], (key, job[key], est[key])
    shards = sorted((out / "checkpoint-4").glob("global_step4/*optim_states.pt"))
    assert len(shards) == 2
    for shard in shards:
        assert shard.stat().st_size == pytest.approx(job["optimizer_bytes"], rel=0.02), shard
    got, want = weights(out), weights(ref)
    assert set(got) == set(want) and got, "saved tensors differ in names (or none saved)"
    for k in want:
        assert got[k].shape == want[k].shape and got[k].numel() > 0, f"{k}: placeholder, not gathered"
        assert torch.allclose(got[k].float(), want[k].float(), atol=1e-4), k
    # loads in plain transformers / peft and gives the same logits
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 50, 60, 70, 80]])
    if peft == "full":
        a = AutoModelForCausalLM.from_pretrained(out)
        b = AutoModelForCausalLM.from_pretrained(ref)
    else:
        from peft import PeftModel

        base = ref.parent / "lora" / "base_model"
        base_dir = base if base.exists() else None
        assert (out / "adapter_config.json").exists()
        a = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir or ref), out)
        b = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir or ref), ref)
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["full", "lora"])
def test_fsdp_two_processes_equal_one(tmp_path, reference, peft):
    out, res = train(tmp_path, "fsdp", "--peft", peft, "--set", "train.per_device_train_batch_size=2",
                     *NO_DROPOUT[peft], "--launcher", "fsdp", "--nproc-per-node", "2",
                     "--master-port", str(free_port()))
    cfg = __import__("yaml").safe_load(open(out / "launch_config.yaml"))
    assert cfg["train"]["fsdp"] is True and cfg["train"]["fsdp_config"]["version"] == 2
    assert losses(out) == pytest.approx(losses(reference[peft]), abs=1e-4)
    got, want = weights(out), weights(reference[peft])
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape and torch.allclose(got[k].float(), want[k].float(), atol=1e-4), k


@pytest.mark.slow
def test_resume_from_a_zero_checkpoint_reaches_the_uninterrupted_weights(tmp_path):
    common = ["--set", "train.per_device_train_batch_size=2", "--set", "train.save_steps=2",
              "--launcher", "deepspeed", "--zero", "2", "--nproc-per-node", "2"]
    full, _ = train(tmp_path, "uninterrupted", *common, "--master-port", str(free_port()))
    assert (full / "checkpoint-2" / "global_step2").is_dir(), "a ZeRO checkpoint holds DeepSpeed's shards"
    resumed, _ = train(tmp_path, "resumed", *common, "--master-port", str(free_port()), "--set",
                       f"train.resume_from_checkpoint={full / 'checkpoint-2'}")
    a, b = weights(full), weights(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


@pytest.mark.slow
def test_merge_rebuilds_a_plain_checkpoint_from_zero3_shards(tmp_path):
    # a DeepSpeed JSON of the user's own that does not gather weights on save: model.safetensors in
    # the checkpoint then holds placeholders, and only the shards have the weights
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False},
                              "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                              "train_batch_size": "auto"}))
    out, _ = train(tmp_path, "z3raw", "--set", "train.per_device_train_batch_size=2", "--set", "train.save_steps=4",
                   "--launcher", "deepspeed", "--set", f"launcher.config={ds}", "--nproc-per-node", "2",
                   "--master-port", str(free_port()))
    ckpt = out / "checkpoint-4"
    merged = tmp_path / "merged"
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "merge", str(ckpt), "-o", str(merged)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged)
    reference = AutoModelForCausalLM.from_pretrained(out)  # the final save, gathered by lmforge
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6), name


@pytest.mark.slow
def test_two_torchrun_nodes_equal_one_node_with_two_processes(tmp_path):
    one, _ = train(tmp_path, "one-node", "--set", "train.per_device_train_batch_size=2", "--launcher", "torchrun",
                   "--nproc-per-node", "2", "--master-port", str(free_port()))
    port = str(free_port())
    cfg = tmp_path / "base.yaml"
    # the 9G scripts' environment names, one process per "node"
    procs = [subprocess.Popen([sys.executable, "-m", "lmforge.cli", "train", str(cfg), "-o", str(tmp_path / "two"),
                               "--set", "train.per_device_train_batch_size=2", "--launcher", "torchrun"],
                              env=dict(os.environ, OMP_NUM_THREADS="1", GPUS_PER_NODE="1", NNODES="2",
                                       NODE_RANK=str(rank), MASTER_ENDPOINT="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert "--nnodes=2" in outs[0][1] and "--node_rank=1" in outs[1][1]
    assert losses(tmp_path / "two") == pytest.approx(losses(one), abs=1e-5)


def test_launcher_options_are_validated(tmp_path):
    cfg = tmp_path / "base.yaml"
    cfg.write_text(BASE)
    for args, words in [(["--launcher", "deepspeed", "--set", "launcher.zero=5"], "launcher.zero"),
                        (["--launcher", "deepspeed", "--set", "launcher.offload_params=cpu"], "launcher.offload_params"),
                        (["--launcher", "torchrun", "--set", "launcher.zreo=1"], "launcher.zreo"),
                        (["--launcher", "kubernetes"], "launcher.image")]:
        res = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg), "-o", str(tmp_path / "x"),
                              "--dry-run", *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and words in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_deepspeed_config_from_the_launcher_settings():
    from lmforge_builtins.launchers import deepspeed_config

    ds = deepspeed_config({"zero": 3, "offload_optimizer": "cpu", "offload_params": "cpu", "config": None})
    assert ds["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False},
                                       "offload_param": {"device": "cpu", "pin_memory": False},
                                       "stage3_gather_16bit_weights_on_model_save": True}
    assert ds["train_micro_batch_size_per_gpu"] == "auto"


def test_slurm_script_one_torchrun_per_node(tmp_path):
    cfg = tmp_path / "base.yaml"
    cfg.write_text(BASE)
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg), "-o", str(tmp_path / "run"),
                          "--launcher", "slurm", "--set", "launcher.nodes=4", "--set", "launcher.gpus_per_node=8",
                          "--set", "launcher.partition=a100", "--set", "launcher.time=24:00:00",
                          "--set", "launcher.extra_sbatch=['--exclusive']", "--master-port", "29611"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    script = (tmp_path / "run" / "slurm.sbatch").read_text()
    assert res.stdout.endswith(script)
    for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=a100", "#SBATCH --time=24:00:00", "#SBATCH --exclusive",
                 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)', "MASTER_PORT=29611"]:
        assert line in script, line
    srun = [line for line in script.splitlines() if line.startswith("srun")][0]
    assert "--nproc_per_node=8" in srun and "--nnodes=$SLURM_NNODES" in srun and "--node_rank=$SLURM_NODEID" in srun
    assert str(tmp_path / "run" / "launch_config.yaml") in srun
    assert "not submitted" in res.stderr
    # the script is valid bash
    assert subprocess.run(["bash", "-n", str(tmp_path / "run" / "slurm.sbatch")]).returncode == 0


def test_kubernetes_pytorchjob_and_the_environment_torchrun_sees(tmp_path):
    import yaml

    cfg = tmp_path / "base.yaml"
    cfg.write_text(BASE)
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg), "-o", str(tmp_path / "run"),
                          "--launcher", "kubernetes", "--set", "launcher.image=registry/lmforge:1", "--set",
                          "launcher.nodes=3", "--set", "launcher.gpus=8", "--set", "launcher.gpu_type=A100",
                          "--set", "launcher.output_pvc=runs", "--set", "launcher.priority=high"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    configmap, job = list(yaml.safe_load_all((tmp_path / "run" / "pytorchjob.yaml").read_text()))
    assert configmap["kind"] == "ConfigMap" and yaml.safe_load(configmap["data"]["lmforge.yaml"])["model"] == "tiny-llama"
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    pod = specs["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["priorityClassName"] == "high" and pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
    assert {v["name"] for v in pod["volumes"]} == {"lmforge-config", "output"}
    # each replica: the operator sets MASTER_ADDR, MASTER_PORT and RANK (Master 0, Worker i -> i + 1);
    # expand the command as bash would and parse it with torchrun's own argument parser
    from torch.distributed.run import parse_args

    command = container["command"]
    assert command[:2] == ["bash", "-c"]
    for rank in range(3):
        env = {"MASTER_ADDR": "lmforge-run-master-0", "MASTER_PORT": "23456", "RANK": str(rank)}
        argv = subprocess.run(["bash", "-c", "printf '%s\\n' " + command[2].removeprefix("exec ")],
                              env=env, capture_output=True, text=True).stdout.split()
        args = parse_args(argv[3:])  # after: python -m torch.distributed.run
        assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("3", "8", rank)
        assert (args.master_addr, args.master_port) == ("lmforge-run-master-0", 23456)
        assert args.training_script == "lmforge.train.worker" and args.module
        assert args.training_script_args == ["/etc/lmforge/lmforge.yaml"]


def _workers(out) -> list[int]:
    """Worker processes of a run (not torchrun itself, whose command line names the worker too)."""
    ps = subprocess.run(["pgrep", "-f", f"lmforge.train.worker {out}"], capture_output=True, text=True).stdout.split()
    pids = []
    for p in ps:
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"torch.distributed.run" not in cmd:
            pids.append(int(p))
    return sorted(pids)


@pytest.mark.slow
def test_a_killed_rank_stops_every_rank_and_resume_reaches_the_uninterrupted_weights(tmp_path):
    import signal
    import time

    common = ["--set", "train.per_device_train_batch_size=2", "--set", "train.max_steps=24",
              "--set", "train.save_steps=4", "--set", "train.save_total_limit=10", "--launcher", "torchrun",
              "--nproc-per-node", "2"]
    full, _ = train(tmp_path, "uninterrupted", *common, "--master-port", str(free_port()))
    cfg = tmp_path / "base.yaml"
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "train", str(cfg), "-o", str(out), *common,
                             "--master-port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-8").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before checkpoint-8"
        time.sleep(0.05)
    workers = _workers(out)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-run
    t = time.monotonic()
    proc.communicate(timeout=120)
    waited = time.monotonic() - t
    assert proc.returncode != 0
    assert waited < 60, f"the surviving rank took {waited:.0f} s to stop"
    assert not _workers(out), "a rank hangs"
    assert not (out / "model.safetensors").exists()
    # the last complete checkpoint is intact; --resume continues from it to the same weights
    resumed = train(tmp_path, "killed", *common, "--master-port", str(free_port()), "--resume")[0]
    a, b = weights(full), weights(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
