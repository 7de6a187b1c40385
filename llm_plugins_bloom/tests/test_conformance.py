"""lmforge's conformance suite (``lmforge.testing.check_family``) on this plugin's families.

tiny-bloom; every check runs, packing included.
"""

from __future__ import annotations

import pytest

from lmforge.testing import check_family

torch = pytest.importorskip("torch")



@pytest.mark.parametrize("family", ["bloom"])
def test_family_conforms(family, tmp_path):
    report = check_family(family, workdir=str(tmp_path))
    assert not report.skipped, report.summary()  # packing included: the ALiBi offsets restart per example
