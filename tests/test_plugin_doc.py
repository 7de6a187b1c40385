"""docs/plugins/writing-a-model-plugin.md: the Qwen2 plugin it walks through installs and passes the conformance suite.

The plugin's files are the doc's fenced blocks whose first line is ``# file: PATH``.
They are written into tmp_path, made importable with the entry point their own
pyproject.toml declares (a dist-info beside the package: ``make_fake_dist``, no pip,
no network), and ``lmforge.testing.check_family("qwen2")`` runs on them in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

from lmforge_testing import make_fake_dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "plugins", "writing-a-model-plugin.md")
BLOCK = re.compile(r"^```[a-z]*\n# file: (\S+)\n(.*?)^```$", re.M | re.S)
MAX_PLUGIN_LINES = 60


def doc_files() -> dict[str, str]:
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    files = {path: body for path, body in BLOCK.findall(text)}
    assert files, f"{DOC} has no '# file:' blocks"
    return files


def write_plugin(tmp_path) -> str:
    for rel, body in doc_files().items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    project = str(tmp_path / "qwen2_plugin")
    with open(os.path.join(project, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)["project"]
    make_fake_dist(project, meta["name"], meta["version"], {}, dict(meta["entry-points"]["lmforge"]))
    return project


def test_doc_plugin_is_small():
    files = doc_files()
    assert set(files) == {"qwen2_plugin/pyproject.toml", "qwen2_plugin/lmforge_qwen2/__init__.py",
                          "qwen2_plugin/lmforge_qwen2/plugin.py", "qwen2_plugin/lmforge_qwen2/tiny.py"}
    lines = len(files["qwen2_plugin/lmforge_qwen2/plugin.py"].splitlines())
    assert lines <= MAX_PLUGIN_LINES, f"the Qwen2 plugin has {lines} lines"
    assert f"{lines} lines of plugin" in open(DOC, encoding="utf-8").read()  # the doc states its size


def test_doc_plugin_passes_the_conformance_suite(tmp_path):
    project = write_plugin(tmp_path)
    code = ("import json, torch; torch.set_num_threads(1); from lmforge.testing import check_family; "
            "r = check_family('qwen2'); print(json.dumps({'passed': [c for c, _ in r.passed], 'skipped': r.skipped}))")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([project, *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["skipped"] == [] and {"training", "reload", "cached generation", "capability packing"} <= \
        set(report["passed"]), report


def test_doc_plugin_lists_and_estimates_without_torch(tmp_path):
    project = write_plugin(tmp_path)
    code = ("import json, sys; from lmforge.plugins.registry import get_registry; fam = get_registry().family('qwen2'); "
            "a = fam.arch_from_config(fam.preset('qwen2-7b').config); "
            "print(json.dumps([a.num_key_value_heads, a.attention_bias, a.attention_kind, 'torch' in sys.modules]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([project, *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == [4, True, "gqa", False]
