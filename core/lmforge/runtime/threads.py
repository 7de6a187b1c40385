"""CPU thread policy: how many intra-op threads torch uses.

torch starts one OpenMP thread per core it may run on. When another process keeps
one of those cores busy, every parallel region waits at its barrier for the
thread that shares the busy core, and a small model's step gets 10-25x slower
(issue 19: 5.4 s against 0.2 s). lmforge therefore picks the count itself:

1. ``OMP_NUM_THREADS`` in the environment, when set (the standard knob; torchrun
   and Slurm set it too);
2. else the ``--threads`` flag / the ``threads:`` config key: a number, or
3. ``auto`` (the default): the cores this process may run on
   (``sched_getaffinity``, capped by a cgroup CPU quota) minus the cores other
   processes keep busy, measured over a short CPU-time sample, divided among the
   processes of this node (``LOCAL_WORLD_SIZE``); at least 1.

Pure Python until :func:`apply` (which imports torch); the CLI imports this module
without importing torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lmforge.errors import ConfigError

ENV = "LMFORGE_THREADS"  # set by the --threads flag of the inference commands, read by apply()
SAMPLE_SECONDS = 0.2


@dataclass(frozen=True)
class ThreadChoice:
    """How many threads, and why (one line for the log)."""

    threads: int
    reason: str


def parse(value: Any, where: str = "threads") -> int | str | None:
    """``None``, ``"auto"`` or a positive integer (also given as a string)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
        else:
            raise ConfigError(f"{where}: expected a positive integer or 'auto', got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a positive integer or 'auto', got {value!r}")
    return value


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2/v1 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:  # cgroup v2: "max 100000" or "50000 100000"
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as f:
            period_us = int(f.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores (of this process's affinity set) other processes kept busy, in core units.

    psutil (a dependency of accelerate) samples the per-CPU times over ``seconds``;
    summing the busy shares is robust to the scheduler moving a busy process between
    cores during the sample. This process sleeps while sampling, so it does not count
    itself. Without psutil, the 1-minute load average stands in.
    """
    try:
        import psutil

        per_cpu = psutil.cpu_percent(interval=seconds, percpu=True)
        try:
            allowed = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            allowed = list(range(len(per_cpu)))
        return sum(per_cpu[i] for i in allowed if i < len(per_cpu)) / 100.0
    except Exception:  # noqa: BLE001 - no psutil, or no /proc: fall back to the load average
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0


def local_processes(environ: Mapping[str, str]) -> int:
    """Processes of this job on this node (torchrun's ``LOCAL_WORLD_SIZE``), at least 1."""
    try:
        return max(1, int(environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def choose(setting: Any = None, *, environ: Mapping[str, str] | None = None,
           cores: Callable[[], int] = usable_cores, busy: Callable[[], float] = busy_cores) -> ThreadChoice:
    """The thread count for ``setting`` (the flag or config value: None, ``"auto"`` or an int).

    ``environ``, ``cores`` and ``busy`` are injectable so tests can fake the machine.
    """
    env = os.environ if environ is None else environ
    requested = parse(setting)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp:
        n = parse(omp, "OMP_NUM_THREADS")
        if n == "auto":
            requested = "auto"  # OMP_NUM_THREADS=auto is not valid OpenMP, but means what it says
        else:
            note = f" (over threads: {requested})" if isinstance(requested, int) and requested != n else ""
            return ThreadChoice(int(n), f"OMP_NUM_THREADS={omp}{note}")
    if requested is None:
        requested = parse(env.get(ENV), ENV) or "auto"
    if requested != "auto":
        return ThreadChoice(int(requested), f"threads: {requested}")
    total = cores()
    used = busy()
    free = max(1, int(math.floor(total - used + 0.5)))
    procs = local_processes(env)
    n = max(1, free // procs)
    per = f", {procs} processes on this node" if procs > 1 else ""
    return ThreadChoice(n, f"auto: {total} cores, {used:.1f} busy{per}")


def apply(setting: Any = None, log: Callable[[str], None] | None = None) -> ThreadChoice:
    """Choose the count (see :func:`choose`) and set it with ``torch.set_num_threads``."""
    import torch

    choice = choose(setting)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    if log is not None:
        log(f"cpu threads: {choice.threads} ({choice.reason})")
    return choice


def request(value: Any) -> None:
    """Record the ``--threads`` flag of an inference command for :func:`apply` (no-op for None)."""
    parsed = parse(value, "--threads")
    if parsed is not None:
        os.environ[ENV] = str(parsed)


def click_option(fn):
    """The ``--threads N|auto`` option shared by the CLI commands."""
    import click

    return click.option("--threads", default=None, metavar="N|auto",
                        help="torch CPU threads (default: OMP_NUM_THREADS, else auto: the cores not busy)")(fn)
