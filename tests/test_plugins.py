"""Plugin host: discovery, broken plugins, strict mode, duplicate names, CLI listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

from lmforge.errors import PluginConflictError, PluginError
from lmforge.plugins.registry import Registry, get_registry

from lmforge_testing import dist_entry_points, make_fake_dist

BROKEN = "raise RuntimeError('boom: this plugin is broken on purpose')\n"

DUP_FAMILY = """
from lmforge import hookimpl
from lmforge.plugins.descriptors import ModelFamily, ArchSpec

@hookimpl
def register_model_families(register):
    register(ModelFamily(name="llama", loader="x:y", arch_from_config=lambda c: None))
"""

GOOD = """
from lmforge import hookimpl
from lmforge.plugins.descriptors import DataFormat, Example

@hookimpl
def register_data_formats(register):
    register(DataFormat(name="qa_pairs", detect=lambda r: isinstance(r, dict) and "q" in r,
                        convert=lambda r: [Example(text=r["q"])], required_fields=("q",)))
"""


def installed_eps():
    return list(metadata.entry_points(group="lmforge"))


def test_builtins_and_llama_are_discovered_through_entry_points():
    reg = Registry()
    reg.load_entry_points()
    dists = {d["name"]: d for d in reg.plugins_json()}
    assert dists["lmforge"]["status"] == "ok", dists["lmforge"]["error"]
    assert {"full", "lora"} <= set(dists["lmforge"]["registered"]["peft_methods"])
    assert "input_output" in dists["lmforge"]["registered"]["data_formats"]
    assert "local" in dists["lmforge"]["registered"]["launchers"]
    assert dists["llm-plugins-llama"]["registered"]["model_families"] == ["llama"]
    assert reg.family("llama").preset("tiny-llama").tiny


def test_broken_plugin_is_recorded_and_skipped(tmp_path):
    root = make_fake_dist(str(tmp_path), "lmforge-broken", "9.9", {"lmf_broken": BROKEN}, {"broken": "lmf_broken"})
    sys.path.insert(0, root)
    try:
        reg = Registry()
        reg.load_entry_points(installed_eps() + dist_entry_points(root, "lmforge-broken"))
    finally:
        sys.path.remove(root)
    rec = {d["name"]: d for d in reg.plugins_json()}["lmforge-broken"]
    assert rec["status"] == "broken"
    assert rec["version"] == "9.9"
    assert "boom: this plugin is broken on purpose" in rec["error"]
    # everything else still works
    assert reg.family("llama").name == "llama"
    assert reg.peft_method("lora").name == "lora"


def test_strict_mode_reraises(tmp_path, monkeypatch):
    root = make_fake_dist(str(tmp_path), "lmforge-broken", "9.9", {"lmf_broken2": BROKEN}, {"broken": "lmf_broken2"})
    monkeypatch.setenv("LMFORGE_STRICT_PLUGINS", "1")
    sys.path.insert(0, root)
    try:
        reg = Registry()
        with pytest.raises(PluginError, match="boom"):
            reg.load_entry_points(dist_entry_points(root, "lmforge-broken"))
    finally:
        sys.path.remove(root)


def _evil_registry(root, order=1, extra_eps=()):
    eps = installed_eps() + dist_entry_points(root, "evil-llama") + list(extra_eps)
    reg = Registry()
    key = lambda e: (e.dist.metadata["Name"] if e.dist else "", e.name)  # noqa: E731
    unique = {(key(e), e.value): e for e in eps}.values()  # the fake dist is on sys.path, so listed twice
    for ep in sorted(unique, key=key, reverse=order < 0):
        reg._load_one(ep)
    return reg


def test_contested_name_is_refused_for_both_whatever_the_load_order(tmp_path, monkeypatch):
    root = make_fake_dist(str(tmp_path), "evil-llama", "1.0", {"lmf_dup": DUP_FAMILY}, {"dup": "lmf_dup"})
    sys.path.insert(0, root)
    try:
        outcomes = []
        for order in (1, -1):
            reg = _evil_registry(root, order)
            rows = {d["name"]: d for d in reg.plugins_json()}
            # neither distribution is broken; both are told about the conflict, naming both
            for name in ("evil-llama", "llm-plugins-llama"):
                assert rows[name]["status"] == "ok"
                assert len(rows[name]["conflicts"]) == 1
                assert "evil-llama" in rows[name]["conflicts"][0] and "llm-plugins-llama" in rows[name]["conflicts"][0]
            with pytest.raises(PluginConflictError, match="registered twice.*LMFORGE_DISABLE_PLUGINS") as err:
                reg.family("llama")
            with pytest.raises(PluginConflictError, match="contested family"):
                reg.find_preset("tiny-llama")
            # a llama checkpoint is not silently claimed by the generic causal-lm family instead
            with pytest.raises(PluginConflictError):
                reg.family_for_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
            # everything else keeps working
            assert reg.peft_method("lora").name == "lora" and reg.family("bloom").name == "bloom"
            outcomes.append((str(err.value), sorted(reg.names("model_families"))))
        assert outcomes[0] == outcomes[1], "the outcome must not depend on the load order"
        # disabling one of the two gives the name to the other
        monkeypatch.setenv("LMFORGE_DISABLE_PLUGINS", "evil-llama")
        reg = _evil_registry(root)
        assert reg.plugin_of("model_families", "llama").distribution == "llm-plugins-llama"
        assert reg.find_preset("tiny-llama")[0].name == "llama"
        assert {d["name"]: d for d in reg.plugins_json()}["evil-llama"]["status"] == "disabled"
        monkeypatch.delenv("LMFORGE_DISABLE_PLUGINS")
        # ... as does an allowlist (lmforge's built-ins always load)
        monkeypatch.setenv("LMFORGE_PLUGINS", "llm-plugins-llama")
        reg = _evil_registry(root)
        assert reg.plugin_of("model_families", "llama").distribution == "llm-plugins-llama"
        assert reg.peft_method("lora").name == "lora"
        monkeypatch.delenv("LMFORGE_PLUGINS")
        monkeypatch.setenv("LMFORGE_STRICT_PLUGINS", "1")
        with pytest.raises(PluginError, match="registered twice"):
            _evil_registry(root)
    finally:
        sys.path.remove(root)


PRESET_THIEF = """
from lmforge import hookimpl
from lmforge.plugins.descriptors import ModelFamily, Preset

@hookimpl
def register_model_families(register):
    register(ModelFamily(name="thief", aliases=("bloom",), loader="x:y", arch_from_config=lambda c: None,
                         presets=(Preset(name="tiny-llama", config={"model_type": "thief"}, tiny=True),
                                  Preset(name="thief-1b", config={"model_type": "thief"}))))
"""


def test_preset_names_and_aliases_are_unique_across_families(tmp_path):
    root = make_fake_dist(str(tmp_path), "preset-thief", "0.1", {"lmf_thief": PRESET_THIEF}, {"thief": "lmf_thief"})
    sys.path.insert(0, root)
    try:
        for order in (1, -1):
            reg = Registry()
            eps = installed_eps() + dist_entry_points(root, "preset-thief")
            unique = {(e.dist.metadata["Name"], e.name, e.value): e for e in eps}
            for k in sorted(unique, reverse=order < 0):
                reg._load_one(unique[k])
            with pytest.raises(PluginConflictError, match=r"preset name 'tiny-llama'.*preset-thief.*llm-plugins-llama"
                               r"|preset name 'tiny-llama'.*llm-plugins-llama.*preset-thief"):
                reg.find_preset("tiny-llama")
            with pytest.raises(PluginConflictError, match="'bloom'"):
                reg.family("bloom")
            # the rest of both families keeps working
            assert reg.find_preset("thief-1b")[0].name == "thief"
            assert reg.find_preset("llama-2-7b")[0].name == "llama"
            assert reg.family("thief").name == "thief" and reg.family("llama").name == "llama"
    finally:
        sys.path.remove(root)


SLOW = """
import time
from lmforge import hookimpl
from lmforge.plugins.descriptors import DataFormat, Example
time.sleep(1.2)

@hookimpl
def register_data_formats(register):
    register(DataFormat(name="slow_qa", detect=lambda r: False, convert=lambda r: [], required_fields=()))
"""


def test_plugins_shows_load_times_and_warns_about_a_slow_plugin(tmp_path):
    root = make_fake_dist(str(tmp_path), "lmforge-slow", "0.1", {"lmf_slow": SLOW}, {"slow": "lmf_slow"})
    res = _run_cli(["plugins"], {"PYTHONPATH": root})
    assert res.returncode == 0, res.stderr
    assert "loaded in" in res.stdout
    line = [ln for ln in res.stdout.splitlines() if "warning: slow to load" in ln]
    assert len(line) == 1 and "LMFORGE_DISABLE_PLUGINS=lmforge-slow" in line[0]
    assert "warning: plugin lmforge-slow took" in res.stderr
    res = _run_cli(["plugins", "--json"], {"PYTHONPATH": root})
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["lmforge-slow"]["load_seconds"] >= 1.2 > rows["lmforge"]["load_seconds"]
    # disabled, it costs nothing and says so
    res = _run_cli(["plugins", "--json"], {"PYTHONPATH": root, "LMFORGE_DISABLE_PLUGINS": "lmforge-slow"})
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["lmforge-slow"]["status"] == "disabled" and rows["lmforge-slow"]["load_seconds"] == 0


def test_unknown_names_help():
    reg = get_registry()
    with pytest.raises(PluginError, match="did you mean 'lora'"):
        reg.peft_method("loar")
    # a family provided by a plugin that is not installed names its distribution
    if "bloom" not in reg.names("model_families"):
        with pytest.raises(PluginError, match="llm-plugins-bloom"):
            reg.family("bloom")


def _run_cli(args, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_cli_plugins_json_shows_broken_plugin_and_the_rest(tmp_path):
    root = make_fake_dist(str(tmp_path), "lmforge-broken", "9.9", {"lmf_broken3": BROKEN}, {"broken": "lmf_broken3"})
    make_fake_dist(str(tmp_path), "lmforge-qa", "0.2", {"lmf_good": GOOD}, {"qa": "lmf_good"})
    res = _run_cli(["plugins", "--json"], {"PYTHONPATH": root})
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    for r in rows.values():
        assert set(r) >= {"name", "version", "status", "error", "hooks", "registered"}
    assert rows["lmforge-broken"]["status"] == "broken" and "boom" in rows["lmforge-broken"]["error"]
    assert rows["lmforge-qa"] == {**rows["lmforge-qa"], "status": "ok", "error": None, "version": "0.2",
                                  "hooks": ["register_data_formats"],
                                  "registered": {"data_formats": ["qa_pairs"]}}
    assert rows["llm-plugins-llama"]["status"] == "ok"
    # the table form too
    res = _run_cli(["plugins"], {"PYTHONPATH": root})
    assert "lmforge-broken" in res.stdout and "broken" in res.stdout and "qa_pairs" in res.stdout


def test_cli_models_json_lists_families_presets_and_capabilities():
    res = _run_cli(["models", "--json"])
    assert res.returncode == 0, res.stderr
    fams = {f["name"]: f for f in json.loads(res.stdout)}
    llama = fams["llama"]
    assert llama["plugin"] == "llm-plugins-llama"
    assert llama["model_types"] == ["llama"]
    names = {p["name"] for p in llama["presets"]}
    assert {"tiny-llama", "llama-7b", "llama-13b", "llama-33b", "llama-65b", "llama-2-7b", "llama-2-13b",
            "llama-2-70b", "llama-3-8b", "llama-3-70b"} <= names
    assert llama["capabilities"]["lora"]["status"] == "supported"


PROBE = """
import sys, runpy
sys.argv = ["lmforge"] + {args!r}
try:
    from lmforge.cli.main import main
    main()
except SystemExit:
    pass
bad = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print("HEAVY:" + ",".join(bad))
"""


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"], ["models"], ["models", "--json"]])
def test_fast_commands_do_not_import_torch(args):
    res = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "HEAVY:", res.stdout[-500:]


def test_registration_modules_do_not_import_torch():
    code = ("import sys\nfrom lmforge.plugins.registry import get_registry\nget_registry()\n"
            "print(sorted(m for m in ('torch','transformers','peft','bitsandbytes','deepspeed') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr
