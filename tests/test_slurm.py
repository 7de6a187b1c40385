"""The slurm launcher against a real single-node Slurm (Debian's slurm-wlm + munge on localhost).

The fixture starts munged, slurmctld and slurmd with a config of its own in a
temporary directory (its own ports, no system files touched), so it needs root
and the packages; ``.ci/run`` installs them. Where that is impossible the test
skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")


def _missing() -> str | None:
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return f"Slurm/munge not installed ({', '.join(absent)} missing: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("spool", "state", "log", "munge", "run"):
        (d / sub).mkdir()
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = d / "munge" / "munge.sock"
    subprocess.run(["munged", f"--key-file={key}", f"--socket={sock}", f"--pid-file={d}/munge/munged.pid",
                    f"--log-file={d}/munge/munged.log", f"--seed-file={d}/munge/seed", "--force"], check=True)
    host = socket.gethostname()
    info = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout.split()
    cpus = next((w.split("=")[1] for w in info if w.startswith("CPUs=")), "2")
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=lmforgetest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    subprocess.run(["slurmctld", "-i"], env=env, check=True)
    time.sleep(1)
    subprocess.run(["slurmd"], env=env, check=True)
    deadline = time.monotonic() + 30
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout:
        if time.monotonic() > deadline:
            pytest.fail("Slurm did not come up:\n" + (d / "log" / "slurmctld.log").read_text()[-2000:])
        time.sleep(0.5)
    yield env
    for pid in ("run/slurmd.pid", "run/slurmctld.pid", "munge/munged.pid"):
        try:
            os.kill(int((d / pid).read_text()), 15)
        except (OSError, ValueError):
            pass


@pytest.mark.slow
def test_submitted_job_completes_and_equals_a_local_run(slurm, tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"""model: tiny-llama
data: {{train_file: {ROOT}/examples/data/train.jsonl}}
max_length: 48
train: {{max_steps: 3, logging_steps: 1, report_to: [], save_steps: 100, per_device_train_batch_size: 2, seed: 0,
        disable_tqdm: true}}
""")
    env = dict(slurm, OMP_NUM_THREADS="1")
    run = tmp_path / "slurm-run"
    res = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg), "-o", str(run), "--launcher", "slurm",
                          "--nproc-per-node", "2", "--set", "launcher.nodes=1", "--submit"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().splitlines()[-1]
    assert job.isdigit(), res.stdout
    deadline = time.monotonic() + 600
    while True:
        state = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
        if "JobState=COMPLETED" in state:
            break
        assert "JobState=FAILED" not in state and "JobState=CANCELLED" not in state, \
            state + (run / f"slurm-{job}.out").read_text()[-3000:]
        assert time.monotonic() < deadline, "the Slurm job did not finish in 10 minutes"
        time.sleep(1)
    assert json.load(open(run / "train_results.json"))["global_step"] == 3
    local = tmp_path / "local-run"
    subprocess.run([sys.executable, "-m", "lmforge.cli", "train", str(cfg), "-o", str(local), "--launcher", "torchrun",
                    "--nproc-per-node", "2"], check=True, capture_output=True, env=env, timeout=600)

    def losses(d):
        return [r["loss"] for r in map(json.loads, open(d / "train_log.jsonl")) if "loss" in r]

    assert losses(run) == pytest.approx(losses(local), abs=1e-6)
    from safetensors.torch import load_file

    a, b = load_file(str(run / "model.safetensors")), load_file(str(local / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
