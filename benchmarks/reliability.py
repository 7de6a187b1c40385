"""Fault-injection figures for docs/reliability.md.

    OMP_NUM_THREADS=1 python benchmarks/reliability.py [--kills 10] [--seed 1234]

1. kill -9: a tiny-llama LoRA run (8 steps, a checkpoint every 2) is started
   KILLS times and SIGKILLed at a seeded random moment between its first step
   and the end of its final save, then ``--resume``d until complete; each final
   adapter is compared with an uninterrupted run's (max |delta| must be 0).
2. bad inputs: every corrupt artefact of tests/reliability_cases.py plus the
   config/output-directory mistakes below, each run through the CLI; a case
   counts as clear when it exits with status 2 and one ``error:`` line naming
   the file, key or option, with no traceback.

Prints every error line and the totals.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from reliability_cases import (CORRUPTIONS, kill_and_resume, lmforge, max_abs_diff, popen_train,  # noqa: E402
                               run_state, small_data, wait_for, weights, write_config)


def config_mistakes(tmp: str, fx: dict) -> dict:
    """Config and output-directory mistakes: name -> (argv, expected substring)."""
    d = fx["data"]
    occupied = shutil.copytree(fx["lora"], os.path.join(tmp, "occupied"))
    interrupted = shutil.copytree(fx["lora"], os.path.join(tmp, "interrupted"))
    state = os.path.join(interrupted, "lmforge_run.json")
    text = open(state).read().replace('"complete"', '"training"')
    open(state, "w").write(text)
    notrun = os.path.join(tmp, "notrun")
    os.makedirs(notrun)
    open(os.path.join(notrun, "notes.txt"), "w").write("x")
    afile = os.path.join(tmp, "afile")
    open(afile, "w").write("x")
    cfg = write_config(os.path.join(tmp, "m.yaml"), d, os.path.join(tmp, "out"))
    return {
        "negative batch size": (["train", cfg, "--set", "train.per_device_train_batch_size=-2"],
                                "train.per_device_train_batch_size"),
        "zero accumulation": (["train", cfg, "--set", "train.gradient_accumulation_steps=0"],
                              "train.gradient_accumulation_steps"),
        "zero max_steps": (["train", cfg, "--set", "train.max_steps=0"], "train.max_steps"),
        "negative learning rate": (["train", cfg, "--lr", "-1"], "train.learning_rate"),
        "missing data file": (["train", cfg, "--set", f"data.train_file={tmp}/nope.jsonl"], "nope.jsonl"),
        "output_dir under a file": (["train", cfg, "-o", os.path.join(afile, "run")], afile),
        "reuse a complete run": (["train", cfg, "-o", occupied], "--overwrite"),
        "overwrite a non-run dir": (["train", cfg, "-o", notrun, "--overwrite"], "notes.txt"),
        "resume with another batch": (["train", cfg, "-o", interrupted, "--resume", "--set",
                                       "train.per_device_train_batch_size=2"], "train.per_device_train_batch_size"),
        "resume and overwrite": (["train", cfg, "-o", interrupted, "--resume", "--overwrite"], "--overwrite"),
        "generate from an interrupted run": (["generate", interrupted, "hi"], "--resume"),
    }


def check_case(argv, expected) -> tuple[bool, str]:
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli

    res = CliRunner().invoke(build_cli(), argv)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    ok = (res.exit_code == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in res.stderr
          and (res.exception is None or isinstance(res.exception, SystemExit)))
    return ok, (lines[0] if lines else f"exit {res.exit_code}: {res.output[-300:]!r} {res.exception!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"seed: {seed}")
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="lmforge-reliability-")
    os.environ.setdefault("LMFORGE_CACHE_DIR", os.path.join(tmp, "cache"))
    data = small_data(os.path.join(tmp, "d.jsonl"))
    fx = {"data": data, "lora": os.path.join(tmp, "lora"), "full": os.path.join(tmp, "full")}
    for name, extra in (("lora", {}), ("full", {"peft": "full", "steps": 2, "save_steps": 100})):
        res = lmforge("train", write_config(os.path.join(tmp, f"{name}.yaml"), data, fx[name], **extra))
        assert res.returncode == 0, res.stderr[-2000:]

    # 1. kill -9
    straight = os.path.join(tmp, "straight")
    p = popen_train(write_config(os.path.join(tmp, "s.yaml"), data, straight, steps=8, save_steps=2))
    wait_for(lambda: run_state(straight) == "training")
    t0 = time.time()
    p.communicate()
    window = time.time() - t0
    want = weights(straight)
    landed = identical = 0
    for i in range(args.kills):
        out = os.path.join(tmp, f"killed{i}")
        delay_rng = random.Random(rng.random())
        landed_now = kill_and_resume(write_config(os.path.join(tmp, f"k{i}.yaml"), data, out, steps=8, save_steps=2),
                                     out, delay_rng, window)
        diff = max_abs_diff(weights(out), want)
        landed += landed_now
        identical += landed_now and diff == 0.0
        print(f"kill {i}: {'landed' if landed_now else 'run finished first'}; max |delta| after resume = {diff}")
    print(f"kills survived: {identical} / {landed} (window {window:.1f} s)")

    # 2. bad inputs
    cases = {f"corrupt: {k}": fn(tempfile.mkdtemp(dir=tmp), fx) for k, fn in sorted(CORRUPTIONS.items())}
    cases.update({f"config: {k}": v for k, v in config_mistakes(tempfile.mkdtemp(dir=tmp), fx).items()})
    clear = 0
    for name, (argv, expected) in cases.items():
        ok, line = check_case(argv, expected)
        clear += ok
        print(f"{'ok ' if ok else 'BAD'} {name}: {line[:220]}")
    print(f"bad inputs with a clear error: {clear} / {len(cases)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
