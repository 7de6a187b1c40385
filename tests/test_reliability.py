"""Fault injection: locked, never-reused, never-half-written run directories.

kill -9 at seeded random points then --resume to identical weights; two real
processes into one directory; concurrent runs sharing the token cache; a corrupt
file for each kind of artefact a run reads; a full / read-only output file
system; the step log and train_loss across resumes; bounded memory for one huge
record. The figures in docs/reliability.md come from these cases
(benchmarks/reliability.py runs more kills).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from lmforge.runs import rundir
from lmforge.errors import LmforgeError

from reliability_cases import (CORRUPTIONS, cli_env, kill_and_resume, lmforge, max_abs_diff, one_error_line,
                               popen_train, run_state, small_data, wait_for, weights, write_config)


# --------------------------------------------------------------------------
# fixtures: in-process tiny runs (one thread; the machine is shared)


def _train(cfg_path: str, **kw):
    from lmforge.config.schema import load_yaml
    from lmforge.train.pipeline import run_training
    from lmforge_testing import torch_threads

    cfg = load_yaml(cfg_path)
    for key, value in kw.items():
        if key in ("overwrite", "force_resume"):
            cfg[key] = value
        else:
            cfg["train"][key] = value
    with torch_threads(1):
        return run_training(cfg)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A 64-record data file, a complete LoRA run (4 steps, checkpoints 2 and 4) and a complete full run."""
    base = tmp_path_factory.mktemp("reliability")
    data = small_data(str(base / "d.jsonl"))
    lora = str(base / "lora")
    _train(write_config(str(base / "lora.yaml"), data, lora))
    full = str(base / "full")
    _train(write_config(str(base / "full.yaml"), data, full, peft="full", steps=2, save_steps=100))
    return {"data": data, "lora": lora, "full": full, "base": str(base)}


def snapshot(path: str) -> dict:
    """Every file under ``path`` with its size and mtime (to prove nothing was written)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


# --------------------------------------------------------------------------
# the lock


HOLDER = """
import sys, time
from lmforge.runs.rundir import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path, fx):
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, out], stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunDirError, match=rf"another run is using this output directory \(pid {holder.pid} "
                           r"on host \S+, started \d{4}-"):
            rundir.RunLock(out).acquire()
        # a training run into it fails at once, before reading data or loading anything
        cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out)
        res = lmforge("train", cfg)
        assert res.returncode == 2
        assert f"pid {holder.pid}" in one_error_line(res.stderr)
        # ... and so does reading the directory as a model
        assert rundir.lock_holder(out)["pid"] == holder.pid
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up; the kernel drops the lock
        holder.wait()
    assert rundir.lock_holder(out) is None
    with rundir.RunLock(out):
        assert rundir.lock_holder(out) is not None  # a probe from another descriptor sees it held


@pytest.mark.slow
def test_two_real_runs_into_one_dir_one_fails_at_once_the_other_is_intact(tmp_path, fx):
    out = str(tmp_path / "run")
    # long enough that B (a fresh process: ~5 s of imports) arrives while A trains
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out, steps=300, save_steps=100, logging_steps=50)
    a = popen_train(cfg, "--set", "train.seed=1")
    try:
        assert wait_for(lambda: rundir.lock_holder(out) is not None), a.communicate()[1][-2000:]
        t0 = time.time()
        b = lmforge("train", cfg, "--set", "train.seed=2")
        refused_after = time.time() - t0
        assert b.returncode == 2
        assert f"pid {a.pid}" in one_error_line(b.stderr)
        _, a_err = a.communicate(timeout=600)
    finally:
        a.kill()
    assert a.returncode == 0, a_err[-3000:]
    print(f"second run refused after {refused_after:.1f} s (process start included)")
    from lmforge.config.schema import load_yaml

    assert load_yaml(os.path.join(out, "lmforge.yaml"))["train"]["seed"] == 1
    for ck in ("checkpoint-100", "checkpoint-200", "checkpoint-300"):
        with open(os.path.join(out, ck, "trainer_state.json")) as f:
            assert json.load(f)["global_step"] == int(ck.split("-")[1])
    assert run_state(out) == "complete"


@pytest.mark.slow
def test_runs_in_different_dirs_sharing_the_token_cache_stay_correct(tmp_path, fx):
    env = cli_env(LMFORGE_CACHE_DIR=str(tmp_path / "cache"))
    procs, outs = [], []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        outs.append(out)
        procs.append(popen_train(write_config(str(tmp_path / f"{name}.yaml"), fx["data"], out), env=env))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert max_abs_diff(weights(outs[0]), weights(outs[1])) == 0.0
    assert max_abs_diff(weights(outs[0]), weights(fx["lora"])) == 0.0


# --------------------------------------------------------------------------
# reuse: --resume / --overwrite


def test_reusing_a_run_dir_needs_resume_or_overwrite(tmp_path, fx):
    out = str(tmp_path / "run")
    shutil.copytree(fx["lora"], out)
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out, save_steps=3)
    before = snapshot(out)
    with pytest.raises(rundir.RunDirError, match="already holds a complete run.*--resume.*--overwrite"):
        _train(cfg)
    assert snapshot(out) == before, "a refused run must not write anything"
    res = _train(cfg, overwrite=True)
    assert res.global_step == 4
    assert rundir.checkpoints(out) == ["checkpoint-3", "checkpoint-4"], "the old run's checkpoint-2 is gone"
    with open(os.path.join(out, "train_log.jsonl")) as f:
        assert [r["step"] for r in map(json.loads, f) if "loss" in r] == [1, 2, 3, 4]
    assert max_abs_diff(weights(out), weights(fx["lora"])) == 0.0
    with pytest.raises(rundir.RunDirError, match="contradict"):
        _train(cfg, overwrite=True, resume_from_checkpoint=True)


def test_resume_on_a_complete_run_does_nothing(tmp_path, fx):
    out = str(tmp_path / "run")
    shutil.copytree(fx["lora"], out)
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out)
    before = snapshot(out)
    res = lmforge("train", cfg, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "already complete (global_step 4" in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["global_step"] == 4
    assert snapshot(out) == before


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, fx):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], str(out))
    with pytest.raises(rundir.RunDirError, match="holds no lmforge run .*notes.txt"):
        _train(cfg, overwrite=True)
    assert (out / "notes.txt").read_text() == "precious"


def _interrupted_copy(fx, dst: str, status: str = "training") -> str:
    shutil.copytree(fx["lora"], dst)
    path = os.path.join(dst, "lmforge_run.json")
    state = json.load(open(path))
    state["status"] = status
    json.dump(state, open(path, "w"))
    return dst


def test_resume_names_every_difference_and_refuses_trajectory_changes(tmp_path, fx, capfd):
    out = _interrupted_copy(fx, str(tmp_path / "run"))
    shutil.rmtree(os.path.join(out, "checkpoint-4"))  # interrupted after checkpoint-2
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out, per_device_train_batch_size=2, learning_rate=1e-3,
                       steps=5)
    before = snapshot(out)
    with pytest.raises(rundir.RunDirError) as err:
        _train(cfg, resume_from_checkpoint=True)
    msg = str(err.value)
    assert "train.per_device_train_batch_size: 4 -> 2" in msg
    assert "train.learning_rate: 0.005 -> 0.001" in msg and "train.max_steps: 4 -> 5" in msg
    assert "--force-resume" in msg and "\n" not in msg
    assert snapshot(out) == before
    # changes that keep the trajectory are allowed and named
    cfg2 = write_config(str(tmp_path / "c2.yaml"), fx["data"], out, steps=4, logging_steps=2)
    res = _train(cfg2, resume_from_checkpoint=True)
    assert res.global_step == 4
    assert "train.logging_steps: 1 -> 2" in capfd.readouterr().err
    # forced: runs, and says what it forced past
    out3 = _interrupted_copy(fx, str(tmp_path / "run3"))
    shutil.rmtree(os.path.join(out3, "checkpoint-4"))
    cfg3 = write_config(str(tmp_path / "c3.yaml"), fx["data"], out3, per_device_train_batch_size=2)
    res = _train(cfg3, resume_from_checkpoint=True, force_resume=True)
    assert res.global_step == 4 and "forced past" in capfd.readouterr().err


# --------------------------------------------------------------------------
# checks before writing


def _no_heavy_work(monkeypatch):
    import lmforge.data.prepare

    def boom(*a, **k):
        raise AssertionError("tokenization / model load reached before the check")

    monkeypatch.setattr(lmforge.data.prepare, "prepare_job_data", boom)


@pytest.mark.parametrize("key,value,expected", [
    ("per_device_train_batch_size", -2, "train.per_device_train_batch_size: must be a positive integer, got -2"),
    ("gradient_accumulation_steps", 0, "train.gradient_accumulation_steps: must be a positive integer, got 0"),
    ("max_steps", 0, "train.max_steps: must be a positive integer"),
    ("learning_rate", -1.0, "train.learning_rate: must be a non-negative number"),
])
def test_bad_train_values_fail_before_anything_is_written(tmp_path, fx, monkeypatch, key, value, expected):
    _no_heavy_work(monkeypatch)
    out = str(tmp_path / "run")
    shutil.copytree(fx["lora"], out)
    before = snapshot(out)
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out, **{key: value})
    with pytest.raises(LmforgeError, match=expected):
        _train(cfg, overwrite=True)
    assert snapshot(out) == before
    res = lmforge("train", cfg, "-o", str(tmp_path / "new"))
    assert expected in one_error_line(res.stderr)
    assert not os.path.exists(tmp_path / "new")


def test_missing_data_and_bad_model_dir_fail_before_anything_is_written(tmp_path, fx, monkeypatch):
    _no_heavy_work(monkeypatch)
    out = str(tmp_path / "run")
    shutil.copytree(fx["lora"], out)
    before = snapshot(out)
    cfg = write_config(str(tmp_path / "c.yaml"), str(tmp_path / "missing.jsonl"), out)
    with pytest.raises(LmforgeError, match="data.train_file.*missing.jsonl"):
        _train(cfg, overwrite=True)
    model = shutil.copytree(fx["full"], str(tmp_path / "model"))
    with open(os.path.join(model, "model.safetensors"), "r+b") as f:
        f.truncate(1000)
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out)
    from lmforge.config.schema import load_yaml

    raw = load_yaml(cfg)
    raw["model"] = model
    raw["overwrite"] = True
    from lmforge.train.pipeline import run_training

    with pytest.raises(LmforgeError, match=f"{model}/model.safetensors: corrupt or truncated safetensors"):
        run_training(raw)
    assert snapshot(out) == before


def _mount_tmpfs(path: str, *opts: str) -> bool:
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", path],
                          capture_output=True).returncode == 0


def _umount(path: str) -> None:
    subprocess.run(["umount", path], capture_output=True)


def test_unwritable_output_dir_is_one_error_before_tokenization(tmp_path, fx, monkeypatch):
    _no_heavy_work(monkeypatch)
    ro = str(tmp_path / "ro")
    mounted = _mount_tmpfs(ro, "ro", "size=1m")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root without mount: no way to make an unwritable directory here")
        os.makedirs(ro)
        os.chmod(ro, 0o500)
    try:
        cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], os.path.join(ro, "run"))
        with pytest.raises(rundir.RunDirError, match=r"output_dir: .*/ro/run cannot be created: .*/ro is not writable"):
            _train(cfg)
        cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], str(tmp_path / "c.yaml" / "run"))
        with pytest.raises(rundir.RunDirError, match="is not a directory"):
            _train(cfg)
    finally:
        if mounted:
            _umount(ro)


def test_full_disk_stops_with_one_error_and_the_run_resumes(tmp_path, fx):
    mnt = str(tmp_path / "small")
    if not _mount_tmpfs(mnt, "size=3m"):
        pytest.skip("cannot mount a small tmpfs here (the simulated ENOSPC test covers this)")
    try:
        out = os.path.join(mnt, "run")
        cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out)
        res = lmforge("train", cfg)
        assert res.returncode == 2
        line = one_error_line(res.stderr)
        assert "the disk is full" in line and "--resume" in line
        assert run_state(out) in ("training", "saving")
        gen = lmforge("generate", out, "hi")
        assert "did not finish" in one_error_line(gen.stderr)
        # every checkpoint that carries the name is whole
        from lmforge.runs.artefacts import check_checkpoint

        for ck in rundir.checkpoints(out):
            check_checkpoint(os.path.join(out, ck))
    finally:
        _umount(mnt)


def test_simulated_enospc_during_a_checkpoint_then_resume_to_identical_weights(tmp_path, fx, monkeypatch):
    from transformers import Trainer

    out = str(tmp_path / "run")
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out)
    real = Trainer._save_optimizer_and_scheduler
    calls = {"n": 0}

    def full_on_second(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(output_dir, "optimizer.pt"))
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_on_second)
    with pytest.raises(rundir.RunDirError, match=r"optimizer.pt: cannot write: the disk is full; the run stopped"):
        _train(cfg)
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", real)
    assert rundir.checkpoints(out) == ["checkpoint-2"]
    res = _train(cfg, resume_from_checkpoint=True)
    assert res.global_step == 4
    assert max_abs_diff(weights(out), weights(fx["lora"])) == 0.0


# --------------------------------------------------------------------------
# atomic final save, completion marker, rotation


def test_interrupted_final_save_is_reported_everywhere_and_resume_finishes_it(tmp_path, fx, monkeypatch):
    from click.testing import CliRunner

    import lmforge
    from lmforge.cli.main import build_cli

    out = str(tmp_path / "run")
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out)
    real = rundir.publish_staged

    def killed_midway(staged, run_dir):
        first = sorted(os.listdir(staged))[0]
        os.replace(os.path.join(staged, first), os.path.join(run_dir, first))
        raise KeyboardInterrupt("simulated kill during the final save")

    monkeypatch.setattr(rundir, "publish_staged", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg)
    monkeypatch.setattr(rundir, "publish_staged", real)
    assert run_state(out) == "saving"
    with pytest.raises(rundir.RunIncompleteError, match=r"did not finish \(status: saving; last checkpoint: "
                       r"checkpoint-4\).*lmforge train .*lmforge.yaml --resume"):
        lmforge.load(out)
    runner = CliRunner()
    for argv in (["generate", out, "hi"], ["merge", out, "-o", str(tmp_path / "merged")]):
        res = runner.invoke(build_cli(), argv)
        assert res.exit_code == 2, res.output
        assert "did not finish" in one_error_line(res.stderr) and "--resume" in res.stderr
    res = _train(cfg, resume_from_checkpoint=True)
    assert res.global_step == 4 and run_state(out) == "complete"
    assert rundir.checkpoints(out) == ["checkpoint-2", "checkpoint-4"], "no step past max_steps"
    assert max_abs_diff(weights(out), weights(fx["lora"])) == 0.0
    assert not os.path.exists(os.path.join(out, rundir.STAGING))
    lmforge.load(out)


def test_rotation_never_leaves_a_half_deleted_checkpoint(tmp_path, fx, monkeypatch):
    from lmforge.runs.artefacts import check_checkpoint

    out = str(tmp_path / "run")
    shutil.copytree(fx["lora"], out)
    shutil.copytree(os.path.join(out, "checkpoint-4"), os.path.join(out, "checkpoint-6"))
    real = shutil.rmtree

    def killed_midway(path, *a, **k):  # delete one file, then "die"
        victim = sorted(os.listdir(path))[0]
        os.unlink(os.path.join(path, victim))
        raise KeyboardInterrupt("simulated kill during rotation")

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        rundir.rotate_checkpoints_safely(out, 2, None)
    monkeypatch.setattr(shutil, "rmtree", real)
    assert rundir.checkpoints(out) == ["checkpoint-4", "checkpoint-6"]
    for ck in rundir.checkpoints(out):
        check_checkpoint(os.path.join(out, ck))  # every checkpoint-N left is whole
    assert any(n.startswith(rundir.TRASH_PREFIX) for n in os.listdir(out))
    rundir.clean_leftovers(out)
    assert not any(n.startswith(rundir.TRASH_PREFIX) for n in os.listdir(out))


# --------------------------------------------------------------------------
# corrupt artefacts: one error line naming the file


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_artefact_ends_in_one_error_naming_it(tmp_path, fx, case):
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli

    argv, expected = CORRUPTIONS[case](str(tmp_path), fx)
    res = CliRunner().invoke(build_cli(), argv, catch_exceptions=True)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2, res.output[-3000:]
    line = one_error_line(res.stderr)
    assert expected in line, line


# --------------------------------------------------------------------------
# the step log and train_loss across resumes


def test_train_log_has_one_row_per_step_and_results_cover_the_whole_run(tmp_path, fx, monkeypatch):
    from transformers import Trainer

    straight = str(tmp_path / "straight")
    _train(write_config(str(tmp_path / "s.yaml"), fx["data"], straight, steps=8, save_steps=2))
    out = str(tmp_path / "run")
    cfg = write_config(str(tmp_path / "c.yaml"), fx["data"], out, steps=8, save_steps=2)
    real = Trainer.training_step
    for kill_at in (4, 7):  # steps 3 and 6-7 are trained twice: before the kill and after the resume
        calls = {"n": 0}

        def step(self, *a, _kill=kill_at, _calls=calls, **k):
            _calls["n"] += 1
            if self.state.global_step + 1 == _kill:
                raise KeyboardInterrupt(f"simulated kill in step {_kill}")
            return real(self, *a, **k)

        monkeypatch.setattr(Trainer, "training_step", step)
        with pytest.raises(KeyboardInterrupt):
            _train(cfg, resume_from_checkpoint=True)
    monkeypatch.setattr(Trainer, "training_step", real)
    res = _train(cfg, resume_from_checkpoint=True)
    rows = [json.loads(ln) for ln in open(os.path.join(out, "train_log.jsonl"))]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 9)), steps
    a = [json.loads(ln) for ln in open(os.path.join(straight, "train_log.jsonl"))]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx([r["loss"] for r in a if "loss" in r], abs=1e-6)
    want = json.load(open(os.path.join(straight, "train_results.json")))["train_loss"]
    got = json.load(open(os.path.join(out, "train_results.json")))["train_loss"]
    assert got == pytest.approx(want, rel=1e-6) and res.train_loss == pytest.approx(want, rel=1e-6)
    assert [r for r in rows if "train_loss" in r][-1]["train_loss"] == pytest.approx(want, rel=1e-6)
    assert max_abs_diff(weights(out), weights(straight)) == 0.0


# --------------------------------------------------------------------------
# kill -9 at random points


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_reaches_identical_weights(tmp_path, fx):
    seed = int(os.environ.get("LMFORGE_FAULT_SEED", random.SystemRandom().randrange(10**6)))
    print(f"\nfault-injection seed: {seed} (LMFORGE_FAULT_SEED={seed} reproduces it)")
    rng = random.Random(seed)
    straight = str(tmp_path / "straight")
    cfg = write_config(str(tmp_path / "s.yaml"), fx["data"], straight, steps=8, save_steps=2)
    p = popen_train(cfg)
    assert wait_for(lambda: run_state(straight) == "training")
    t0 = time.time()
    p.communicate()
    window = time.time() - t0  # from the first step to the end of the final save
    want = weights(straight)
    kills = 0
    for i in range(int(os.environ.get("LMFORGE_FAULT_KILLS", "3"))):
        out = str(tmp_path / f"killed{i}")
        kills += kill_and_resume(write_config(str(tmp_path / f"k{i}.yaml"), fx["data"], out, steps=8, save_steps=2),
                                 out, rng, window)
        assert max_abs_diff(weights(out), want) == 0.0, f"kill {i} (seed {seed})"
        steps = [json.loads(ln)["step"] for ln in open(os.path.join(out, "train_log.jsonl"))]
        assert [s for s in steps][:8] == list(range(1, 9)), steps
    print(f"kills landed: {kills}; all resumed to identical weights")


# --------------------------------------------------------------------------
# one huge record

HUGE = """
import json, os, random, resource, sys
path = sys.argv[1]
from lmforge.data.readers import read_examples
from lmforge.data.prepare import encoder_for_model
enc = encoder_for_model(sys.argv[2], max_length=512)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
n = 0
for _, exs in read_examples(path):
    for ex in exs:
        f = enc.encode(ex)
        n += len(f["input_ids"])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"tokens": n, "growth": after - before, "size": os.path.getsize(path),
                  "truncated": enc.stats.truncated}))
"""


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-chatglm3"])  # the default encoder and the GLM one
def test_truncating_a_50mb_record_stays_within_a_small_multiple_of_its_size(tmp_path, preset):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "apple", "delta", "42", "plus", "is", "苹果"]
    path = str(tmp_path / "huge.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        body = " ".join(rng.choice(words) for _ in range(8 * 2**20))[: 50 * 2**20]
        f.write(json.dumps({"input": "", "output": body}, ensure_ascii=False) + "\n")
        del body
    res = subprocess.run([sys.executable, "-c", HUGE, path, preset], capture_output=True, text=True, env=cli_env(),
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["tokens"] == 512 and got["truncated"] == 1
    print(f"\n50 MB record: peak RSS growth {got['growth'] / 2**20:.0f} MiB for a {got['size'] / 2**20:.0f} MiB record")
    assert got["growth"] < 6 * got["size"], got


def test_train_local_takes_resume_overwrite_and_force_resume():
    from lmforge.api import FineTune
    from lmforge.config.schema import validate

    cfg = FineTune(model="tiny-llama").build_config("d.jsonl", "out", overwrite=True, force_resume=True, resume=True)
    assert cfg["overwrite"] is True and cfg["force_resume"] is True
    assert cfg["train"]["resume_from_checkpoint"] is True
    resolved = validate(cfg)
    assert resolved["overwrite"] is True and resolved["force_resume"] is True
    # how a run was started is not part of what it is: lmforge.yaml keeps neither
    kept = rundir.strip_start_keys(resolved)
    assert "overwrite" not in kept and "force_resume" not in kept and "resume_from_checkpoint" not in kept["train"]


@pytest.mark.parametrize("preset", ["tiny-glm", "tiny-chatglm", "tiny-chatglm2", "tiny-chatglm3", "tiny-glm4"])
def test_glm_encoder_bounded_tokenization_gives_the_same_features(preset):
    from lmforge.data.prepare import encoder_for_model
    from lmforge.plugins.descriptors import Example, Message

    enc = encoder_for_model(preset, max_length=64)
    long_text = " ".join(f"word{i} 苹果 plus" for i in range(4000))
    for ex in (Example(messages=(Message("user", long_text), Message("assistant", "short answer"))),
               Example(messages=(Message("user", "q"), Message("assistant", long_text))),
               Example(text=long_text)):
        bounded = enc.encode(ex)
        enc._limit = None
        whole = type(enc).__mro__[0].segments(enc, ex)  # unbounded segments, same truncation
        from lmforge.data.encoding import features_from_segments

        want = features_from_segments(whole, enc.stats, max_length=enc.max_length, train_on_prompt=enc.train_on_prompt,
                                      source=None)
        assert (bounded is None) == (want is None)
        if want is not None:
            assert bounded["input_ids"] == want["input_ids"] and bounded["labels"] == want["labels"], preset
