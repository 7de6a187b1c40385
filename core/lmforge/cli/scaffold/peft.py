"""``lmforge plugin new NAME --kind peft``: a PEFT method that trains the parameters whose names match.

A complete method to start from: options with a schema, ``apply`` that freezes
the rest, and the full checkpoint as what it saves.
"""

TESTS = "runs lmforge.testing.check_peft_method on tiny-llama (needs llm-plugins-llama)"
TEST_DEPS = ', "llm-plugins-llama"'

FILES = {
    "$pkg/plugin.py": '''"""Registers the $name PEFT method (pure Python: no torch at import)."""

from lmforge import hookimpl
from lmforge.plugins.descriptors import Option, PeftMethod

OPTIONS = (
    Option("patterns", list, ["norm", "lm_head"], "train the parameters whose names contain one of these"),
)


def apply(model, options, ctx):
    """Freeze every parameter except those matching ``patterns``; refuse a pattern list that matches nothing."""
    patterns = list(options["patterns"])
    trained = 0
    for name, param in model.named_parameters():
        param.requires_grad = any(p in name for p in patterns)
        trained += param.requires_grad
    if not trained:
        raise ValueError(f"peft.patterns: {patterns} match no parameter of the model")
    return model


METHOD = PeftMethod(
    name="$name",
    apply="$pkg.plugin:apply",
    options=OPTIONS,
    description="train only the parameters whose names match peft.patterns (saves a full checkpoint)",
    saves="full",
    # the family capability this method relies on: lmforge's capability keys are a closed set
    # (docs/hooks.md), so a new method names the built-in one whose support it shares
    capability="freeze",
)


@hookimpl
def register_peft_methods(register):
    register(METHOD)
''',
    "tests/test_conformance.py": '''"""lmforge's conformance suite for this PEFT method, on tiny-llama."""

from lmforge.testing import check_peft_method


def test_method_conforms(tmp_path):
    check_peft_method("$name", preset="tiny-llama", lr=1e-2, workdir=str(tmp_path))
''',
}
