"""The CPU thread policy (lmforge.runtime.threads) on faked machines, and its config key and flags."""

from __future__ import annotations

import pytest

from lmforge.runtime import threads
from lmforge.errors import ConfigError


def machine(cores: int, busy: float):
    return dict(cores=lambda: cores, busy=lambda: busy)


def test_omp_num_threads_wins_over_everything():
    c = threads.choose(4, environ={"OMP_NUM_THREADS": "1"}, **machine(8, 0.0))
    assert c.threads == 1
    assert "OMP_NUM_THREADS=1" in c.reason and "over threads: 4" in c.reason


def test_explicit_setting_without_env():
    assert threads.choose(3, environ={}, **machine(8, 7.0)).threads == 3
    assert threads.choose("2", environ={}, **machine(8, 7.0)).threads == 2


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0.05, 2),   # idle 2-core machine: both
    (2, 1.0, 1),    # one core kept busy by another process: one thread, no barrier waits
    (2, 0.6, 1),    # a busy process migrating between the two cores still counts as one core
    (2, 2.0, 1),    # everything busy: never fewer than one
    (2, 9.0, 1),    # load average far above the core count (fallback measure)
    (16, 3.2, 13),
])
def test_auto_counts_the_free_cores(cores, busy, expected):
    assert threads.choose("auto", environ={}, **machine(cores, busy)).threads == expected
    assert threads.choose(None, environ={}, **machine(cores, busy)).threads == expected


def test_auto_divides_among_the_local_processes():
    assert threads.choose("auto", environ={"LOCAL_WORLD_SIZE": "4"}, **machine(16, 0.0)).threads == 4
    assert threads.choose("auto", environ={"LOCAL_WORLD_SIZE": "4"}, **machine(2, 0.0)).threads == 1


def test_flag_of_inference_commands_goes_through_the_environment(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(threads.ENV, "")  # registered, so monkeypatch removes what request() sets
    monkeypatch.delenv(threads.ENV)
    threads.request(None)
    assert threads.ENV not in __import__("os").environ
    threads.request("3")
    assert threads.choose(None, **machine(8, 0.0)).threads == 3
    # an explicit setting (config) still wins over the recorded flag default
    assert threads.choose(5, **machine(8, 0.0)).threads == 5


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True])
def test_bad_values_are_one_error(bad):
    with pytest.raises(ConfigError, match=r"^threads: expected a positive integer or 'auto'"):
        threads.parse(bad)


def test_bad_omp_num_threads_names_the_variable():
    with pytest.raises(ConfigError, match="^OMP_NUM_THREADS: "):
        threads.choose(None, environ={"OMP_NUM_THREADS": "lots"}, **machine(2, 0.0))


def test_real_machine_measure_is_sane():
    n = threads.usable_cores()
    assert n >= 1
    busy = threads.busy_cores(0.05)
    assert 0.0 <= busy
    assert threads.choose("auto", environ={}).threads >= 1


def test_apply_sets_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        torch.set_num_threads(2)
        assert threads.apply().threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_config_key_validated():
    from lmforge.config.schema import validate

    base = {"model": "tiny-llama", "data": {"train_file": "x.jsonl"}}
    assert validate(base)["threads"] == "auto"
    assert validate({**base, "threads": 2})["threads"] == 2
    assert validate({**base, "threads": "AUTO"})["threads"] == "auto"
    with pytest.raises(ConfigError, match="^threads: "):
        validate({**base, "threads": 0})


def test_threads_flag_on_every_command():
    from click.testing import CliRunner

    from lmforge.cli.main import cli

    runner = CliRunner()
    for cmd in ("train", "generate", "predict", "serve", "chat"):
        res = runner.invoke(cli, [cmd, "--help"])
        assert res.exit_code == 0 and "--threads" in res.output, cmd


def test_train_dry_run_takes_the_flag(tmp_path):
    from click.testing import CliRunner

    from lmforge.cli.main import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny-llama\ndata:\n  train_file: x.jsonl\n")
    res = CliRunner().invoke(cli, ["train", str(cfg), "--threads", "3", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "threads: 3" in res.output
    res = CliRunner().invoke(cli, ["train", str(cfg), "--threads", "zero", "--dry-run"])
    assert res.exit_code == 2
    assert "error: threads: expected a positive integer or 'auto', got 'zero'" in res.output
