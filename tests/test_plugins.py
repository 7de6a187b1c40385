"""Plugin host: discovery, hooks through pluggy and their validation, capability keys, broken plugins, strict
mode, allow/deny lists, duplicate names, CLI listing."""

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
    extra = dict(env_extra or {})
    if "PYTHONPATH" in extra and env.get("PYTHONPATH"):  # keep a checkout's own path (a worktree) in front
        extra["PYTHONPATH"] = extra["PYTHONPATH"] + os.pathsep + env["PYTHONPATH"]
    env.update(extra)
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


# ---------------------------------------------------------------- hooks through pluggy, validated


def _load_fake(tmp_path, dist, modules, eps, installed=True):
    """A Registry loaded from the installed entry points plus one fake distribution's."""
    root = make_fake_dist(str(tmp_path / dist), dist, "0.1", modules, eps)
    sys.path.insert(0, root)
    try:
        reg = Registry()
        reg.load_entry_points((installed_eps() if installed else []) + dist_entry_points(root, dist))
    finally:
        sys.path.remove(root)
    return reg


def _row(reg, dist):
    return {d["name"]: d for d in reg.plugins_json()}[dist]


MISSPELT = """
from lmforge import hookimpl
from lmforge.plugins.descriptors import DataFormat

@hookimpl
def register_data_formats(register):
    register(DataFormat(name="misspelt_fmt", detect=lambda r: False, convert=lambda r: []))

@hookimpl
def register_model_familes(register):
    pass
"""


def test_misspelt_hookimpl_marks_its_plugin_broken_with_did_you_mean(tmp_path, monkeypatch):
    reg = _load_fake(tmp_path, "lmforge-typo", {"lmf_typo": MISSPELT}, {"typo": "lmf_typo"})
    row = _row(reg, "lmforge-typo")
    assert row["status"] == "broken"
    assert "@hookimpl register_model_familes is not an lmforge hook (did you mean 'register_model_families'?)" \
        in row["error"]
    assert row["registered"] == {}  # nothing of it registers, its valid hook included
    with pytest.raises(PluginError, match="unknown data format 'misspelt_fmt'"):
        reg.data_format("misspelt_fmt")
    reg.pm.check_pending()  # the offender was unregistered: pluggy's own check passes
    assert all(d["status"] == "ok" for d in reg.plugins_json() if d["name"] != "lmforge-typo")
    # strict mode re-raises with the same reason
    monkeypatch.setenv("LMFORGE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="did you mean 'register_model_families'"):
        _load_fake(tmp_path / "strict", "lmforge-typo", {"lmf_typo_strict": MISSPELT}, {"typo": "lmf_typo_strict"},
                   installed=False)


OPTIONAL_HOOK = """
from lmforge import hookimpl

@hookimpl(optionalhook=True)
def register_something_from_a_newer_lmforge(register):
    pass
"""


def test_an_optionalhook_for_a_hook_lmforge_lacks_is_allowed(tmp_path):
    reg = _load_fake(tmp_path, "lmforge-future", {"lmf_future": OPTIONAL_HOOK}, {"future": "lmf_future"},
                     installed=False)
    assert _row(reg, "lmforge-future")["status"] == "ok"


EXTRA_ARG = """
from lmforge import hookimpl

@hookimpl
def register_data_formats(registr):
    pass
"""

NO_ARG = """
from lmforge import hookimpl

@hookimpl
def register_commands():
    pass
"""

UNDECORATED = """
from lmforge.plugins.descriptors import DataFormat

def register_data_formats(register):
    register(DataFormat(name="undecorated_fmt", detect=lambda r: False, convert=lambda r: []))
"""


@pytest.mark.parametrize("src,reason", [
    (EXTRA_ARG, "@hookimpl register_data_formats(registr) takes 'registr' (did you mean 'register'?): "
                "the hookspec is register_data_formats(register)"),
    (NO_ARG, "@hookimpl register_commands() lacks 'cli': the hookspec is register_commands(cli)"),
    (UNDECORATED, "register_data_formats is named after an lmforge hook but not decorated with @lmforge.hookimpl, "
                  "so it is never called"),
])
def test_a_mis_signed_or_undecorated_hook_marks_its_plugin_broken(tmp_path, src, reason):
    mod = f"lmf_sig_{abs(hash(src))}"
    reg = _load_fake(tmp_path, "lmforge-sig", {mod: src}, {"sig": mod}, installed=False)
    row = _row(reg, "lmforge-sig")
    assert row["status"] == "broken" and row["error"] == f"{mod}: hook validation failed: {reason}", row["error"]
    assert reg.pm.get_plugin("lmforge-sig:sig") is None


BAD_CAPS = """
from lmforge import hookimpl
from lmforge.plugins.descriptors import DataFormat, ModelFamily, PeftMethod, supported

@hookimpl
def register_data_formats(register):
    register(DataFormat(name="caps_fmt", detect=lambda r: False, convert=lambda r: []))

@hookimpl
def register_model_families(register):
    register(ModelFamily(name="capsfam", loader="x:y", arch_from_config=lambda c: None,
                         capabilities={{{caps}}}))

@hookimpl
def register_peft_methods(register):
    register(PeftMethod(name="vera", apply="x:y"{peft}))
"""


@pytest.mark.parametrize("caps,peft,reason", [
    ('"packign": supported()', ', capability="lora"',
     "family 'capsfam' capabilities: 'packign' is not a capability key (did you mean 'packing'?)"),
    ('"lora": "supported"', ', capability="lora"',
     "family 'capsfam' capabilities['lora']: expected a Capability"),
    ('"lora": supported()', "",
     "peft method 'vera' capability (set PeftMethod(capability=...) to the built-in method whose family "
     "requirements it shares): 'vera' is not a capability key"),
    ('"lora": supported()', ', capability="lroa"', "'lroa' is not a capability key (did you mean 'lora'?)"),
])
def test_an_unknown_capability_key_marks_the_plugin_broken(tmp_path, caps, peft, reason):
    mod = f"lmf_caps_{abs(hash(caps + peft))}"
    reg = _load_fake(tmp_path, "lmforge-caps", {mod: BAD_CAPS.format(caps=caps, peft=peft)}, {"caps": mod})
    row = _row(reg, "lmforge-caps")
    assert row["status"] == "broken" and row["error"].startswith(f"{mod}: registration failed: ") \
        and reason in row["error"], row["error"]
    if "is not a capability key" in reason:
        assert "the keys are full, freeze, lora" in row["error"]
    # rolled back whole: what it registered before the bad descriptor is gone too
    assert row["registered"] == {} and "caps_fmt" not in reg.names("data_formats")
    assert reg.family("llama").name == "llama"


def test_capability_keys_are_a_closed_set_with_an_untested_default():
    from lmforge.plugins.capabilities import KEYS, CapabilityKey
    from lmforge.plugins.descriptors import ModelFamily, experimental, supported

    fam = ModelFamily(name="f", loader="x:y", arch_from_config=lambda c: None, capabilities={"lora": supported()})
    assert fam.capability("lora").status == "supported"
    assert fam.capability(CapabilityKey.LORA) == fam.capability("lora")
    assert fam.capability("packing") == experimental("untested: the 'f' family does not declare 'packing'")
    assert list(fam.capability_map()) == list(KEYS)
    with pytest.raises(PluginError, match="'packign' is not a capability key \\(did you mean 'packing'\\?\\)"):
        fam.capability("packign")
    assert all(k.meaning for k in CapabilityKey)
    # every built-in method's key is in the set, and every shipped family declares every key
    reg = get_registry()
    assert {m.capability_key for m in reg.all("peft_methods")} <= set(KEYS)
    for family in reg.families():
        assert set(family.capabilities) == set(KEYS), (family.name, set(KEYS) - set(family.capabilities))


def test_hooks_are_called_through_pluggy_one_plugin_at_a_time():
    from lmforge import hookimpl
    from lmforge.plugins.descriptors import DataFormat

    class AppPlugin:
        @hookimpl
        def register_data_formats(self, register):
            register(DataFormat(name="app_fmt", detect=lambda r: False, convert=lambda r: []))

    class Raises:
        @hookimpl
        def register_data_formats(self, register):
            register(DataFormat(name="half_fmt", detect=lambda r: False, convert=lambda r: []))
            raise RuntimeError("halfway")

    reg = Registry()
    calls = []
    reg.pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append((name, {i.plugin_name for i in impls})),
                                   lambda outcome, name, impls, kwargs: None)
    reg.pm.register(AppPlugin(), name="my-app")
    reg.pm.register(Raises(), name="half-app")
    reg.load_entry_points(installed_eps())
    # the plugin registered directly with the PluginManager is seen, as its own distribution
    assert reg.data_format("app_fmt").name == "app_fmt"
    assert reg.plugin_of("data_formats", "app_fmt").distribution == "my-app"
    assert _row(reg, "my-app")["version"] == "in-process"
    # one that raises is rolled back alone
    half = _row(reg, "half-app")
    assert half["status"] == "broken" and "RuntimeError: halfway" in half["error"]
    assert "half_fmt" not in reg.names("data_formats") and reg.peft_method("lora").name == "lora"
    # every registration hook went through pluggy, each call reaching one plugin only
    assert {name for name, _ in calls} == {"register_model_families", "register_peft_methods",
                                          "register_data_formats", "register_memory_estimators",
                                          "register_launchers"}
    assert all(len(plugins) == 1 for _, plugins in calls)
    assert ("register_model_families", {"llm-plugins-llama:llama"}) in calls
    # register_commands too
    import click

    calls.clear()
    group = click.Group()
    reg.add_commands(group)
    assert calls and {name for name, _ in calls} == {"register_commands"}
    assert "merge" in group.commands


def test_allowlist_and_disable_list(tmp_path, monkeypatch):
    root = make_fake_dist(str(tmp_path), "lmforge-qa", "0.2", {"lmf_qa_allow": GOOD}, {"qa": "lmf_qa_allow"})
    sys.path.insert(0, root)

    def load():
        reg = Registry()
        reg.load_entry_points(installed_eps() + dist_entry_points(root, "lmforge-qa"))
        return {d["name"]: d for d in reg.plugins_json()}, reg

    try:
        # names compare normalized; lmforge's built-ins always load
        monkeypatch.setenv("LMFORGE_PLUGINS", "LMForge_QA, llm.plugins.bloom")
        rows, reg = load()
        assert rows["lmforge-qa"]["status"] == "ok" and rows["llm-plugins-bloom"]["status"] == "ok"
        assert rows["llm-plugins-llama"] == {**rows["llm-plugins-llama"], "status": "disabled",
                                             "error": "llm_plugins_llama.plugin: not in LMFORGE_PLUGINS",
                                             "registered": {}}
        assert rows["lmforge"]["status"] == "ok" and reg.peft_method("lora")
        with pytest.raises(PluginError, match="llm-plugins-llama"):
            reg.family("llama")
        # the disable list wins over the allowlist, by distribution or by dist:entry_point
        monkeypatch.setenv("LMFORGE_DISABLE_PLUGINS", "lmforge-qa:qa")
        rows, reg = load()
        assert rows["lmforge-qa"]["status"] == "disabled"
        assert rows["lmforge-qa"]["error"] == "lmf_qa_allow: disabled by LMFORGE_DISABLE_PLUGINS"
        monkeypatch.delenv("LMFORGE_DISABLE_PLUGINS")
        monkeypatch.setenv("LMFORGE_PLUGINS", "lmforge")  # the built-ins only
        rows, reg = load()
        assert {n for n, r in rows.items() if r["status"] == "ok"} == {"lmforge"}
        monkeypatch.setenv("LMFORGE_PLUGINS", "")  # empty: no allowlist
        rows, reg = load()
        assert all(r["status"] == "ok" for r in rows.values())
        monkeypatch.delenv("LMFORGE_PLUGINS")
        monkeypatch.setenv("LMFORGE_DISABLE_PLUGINS", "lmforge,llm-plugins-cpm")
        rows, reg = load()
        assert rows["lmforge"]["status"] == rows["llm-plugins-cpm"]["status"] == "disabled"
        assert rows["lmforge-qa"]["status"] == "ok" and "lora" not in reg.names("peft_methods")
    finally:
        sys.path.remove(root)


def test_cli_plugins_shows_a_misspelt_hook_and_honours_the_allowlist(tmp_path):
    root = make_fake_dist(str(tmp_path), "lmforge-typo", "0.1", {"lmf_typo_cli": MISSPELT}, {"typo": "lmf_typo_cli"})
    res = _run_cli(["plugins"], {"PYTHONPATH": root, "LMFORGE_PLUGINS": "lmforge-typo"})
    assert res.returncode == 0, res.stderr
    assert "lmforge-typo 0.1  [broken]" in res.stdout
    assert "did you mean 'register_model_families'" in res.stdout
    assert "llm-plugins-llama 0.1.0  [disabled]" in res.stdout


def test_docs_list_every_capability_key_with_its_meaning():
    from lmforge.plugins.capabilities import CapabilityKey

    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "hooks.md"),
                encoding="utf-8").read()
    for key in CapabilityKey:
        assert f"| `{key}` | {key.meaning} | {'yes' if key.enforced else 'no'}" in text, key
    for var in ("LMFORGE_PLUGINS", "LMFORGE_DISABLE_PLUGINS", "LMFORGE_STRICT_PLUGINS", "LMFORGE_SLOW_PLUGIN_SECONDS"):
        assert f"| `{var}=" in text, var


def test_every_mistake_of_a_plugin_is_named_at_once(tmp_path):
    src = MISSPELT.replace("def register_data_formats(register):", "def register_data_formats(register, extra):")
    reg = _load_fake(tmp_path, "lmforge-two", {"lmf_two": src}, {"two": "lmf_two"}, installed=False)
    error = _row(reg, "lmforge-two")["error"]
    assert "register_model_familes is not an lmforge hook (did you mean 'register_model_families'?)" in error
    assert "@hookimpl register_data_formats(register, extra) takes 'extra'" in error
