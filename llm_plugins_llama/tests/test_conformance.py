"""lmforge's conformance suite (``lmforge.testing.check_family``) on this plugin's families.

One tiny preset, tiny-llama; every check runs (LLaMA claims lora, checkpointing and packing).
"""

from __future__ import annotations

import pytest

from lmforge.testing import check_family

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared CPU: one thread per process is steady, more spin
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", ["llama"])
def test_family_conforms(family, tmp_path):
    report = check_family(family, workdir=str(tmp_path))
    assert not report.skipped, report.summary()  # LLaMA claims every capability the suite checks
