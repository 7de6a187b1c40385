"""Training throughput on a shared CPU: lmforge's thread policy against torch's default.

    python benchmarks/threads.py [--steps 30] [--logging-steps 5]

The quickstart's training (tiny-llama, full fine-tune, batch 16, max length 128, the bundled
arithmetic data, ``examples/quickstart.yaml``) for ``--steps`` steps, run by ``lmforge train`` in a
fresh process with ``OMP_NUM_THREADS`` removed from its environment, under four conditions:

    idle  / auto     nothing else started by the benchmark; lmforge's default ``threads: auto``
    idle  / default  ``--threads N`` with N = torch's own default (``torch.get_num_threads()`` of a
                     fresh process): what torch does when nobody chooses
    busy  / auto     a busy-loop process pinned to the last core of this process's affinity set
    busy  / default  the same busy loop, torch's default thread count

Throughput is real (non-pad) tokens/s from ``train_log.jsonl`` (the median over logging
intervals, the first one dropped: it includes the first step's warm-up). Prints each condition's
figure, the thread count lmforge chose (its log line) and the 1-minute load average, then the
ratios: busy/idle slowdown with the policy (goal: under 2x) and without it.

Other processes on the machine are not stopped: "idle" means only that the benchmark started no
load; the load average column says what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LMFORGE = [sys.executable, "-m", "lmforge.cli"]


def clean_env() -> dict:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LMFORGE_THREADS"):
        env.pop(key, None)
    return env


def torch_default_threads() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=clean_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def start_busy_loop() -> subprocess.Popen:
    core = sorted(os.sched_getaffinity(0))[-1]
    code = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(1.0)  # let it occupy the core before the policy samples
    return proc


def train(steps: int, logging_steps: int, threads: str | None, out_dir: str) -> dict:
    cmd = [*LMFORGE, "train", os.path.join(REPO, "examples", "quickstart.yaml"), "-o", out_dir,
           "--max-steps", str(steps), "--set", f"train.logging_steps={logging_steps}",
           "--set", "train.report_to=[]", "--set", "train.save_strategy='no'", "--set", "train.disable_tqdm=true",
           "--set", "data.valid_file=null", "--set", "train.warmup_steps=0"]
    if threads is not None:
        cmd += ["--threads", threads]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"training failed:\n{res.stderr[-3000:]}")
    chosen = re.search(r"cpu threads: (\d+) \(([^)]*)\)", res.stderr)
    rates = []
    with open(os.path.join(out_dir, "train_log.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "tokens_per_second" in row:
                rates.append(row["tokens_per_second"])
    rates = rates[1:] or rates
    return {"tokens_per_second": statistics.median(rates), "wall_s": wall,
            "threads": int(chosen.group(1)) if chosen else None, "reason": chosen.group(2) if chosen else "",
            "load": max(load_before, os.getloadavg()[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--logging-steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of all four conditions; each figure is the median over rounds")
    args = ap.parse_args()
    default = torch_default_threads()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores in this process's affinity set; torch's default: {default} threads")
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.repeat):  # conditions interleaved, so outside load falls on all of them
            for load in ("idle", "busy"):
                busy = start_busy_loop() if load == "busy" else None
                try:
                    for policy, flag in (("auto", None), ("default", str(default))):
                        r = train(args.steps, args.logging_steps, flag, os.path.join(tmp, f"{rnd}-{load}-{policy}"))
                        runs.setdefault((load, policy), []).append(r)
                        print(f"round {rnd + 1}  {load:5} / {policy:8} threads {r['threads']} ({r['reason']}): "
                              f"{r['tokens_per_second']:8.0f} tokens/s  (process {r['wall_s']:.1f} s, "
                              f"load {r['load']:.1f})", flush=True)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
    tps = {k: statistics.median(r["tokens_per_second"] for r in v) for k, v in runs.items()}
    print()
    for (load, policy), value in tps.items():
        print(f"median {load:5} / {policy:8}: {value:8.0f} tokens/s")
    print()
    print(f"slowdown busy/idle, lmforge auto:   {tps[('idle', 'auto')] / tps[('busy', 'auto')]:.2f}x (goal < 2x)")
    print(f"slowdown busy/idle, torch default:  {tps[('idle', 'default')] / tps[('busy', 'default')]:.2f}x")
    print(f"busy machine, auto over default:    {tps[('busy', 'auto')] / tps[('busy', 'default')]:.2f}x faster")
    print(f"idle machine, auto over default:    {tps[('idle', 'auto')] / tps[('idle', 'default')]:.2f}x")


if __name__ == "__main__":
    main()
