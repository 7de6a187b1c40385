"""lmforge's conformance suite (``lmforge.testing.check_family``) on this plugin's families.

CPM-Ant attends bidirectionally over its prompt (prefix-LM), so its uncached reference is one
forward with the answer marked as trained (``prefix_lm=True``).
"""

from __future__ import annotations

import pytest

from lmforge.testing import check_family

torch = pytest.importorskip("torch")



@pytest.mark.parametrize("family,prefix_lm", [("cpmant", True), ("minicpm", False), ("minicpm3", False)])
def test_family_conforms(family, prefix_lm, tmp_path):
    check_family(family, prefix_lm=prefix_lm, workdir=str(tmp_path))
