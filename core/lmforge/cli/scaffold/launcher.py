"""``lmforge plugin new NAME --kind launcher``: a launcher that runs the worker at a lower CPU priority.

Its ``command`` prefixes the worker argv with ``nice -n LEVEL``; ``check``
refuses multi-process jobs, which need a launcher that starts one worker per rank.
"""

TESTS = "checks the launcher's registration, argv and config check"
TEST_DEPS = ""

FILES = {
    "$pkg/plugin.py": '''"""Registers the $name launcher (pure Python)."""

from lmforge import hookimpl
from lmforge.errors import ConfigError
from lmforge.plugins.descriptors import Launcher, Option

OPTIONS = (Option("niceness", int, 10, "nice level of the worker process (0-19)"),)


def command(spec):
    level = int(spec.options.get("niceness", 10))
    return ["nice", "-n", str(level), *spec.worker_argv]


def check(cfg):
    launcher = cfg.get("launcher") or {}
    if int(launcher.get("nproc_per_node") or 1) > 1 or int(launcher.get("nnodes") or 1) > 1:
        raise ConfigError("launcher.nproc_per_node: the $name launcher starts one process; use torchrun")
    if not 0 <= int(launcher.get("niceness", 10)) <= 19:
        raise ConfigError("launcher.niceness: must be between 0 and 19")


LAUNCHER = Launcher(
    name="$name",
    description="one worker process at a lower CPU priority (nice)",
    command=command,
    options=OPTIONS,
    check=check,
)


@hookimpl
def register_launchers(register):
    register(LAUNCHER)
''',
    "tests/test_conformance.py": '''"""The $name launcher as lmforge sees it: registered, its argv, its config check."""

import pytest

from lmforge.errors import ConfigError
from lmforge.plugins.descriptors import LaunchSpec
from lmforge.plugins.registry import get_registry


def test_registered_with_its_options():
    launcher = get_registry().launcher("$name")
    assert [o.name for o in launcher.options] == ["niceness"]


def test_command_wraps_the_worker():
    launcher = get_registry().launcher("$name")
    spec = LaunchSpec(worker_argv=("python", "-m", "lmforge.train.worker", "job.yaml"), options={"niceness": 5})
    assert launcher.command(spec) == ["nice", "-n", "5", "python", "-m", "lmforge.train.worker", "job.yaml"]


def test_check_refuses_several_processes():
    launcher = get_registry().launcher("$name")
    launcher.check({"launcher": {"name": "$name", "niceness": 10}})
    with pytest.raises(ConfigError, match="nproc_per_node"):
        launcher.check({"launcher": {"name": "$name", "nproc_per_node": 2}})
''',
}
