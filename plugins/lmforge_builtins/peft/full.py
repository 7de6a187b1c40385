"""Full fine-tuning: nothing is wrapped, every parameter trains; saves a complete checkpoint."""

from __future__ import annotations

from lmforge.plugins.descriptors import PeftMethod


def apply(model, options, ctx):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


FULL = PeftMethod(
    name="full",
    description="full fine-tuning: every parameter trains; saves a complete checkpoint",
    apply=f"{__name__}:apply",
    saves="full",
)

METHODS = (FULL,)
