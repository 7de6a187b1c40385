"""The plugin host: entry-point discovery, hook validation, registration and the registry.

Plugins are found through the ``lmforge`` entry-point group (built-ins too) and
loaded one at a time: each is imported, registered with the pluggy
``PluginManager`` (``Registry.pm``), validated, and its registration hooks are called
through pluggy, one plugin at a time (``pm.subset_hook_caller`` with every other
plugin left out), so that each descriptor is attributed to the distribution that
registered it and an exception rolls back that plugin alone. Validation, per
plugin: pluggy's own check of each ``@hookimpl``'s arguments against its hookspec
(``pm.register``), ``pm.check_pending()`` semantics (an ``@hookimpl`` whose name is no
hookspec, unless ``optionalhook=True``), a hookimpl lacking its spec's argument,
and a function named after a hook but not decorated; the reason names the function
and the closest hook or argument name. Capability keys are checked against the
closed set of :mod:`lmforge.plugins.capabilities` as descriptors are registered.

A plugin that fails to import, to validate or to register is recorded as broken
(distribution, version, error) and skipped; with ``LMFORGE_STRICT_PLUGINS=1`` the
error is re-raised instead. A plugin object registered directly with ``pm`` (an
embedding application, a test) before :meth:`Registry.load_entry_points` is
validated and called the same way, as its own distribution.

A name (family, alias, preset, PEFT method, data format, estimator, launcher)
registered by two plugins is *contested*: it is refused for both, whatever
order they load in, with an error naming both distributions, while everything
else each of them registered keeps working. ``LMFORGE_DISABLE_PLUGINS=dist1,dist2``
skips distributions (or ``dist:entry_point``); ``LMFORGE_PLUGINS=dist1,dist2`` is
an allowlist (lmforge's own built-ins are always loaded unless disabled); names
compare as normalized distribution names (case, ``-``, ``_`` and ``.`` alike).
Each plugin's load time is recorded; ``lmforge plugins`` shows it and warns
about slow ones (over ``LMFORGE_SLOW_PLUGIN_SECONDS``, default 0.5).
"""

from __future__ import annotations

import inspect
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from lmforge.errors import LmforgeError, PluginConflictError, PluginError, did_you_mean
from lmforge.plugins import hookspecs
from lmforge.plugins.capabilities import check_capability_map, check_key
from lmforge.plugins.descriptors import KINDS, DataFormat, Launcher, MemoryEstimator, ModelFamily, PeftMethod

ENTRY_POINT_GROUP = "lmforge"
REGISTRATION_HOOKS = {
    "model_families": "register_model_families",
    "peft_methods": "register_peft_methods",
    "data_formats": "register_data_formats",
    "memory_estimators": "register_memory_estimators",
    "launchers": "register_launchers",
}
# every hookspec (pluggy marks each with ``lmforge_spec``)
HOOK_NAMES = tuple(sorted(n for n, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "lmforge_spec")))

# Where a name is provided when its plugin is not installed, for "pip install ..." hints.
KIND_NAMES = {
    "model_families": "model family",
    "peft_methods": "peft method",
    "data_formats": "data format",
    "memory_estimators": "memory estimator",
    "launchers": "launcher",
}

KNOWN_PROVIDERS = {
    "model_families": {
        "llama": "llm-plugins-llama",
        "glm": "llm-plugins-glm",
        "chatglm": "llm-plugins-glm",
        "chatglm2": "llm-plugins-glm",
        "chatglm3": "llm-plugins-glm",
        "glm4": "llm-plugins-glm",
        "bloom": "llm-plugins-bloom",
        "cpmant": "llm-plugins-cpm",
        "minicpm": "llm-plugins-cpm",
        "minicpm3": "llm-plugins-cpm",
    },
}


def strict_mode() -> bool:
    return os.environ.get("LMFORGE_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes")


def _norm(name: str) -> str:
    """A distribution name as the allow/deny lists compare it (PEP 503: case, runs of -_. alike)."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    return {_norm(n) for n in raw.split(",") if n.strip()}


def slow_plugin_seconds() -> float:
    try:
        return float(os.environ.get("LMFORGE_SLOW_PLUGIN_SECONDS", "0.5"))
    except ValueError:
        return 0.5


def plugin_enabled(dist: str, entry_point: str) -> tuple[bool, str | None]:
    """Whether ``LMFORGE_DISABLE_PLUGINS`` / ``LMFORGE_PLUGINS`` let this entry point load, and why not."""
    disabled = _env_names("LMFORGE_DISABLE_PLUGINS") or set()
    keys = {_norm(dist), _norm(f"{dist}:{entry_point}")}
    if keys & disabled:
        return False, "disabled by LMFORGE_DISABLE_PLUGINS"
    allowed = _env_names("LMFORGE_PLUGINS")
    if allowed is not None and _norm(dist) != "lmforge" and not keys & allowed:
        return False, "not in LMFORGE_PLUGINS"
    return True, None


@dataclass
class PluginRecord:
    """What the host knows about one loaded (or failed) plugin module."""

    entry_point: str
    module: str
    distribution: str
    version: str
    status: str = "ok"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    load_seconds: float = 0.0
    plugin_name: str = ""  # its name in the PluginManager; "DIST:ENTRY_POINT" unless registered directly

    def __post_init__(self) -> None:
        if not self.plugin_name:
            self.plugin_name = f"{self.distribution}:{self.entry_point}"

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version} ({self.module})"


@dataclass
class Entry:
    descriptor: Any
    plugin: PluginRecord


@dataclass
class Claim:
    """One plugin's claim on a name: a descriptor's name, one of its aliases, or a preset name."""

    descriptor: Any
    plugin: PluginRecord
    alias_of: str | None = None  # the family name, for an alias
    family: Any = None  # for a preset: its family


PRESETS = "presets"


class Registry:
    """Every registered descriptor, by kind and name, plus the plugin records."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("lmforge")
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.aliases: dict[str, str] = {}
        # every claim on every name; entries/aliases/presets are what is left after contested names are taken out
        self.claims: dict[str, dict[str, list[Claim]]] = {kind: {} for kind in (*KINDS, PRESETS)}
        self.contested: dict[str, dict[str, list[Claim]]] = {kind: {} for kind in (*KINDS, PRESETS)}
        self.presets: dict[str, tuple[ModelFamily, Any]] = {}

    # ---------------------------------------------------------------- loading
    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Load every ``lmforge`` entry point, then any plugin registered directly with :attr:`pm`."""
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        seen: set[tuple[str, str, str]] = set()
        named = [(_dist_name(ep), ep) for ep in entry_points]  # reading a dist's metadata parses its METADATA file
        for dist, ep in sorted(named, key=lambda de: (de[0] != "lmforge", de[1].name)):
            key = (dist, ep.name, ep.value)
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            self._load_one(ep, dist)
        self.adopt_registered()

    def _load_one(self, ep: metadata.EntryPoint, dist: str | None = None) -> None:
        dist = dist or _dist_name(ep)
        version = _dist_version(ep)
        record = PluginRecord(entry_point=ep.name, module=ep.value, distribution=dist, version=version)
        self.records.append(record)
        enabled, why = plugin_enabled(dist, ep.name)
        if not enabled:
            record.status, record.error = "disabled", why
            return
        t0 = time.perf_counter()
        try:
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's, not ours
                self._fail(record, exc, "import failed")
                return
            self.add_plugin(obj, record)
        finally:
            record.load_seconds = time.perf_counter() - t0

    def add_plugin(self, obj: Any, record: PluginRecord) -> None:
        """Register an already-imported plugin object under ``record``, validate it and run its hooks."""
        if record not in self.records:
            self.records.append(record)
        try:
            self.pm.register(obj, name=record.plugin_name)
        except pluggy.PluginValidationError as exc:  # an argument the hookspec does not have
            impls = self._impls(obj)
            problems = self._pending_problems(impls) + self._signature_problems(impls)
            self._fail(record, exc, "hook validation failed", "; ".join(problems) or " ".join(str(exc).split()))
            return
        except ValueError as exc:  # already registered (under this or another name)
            self._fail(record, exc, "hook validation failed")
            return
        self._admit(obj, record)

    def adopt_registered(self) -> None:
        """Validate and run the hooks of plugins registered with :attr:`pm` directly, each as its own distribution."""
        known = {r.plugin_name for r in self.records}
        for name, obj in self.pm.list_name_plugin():
            if obj is None or name in known:  # None: a name blocked with pm.set_blocked
                continue
            module = getattr(obj, "__name__", None) or f"{type(obj).__module__}.{type(obj).__qualname__}"
            record = PluginRecord(entry_point=name, module=module, distribution=name, version="in-process",
                                  plugin_name=name)
            self.records.append(record)
            t0 = time.perf_counter()
            try:
                self._admit(obj, record)
            finally:
                record.load_seconds = time.perf_counter() - t0

    def _admit(self, obj: Any, record: PluginRecord) -> None:
        """Validate a plugin registered with :attr:`pm` and call its registration hooks; on failure unregister it."""
        own = [(hc.name, impl.function, impl.optionalhook) for hc in self.pm.get_hookcallers(obj) or ()
               for impl in hc.get_hookimpls() if impl.plugin is obj]
        problems = self._pending_problems(own) + self._signature_problems(own) + self._undecorated(obj)
        if problems:
            self.pm.unregister(obj)
            self._fail(record, None, "hook validation failed", "; ".join(problems))
            return
        record.hooks = sorted(hc.name for hc in self.pm.get_hookcallers(obj) or () if hc.has_spec())
        try:
            for kind, hook_name in REGISTRATION_HOOKS.items():
                self._call_hook(obj, hook_name, register=self._make_register(kind, record))
        except Exception as exc:  # noqa: BLE001
            self._drop_claims(record)
            record.registered = {}
            self.pm.unregister(obj)
            if isinstance(exc, PluginConflictError):  # strict mode only
                record.status, record.error = "broken", str(exc)
                raise
            self._fail(record, exc, "registration failed")

    def _call_hook(self, obj: Any, hook_name: str, **kwargs: Any) -> None:
        """Call ``pm.hook.<hook_name>`` on ``obj``'s implementation alone (``pm.subset_hook_caller``), if it has one."""
        others = [p for p in self.pm.get_plugins() if p is not obj]
        caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        if any(impl.plugin is obj for impl in caller.get_hookimpls()):
            caller(**kwargs)

    # ---------------------------------------------------------------- validation
    def _impls(self, obj: Any) -> list[tuple[str, Any, bool]]:
        """``(hook name, function, optionalhook)`` of each ``@hookimpl`` of an unregistered ``obj``, as pluggy
        parses them (a registered plugin's come from its hook callers)."""
        out = []
        for attr in dir(obj):
            opts = self.pm.parse_hookimpl_opts(obj, attr)
            if opts is not None:
                out.append((opts.get("specname") or attr, getattr(obj, attr), bool(opts.get("optionalhook"))))
        return out

    def _pending_problems(self, impls: list[tuple[str, Any, bool]]) -> list[str]:
        """``pm.check_pending()``'s rule for one plugin: a hookimpl whose hook has no spec, unless optional.

        (``pm.check_pending()`` itself raises at the first offender of any plugin; asked per
        plugin, the reason goes to the plugin at fault and names every misspelt function.)
        """
        problems = []
        for hook_name, fn, optional in impls:
            hc = getattr(self.pm.hook, hook_name, None)
            if optional or (hc is not None and hc.has_spec()):
                continue
            problems.append(f"@hookimpl {fn.__name__} is not an lmforge hook{did_you_mean(hook_name, HOOK_NAMES)}; "
                            f"the hooks are {', '.join(HOOK_NAMES)}")
        return problems

    def _signature_problems(self, impls: list[tuple[str, Any, bool]]) -> list[str]:
        """Each hookimpl whose arguments are not its hookspec's (pluggy refuses extra ones; a missing one,
        which pluggy allows, leaves these hooks nothing to register with)."""
        problems = []
        for hook_name, fn, _ in impls:
            hc = getattr(self.pm.hook, hook_name, None)
            spec = hc.spec if hc is not None else None
            if spec is None:
                continue
            try:
                params = inspect.signature(fn).parameters.values()
            except (TypeError, ValueError):
                continue
            required = [p.name for p in params if p.default is p.empty
                        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            names = [p.name for p in params]
            extra = [n for n in required if n not in spec.argnames]
            missing = [n for n in spec.argnames if n not in names]
            if not extra and not missing:
                continue
            what = []
            if extra:
                what.append("takes " + ", ".join(f"{n!r}{did_you_mean(n, spec.argnames)}" for n in extra))
            if missing and not extra:  # with an extra one, its did-you-mean already names the missing one
                what.append("lacks " + ", ".join(repr(n) for n in missing))
            problems.append(f"@hookimpl {fn.__name__}({', '.join(names)}) {' and '.join(what)}: the hookspec is "
                            f"{hook_name}({', '.join(spec.argnames)})")
        return problems

    def _undecorated(self, obj: Any) -> list[str]:
        """Functions named after a hook but not marked ``@hookimpl``: pluggy would never call them."""
        return [f"{name} is named after an lmforge hook but not decorated with @lmforge.hookimpl, so it is never "
                f"called" for name in HOOK_NAMES
                if callable(getattr(obj, name, None)) and self.pm.parse_hookimpl_opts(obj, name) is None]

    def _check_descriptor(self, kind: str, descriptor: Any) -> None:
        """Checks made as a descriptor registers: capability keys are the closed set's."""
        if kind == "model_families":
            check_capability_map(descriptor.capabilities, f"family {descriptor.name!r}")
        elif kind == "peft_methods":
            check_key(descriptor.capability_key,
                      f"peft method {descriptor.name!r} capability (set PeftMethod(capability=...) to the "
                      f"built-in method whose family requirements it shares)")

    def _make_register(self, kind: str, record: PluginRecord):
        expected = KINDS[kind]

        def register(descriptor: Any) -> None:
            if not isinstance(descriptor, expected):
                raise TypeError(
                    f"{REGISTRATION_HOOKS[kind]} must register {expected.__name__} objects, "
                    f"got {type(descriptor).__name__}"
                )
            self._check_descriptor(kind, descriptor)
            claims = [(kind, descriptor.name, Claim(descriptor, record))]
            claims += [(kind, alias, Claim(descriptor, record, alias_of=descriptor.name))
                       for alias in (getattr(descriptor, "aliases", ()) or ())]
            if kind == "model_families":
                claims += [(PRESETS, p.name, Claim(p, record, family=descriptor)) for p in descriptor.presets]
            if strict_mode():
                for k, name, claim in claims:
                    others = [c for c in self.claims[k].get(name, [])] + [
                        c for k2, n2, c in claims if k2 == k and n2 == name and c is not claim]
                    if others:
                        raise PluginConflictError(self.conflict_message(k, name, [*others, claim]))
            for k, name, claim in claims:
                self.claims[k].setdefault(name, []).append(claim)
            record.registered.setdefault(kind, []).append(descriptor.name)
            self._rebuild()

        return register

    # ---------------------------------------------------------------- name ownership
    def conflict_message(self, kind: str, name: str, claims: list[Claim]) -> str:
        what = "preset" if kind == PRESETS else KIND_NAMES[kind]
        labels = []
        for c in claims:
            where = f" (family {c.family.name!r})" if c.family is not None else (
                f" (alias of {c.alias_of!r})" if c.alias_of else "")
            if c.plugin.label + where not in labels:
                labels.append(c.plugin.label + where)
        labels.sort()  # the same message whatever order the plugins loaded in
        dists = sorted({c.plugin.distribution for c in claims})
        fix = (f"set LMFORGE_DISABLE_PLUGINS={' or '.join(dists)} (or uninstall one)" if len(dists) > 1
               else f"the distribution {dists[0]} registers it more than once; fix the plugin")
        return (f"{what} name {name!r} is registered twice: by {' and by '.join(labels)}; "
                f"it is refused for both until one is disabled: {fix}")

    def _rebuild(self) -> None:
        """Recompute what each name resolves to: a name with more than one claim is contested, for all."""
        for kind in (*KINDS, PRESETS):
            self.contested[kind] = {n: cl for n, cl in self.claims[kind].items() if len(cl) > 1}
        for kind in KINDS:
            self.entries[kind] = {n: Entry(cl[0].descriptor, cl[0].plugin) for n, cl in self.claims[kind].items()
                                  if len(cl) == 1 and cl[0].alias_of is None}
        self.aliases = {n: cl[0].alias_of for n, cl in self.claims["model_families"].items()
                        if len(cl) == 1 and cl[0].alias_of is not None
                        and cl[0].alias_of in self.entries["model_families"]}
        self.presets = {n: (cl[0].family, cl[0].descriptor) for n, cl in self.claims[PRESETS].items()
                        if len(cl) == 1}
        for record in self.records:
            record.conflicts = []
        for kind, names in self.contested.items():
            for name, cl in sorted(names.items()):
                msg = self.conflict_message(kind, name, cl)
                for rec in {id(c.plugin): c.plugin for c in cl}.values():
                    rec.conflicts.append(msg)

    def _drop_claims(self, record: PluginRecord) -> None:
        for kind in self.claims:
            for name in list(self.claims[kind]):
                kept = [c for c in self.claims[kind][name] if c.plugin is not record]
                if kept:
                    self.claims[kind][name] = kept
                else:
                    del self.claims[kind][name]
        self._rebuild()

    def _owner(self, kind: str, name: str) -> Entry | None:
        if name in self.entries[kind]:
            return self.entries[kind][name]
        if kind == "model_families" and name in self.aliases:
            return self.entries[kind][self.aliases[name]]
        return None

    def _fail(self, record: PluginRecord, exc: BaseException | None, what: str, reason: str | None = None) -> None:
        """Mark ``record`` broken with ``what: reason`` (default: the exception); strict mode raises."""
        if reason is None:  # an LmforgeError's message is the whole story; other exceptions say their type
            reason = str(exc) if isinstance(exc, LmforgeError) else f"{type(exc).__name__}: {exc}"
        record.status = "broken"
        record.error = f"{what}: {reason}"
        if exc is not None:
            record.traceback = "".join(traceback.format_exception(exc))  # type: ignore[attr-defined]
        if strict_mode():
            raise PluginError(f"plugin {record.label}: {record.error}") from exc

    # ---------------------------------------------------------------- lookup
    def get(self, kind: str, name: str) -> Any:
        """Return the descriptor of ``kind`` called ``name``; raise a helpful PluginError if unknown."""
        key = self.aliases.get(name, name) if kind == "model_families" else name
        entry = self.entries[kind].get(key)
        if entry is not None:
            return entry.descriptor
        claimed = self.claims[kind].get(name) or []
        for k in (name, key, *(c.alias_of for c in claimed if c.alias_of)):
            if k in self.contested[kind]:
                raise PluginConflictError(self.conflict_message(kind, k, self.contested[kind][k]))
        raise PluginError(self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        what = KIND_NAMES[kind]
        known = sorted(self.entries[kind]) + (sorted(self.aliases) if kind == "model_families" else [])
        msg = f"unknown {what} {name!r}"
        provider = KNOWN_PROVIDERS.get(kind, {}).get(str(name).lower())
        if provider:
            msg += f": it is provided by the distribution {provider!r}, which is not installed (pip install {provider}, or the llm_plugins_* folder of this repository)"
        else:
            msg += did_you_mean(name, known)
        msg += f". Known: {', '.join(known) or 'none'}"
        broken = [r for r in self.records if r.status == "broken"]
        if broken:
            msg += "; broken plugins (see `lmforge plugins`): " + ", ".join(r.label for r in broken)
        return msg

    def plugin_of(self, kind: str, name: str) -> PluginRecord:
        key = self.aliases.get(name, name) if kind == "model_families" else name
        return self.entries[kind][key].plugin

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all(self, kind: str) -> list[Any]:
        return [self.entries[kind][n].descriptor for n in self.names(kind)]

    def families(self) -> list[ModelFamily]:
        return self.all("model_families")

    def peft_method(self, name: str) -> PeftMethod:
        return self.get("peft_methods", name)

    def data_format(self, name: str) -> DataFormat:
        return self.get("data_formats", name)

    def estimator(self, name: str) -> MemoryEstimator:
        return self.get("memory_estimators", name)

    def launcher(self, name: str) -> Launcher:
        return self.get("launchers", name)

    def family(self, name: str) -> ModelFamily:
        return self.get("model_families", name)

    def find_preset(self, name: str) -> tuple[ModelFamily, Any] | None:
        """``(family, preset)`` for a preset name; raises :class:`PluginConflictError` for a contested one."""
        if name in self.contested[PRESETS]:
            raise PluginConflictError(self.conflict_message(PRESETS, name, self.contested[PRESETS][name]))
        found = self.presets.get(name)
        if found is not None and found[0].name in self.contested["model_families"]:
            fam = found[0].name
            raise PluginConflictError(f"preset {name!r} belongs to a contested family: "
                                      + self.conflict_message("model_families", fam,
                                                              self.contested["model_families"][fam]))
        if found is not None and found[0].name in self.entries["model_families"]:
            # the family as the registry holds it now (an embedding application may have replaced it)
            return self.entries["model_families"][found[0].name].descriptor, found[1]
        return found

    def family_for_config(self, config: dict, where: str = "config.json") -> ModelFamily:
        """The highest-priority family that claims a checkpoint's ``config.json``."""
        contested = {id(c.descriptor): (name, cl) for name, cl in self.contested["model_families"].items()
                     for c in cl if c.alias_of is None}
        candidates = self.families() + [c.descriptor for _, cl in contested.values() for c in cl
                                        if id(c.descriptor) in contested and c.alias_of is None]
        for fam in sorted(candidates, key=lambda f: -f.priority):
            if fam.claims(config):
                if id(fam) in contested:  # never fall back to a lower-priority family behind a contest
                    name, cl = contested[id(fam)]
                    raise PluginConflictError(f"{where}: " + self.conflict_message("model_families", name, cl))
                return fam
        mt = config.get("model_type")
        archs = config.get("architectures")
        hint = KNOWN_PROVIDERS["model_families"].get(str(mt).lower()) if mt else None
        msg = f"{where}: no installed model family claims model_type={mt!r} architectures={archs!r}"
        if hint:
            msg += f"; install {hint}"
        raise PluginError(msg)

    def add_commands(self, cli: Any) -> None:
        """Run every plugin's ``register_commands(cli)``; a failure marks that plugin broken."""
        for record in self.records:
            if record.status != "ok" or "register_commands" not in record.hooks:
                continue
            obj = self.pm.get_plugin(record.plugin_name)
            try:
                self._call_hook(obj, "register_commands", cli=cli)
            except Exception as exc:  # noqa: BLE001
                self._fail(record, exc, "register_commands failed")

    def slow_plugins(self, threshold: float | None = None) -> list[tuple[str, float]]:
        """``(distribution, seconds)`` of every distribution whose entry points took over ``threshold`` to load."""
        limit = slow_plugin_seconds() if threshold is None else threshold
        return [(d["name"], d["load_seconds"]) for d in self.plugins_json() if d["load_seconds"] > limit]

    def plugins_json(self) -> list[dict]:
        """One object per plugin distribution, as ``lmforge plugins --json`` prints it."""
        by_dist: dict[str, dict] = {}
        for r in self.records:
            d = by_dist.setdefault(
                r.distribution,
                {"name": r.distribution, "version": r.version, "status": "ok", "error": None,
                 "modules": [], "hooks": [], "registered": {}, "conflicts": [], "load_seconds": 0.0},
            )
            d["modules"].append(r.module)
            d["load_seconds"] = round(d["load_seconds"] + r.load_seconds, 4)
            for c in r.conflicts:
                if c not in d["conflicts"]:
                    d["conflicts"].append(c)
            if r.status != "ok":
                if d["status"] != "broken":
                    d["status"] = r.status
                d["error"] = (d["error"] + "; " if d["error"] else "") + f"{r.module}: {r.error}"
            for h in r.hooks:
                if h not in d["hooks"]:
                    d["hooks"].append(h)
            for kind, names in r.registered.items():
                d["registered"].setdefault(kind, []).extend(names)
        for d in by_dist.values():
            d["hooks"].sort()
            for names in d["registered"].values():
                names.sort()
        return list(by_dist.values())


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown"


def _dist_version(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "?"


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use from the ``lmforge`` entry points."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        reg = Registry()
        reg.load_entry_points()
        _REGISTRY = reg
    return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests; embedding applications)."""
    global _REGISTRY
    _REGISTRY = registry
