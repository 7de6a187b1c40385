"""lmforge's conformance suite (``lmforge.testing.check_family``) on this plugin's families.

One tiny preset per family (chatglm2 shares its code with chatglm3: marked slow). The GLM
families do not claim packing, so that check is the one skipped.
"""

from __future__ import annotations

import pytest

from lmforge.testing import check_family

torch = pytest.importorskip("torch")



@pytest.mark.parametrize("family", [
    "glm", "chatglm", "chatglm3", "glm4",
    pytest.param("chatglm2", marks=pytest.mark.slow),  # the same model code and encoder as chatglm3
])
def test_family_conforms(family, tmp_path):
    report = check_family(family, workdir=str(tmp_path))
    assert [c for c, _ in report.skipped] == ["capability packing"], report.summary()
