"""The core's layers (docs/architecture.md): every import goes to the same layer or one below it,
nothing imports the CLI, and there are no import circles between modules.

Imports inside functions count too: a lazy import still ties the two modules together, it only
moves the cost.
"""

from __future__ import annotations

import ast
import os

import lmforge

CORE = os.path.dirname(lmforge.__file__)

# bottom to top; a module may import its own layer or any layer listed before it
LAYERS = ["errors", "runtime", "plugins", "config", "runs", "modeling", "data", "packing", "inference", "train",
          "api", "testing", "cli"]


def _modules() -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(CORE):
        for fn in files:
            if fn.endswith(".py"):
                path = os.path.join(root, fn)
                rel = os.path.relpath(path, os.path.dirname(CORE))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _imports(path: str, module: str) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from lmforge.data import collate`
    return {m for m in found if m == "lmforge" or m.startswith("lmforge.")}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the root package: hookimpl, __version__
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for mod, path in mods.items():
        graph[mod] = {m for m in _imports(path, mod) if m in mods and m != mod and m != "lmforge"}
    return graph


def test_every_module_has_a_layer():
    unplaced = [m for m in _modules() if m != "lmforge" and _layer(m) is None]
    assert not unplaced, f"modules outside every layer (add them to LAYERS and docs/architecture.md): {unplaced}"


def test_imports_point_down():
    wrong = []
    for mod, deps in _graph().items():
        here = _layer(mod)
        for dep in deps:
            there = _layer(dep)
            if here is not None and there is not None and there > here:
                wrong.append(f"{mod} ({LAYERS[here]}) imports {dep} ({LAYERS[there]})")
    assert not wrong, "imports that run up the layers:\n" + "\n".join(sorted(wrong))


def test_nothing_imports_the_cli():
    users = sorted(m for m, deps in _graph().items() if not m.startswith("lmforge.cli")
                   and any(d.startswith("lmforge.cli") for d in deps))
    assert not users, f"the CLI is the top floor, but these import it: {users}"


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            # a package importing its own submodules is how packages re-export; not a circle
            if dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_every_subpackage_ships_in_the_wheel():
    import tomllib

    root = os.path.dirname(os.path.dirname(CORE))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        setup = tomllib.load(f)["tool"]["setuptools"]
    listed = set(setup["packages"])
    missing = []
    for name, where in setup["package-dir"].items():
        base = os.path.join(root, where)
        for folder, _dirs, files in os.walk(base):
            if "__init__.py" in files:
                rel = os.path.relpath(folder, base)
                pkg = name if rel == "." else name + "." + rel.replace(os.sep, ".")
                if pkg not in listed:
                    missing.append(pkg)
    assert not missing, f"packages pyproject.toml does not list (a wheel would leave them out): {missing}"
