"""``lmforge plugin new``: each kind scaffolds a plugin project whose own tests pass out of the box.

Each project is generated into tmp_path, made importable with its entry point
without pip (a dist-info beside the package: ``make_fake_dist``) and its tests run
in a subprocess, so the registry there sees the new plugin as an installed one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest
from click.testing import CliRunner

from lmforge.cli.main import cli
from lmforge_testing import make_fake_dist


def scaffold(tmp_path, name: str, kind: str) -> str:
    out = str(tmp_path / f"lmforge-{name}")
    result = CliRunner().invoke(cli, ["plugin", "new", name, "--kind", kind, "-o", out])
    assert result.exit_code == 0, result.output
    return out


def install_fake(project: str) -> None:
    """A dist-info for the project's own pyproject (name, version, lmforge entry points) beside its package."""
    with open(os.path.join(project, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)["project"]
    make_fake_dist(project, meta["name"], meta["version"], {}, dict(meta["entry-points"]["lmforge"]))


def run_project_tests(project: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([project, *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("kind,name", [
    ("family", "my-family"),
    ("format", "qa"),
    ("launcher", "nice-local"),
    pytest.param("peft", "norms-only", marks=pytest.mark.slow),
])
def test_scaffold_is_installable_and_its_tests_pass(tmp_path, kind, name):
    project = scaffold(tmp_path, name, kind)
    ident = name.replace("-", "_")
    files = {os.path.relpath(os.path.join(d, f), project) for d, _, fs in os.walk(project) for f in fs}
    assert {"pyproject.toml", "README.md", f"lmforge_{ident}/plugin.py", "tests/test_conformance.py"} <= files
    if kind == "family":
        assert f"lmforge_{ident}/modeling.py" in files
    install_fake(project)
    proc = run_project_tests(project)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


def test_plugin_project_registers_through_its_entry_point(tmp_path):
    project = scaffold(tmp_path, "qa", "format")
    install_fake(project)
    code = ("import json, sys; from lmforge.plugins.registry import get_registry; r = get_registry(); "
            "print(json.dumps([r.data_format('qa').name, 'torch' in sys.modules]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([project, *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '["qa", false]'


@pytest.mark.parametrize("args,needle", [
    (["Bad_Name", "--kind", "family"], "plugin name 'Bad_Name'"),
    (["class", "--kind", "family"], "is a Python keyword"),
    (["x", "--kind", "model"], "'model' is not one of"),
])
def test_bad_names_and_kinds_are_refused(tmp_path, args, needle):
    result = CliRunner().invoke(cli, ["plugin", "new", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and needle in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_a_non_empty_directory_is_not_overwritten(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["plugin", "new", "qa", "--kind", "format", "-o", str(tmp_path)])
    assert result.exit_code != 0 and "is not empty" in result.output
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_plugin_command_does_not_import_torch():
    code = ("import sys; from lmforge.cli.main import cli; "
            "cli(['plugin', 'new', '--help'], standalone_mode=False); assert 'torch' not in sys.modules, 'torch'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--kind" in proc.stdout
