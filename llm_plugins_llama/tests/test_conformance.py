"""lmforge's conformance suite (``lmforge.testing.check_family``) on this plugin's families.

One tiny preset, tiny-llama; every check runs (LLaMA claims lora, checkpointing and packing).
"""

from __future__ import annotations

import pytest

from lmforge.testing import check_family

torch = pytest.importorskip("torch")



@pytest.mark.parametrize("family", ["llama"])
def test_family_conforms(family, tmp_path):
    report = check_family(family, workdir=str(tmp_path))
    assert not report.skipped, report.summary()  # LLaMA claims every capability the suite checks
