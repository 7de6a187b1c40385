"""Launchers: the local one runs in process; torchrun starts one worker per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmforge.plugins.descriptors import LaunchSpec
from lmforge.plugins.registry import get_registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torchrun_command_single_and_multi_node():
    launcher = get_registry().launcher("torchrun")
    worker = (sys.executable, "-m", "lmforge.train.worker", "/tmp/c.yaml")
    one = launcher.command(LaunchSpec(worker_argv=worker, nproc_per_node=2))
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--standalone",
                       "-m", "lmforge.train.worker", "/tmp/c.yaml"]
    multi = launcher.command(LaunchSpec(worker_argv=worker, nproc_per_node=8, nnodes=4, node_rank=2,
                                        master_addr="10.0.0.1", master_port=29600))
    assert "--node_rank=2" in multi and "--master_addr=10.0.0.1" in multi and "--master_port=29600" in multi
    assert "--standalone" not in multi


@pytest.mark.slow
def test_torchrun_two_processes_train_ddp(tmp_path):
    out = tmp_path / "ddp"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: tiny-llama\n"
        f"output_dir: {out}\n"
        f"data: {{train_file: {ROOT}/examples/data/train.jsonl}}\n"
        "max_length: 48\n"
        "peft: {method: lora}\n"
        "train: {max_steps: 4, per_device_train_batch_size: 2, logging_steps: 1, report_to: [], save_steps: 100,"
        " learning_rate: 5.0e-3}\n"
        "launcher: {name: torchrun, nproc_per_node: 2}\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "torch.distributed.run" in res.stderr
    results = json.load(open(out / "train_results.json"))
    assert results["global_step"] == 4
    assert (out / "adapter_model.safetensors").exists()
    state = json.load(open(out / "checkpoint-4" / "trainer_state.json"))
    # 2 ranks x 2 examples per device = 4 examples per optimizer step
    assert state["train_batch_size"] == 2
    logged = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert len([r for r in logged if "loss" in r]) == 4, "only rank 0 writes the log"
    # the launcher parent held the directory for its workers; the run is recorded complete and not reused
    assert json.load(open(out / "lmforge_run.json"))["status"] == "complete"
    again = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg)], capture_output=True, text=True,
                           timeout=600, env=env)
    assert again.returncode == 2 and "already holds a complete run" in again.stderr
