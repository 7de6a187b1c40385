"""Docs that must track the code."""

from __future__ import annotations

import inspect
import os

from lmforge.plugins import hookspecs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_hookspec_is_documented_with_its_signature():
    text = open(os.path.join(ROOT, "docs", "hooks.md"), encoding="utf-8").read()
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(fn, "lmforge_spec")]
    assert len(specs) >= 6
    for name in specs:
        sig = f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})"
        assert f"## {name}" in text, f"docs/hooks.md has no section for {name}"
        assert sig in text, f"docs/hooks.md does not show the signature {sig}"
        assert getattr(hookspecs, name).__doc__.strip(), f"{name} has no docstring"


def test_readme_starts_with_the_two_setup_commands():
    head = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()[:15]
    assert any("make quickstart" in line for line in head)
    assert any("make test" in line for line in head)
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert "make test" in ci
