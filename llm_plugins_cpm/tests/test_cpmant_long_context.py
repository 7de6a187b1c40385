"""Long context for CPM-Ant: ``method: family`` spreads its relative-position buckets over factor x the
original ``position_bias_max_distance``; the bucket map is the published one, the model runs and
generates past the original distance, and the saved config reloads to the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import CapabilityError
from lmforge.modeling.loading import LoadOptions, load_model, resolve_model
from lmforge.config.spec import LongContextSpec

pytestmark = pytest.mark.latest  # also run by `make test-latest` (newest transformers/peft)


LC = LongContextSpec  # a resolved long_context section, built by hand


def _config(lc: LC | None = None):
    from transformers import CpmAntConfig

    from llm_plugins_cpm.cpmant_longctx import extend

    cfg = CpmAntConfig(**{k: v for k, v in resolve_model("tiny-cpmant").config.items() if k != "model_type"})
    if lc is not None:
        extend(cfg, lc)
    return cfg


def _model(cfg):
    from llm_plugins_cpm.cpmant_modeling import CpmAntForCausalLM

    torch.manual_seed(0)
    return CpmAntForCausalLM(cfg).eval()


def _buckets(model, distances):
    pb = model.cpmant.position_bias
    return pb._position_bucket(distances, num_buckets=pb.num_buckets, max_distance=pb.max_distance)


def test_family_declares_its_method():
    from llm_plugins_cpm.plugin import CPMANT

    assert CPMANT.long_context_methods == ("family",)
    assert CPMANT.capability("long_context").status == "supported"


def test_bucket_map_is_the_published_formula_and_stretches():
    from llm_plugins_cpm.cpmant_longctx import position_bucket

    base = _config()
    cfg = _config(LC("family", 2.0, base.position_bias_max_distance))
    assert (base.position_bias_max_distance, cfg.position_bias_max_distance) == (256, 512)
    distances = torch.arange(-700, 701, dtype=torch.int32)
    for c in (base, cfg):
        got = _buckets(_model(c), distances).tolist()
        want = [position_bucket(d, c.position_bias_num_buckets, c.position_bias_max_distance)
                for d in distances.tolist()]
        assert got == want
    last = cfg.position_bias_num_buckets - 1  # positive distances use the upper half
    far = torch.tensor([256, 300, 400, 511], dtype=torch.int32)
    assert set(_buckets(_model(base), far).tolist()) == {last}  # saturated: all one bucket
    assert len(set(_buckets(_model(cfg), far).tolist())) > 1  # told apart again
    near = torch.arange(0, 8, dtype=torch.int32)  # the exact buckets do not move
    assert _buckets(_model(cfg), near).tolist() == _buckets(_model(base), near).tolist()


@pytest.mark.parametrize("method", ["linear", "dynamic", "yarn", "llama3", "ntk"])
def test_rope_methods_are_refused(method):
    from llm_plugins_cpm.cpmant_longctx import extend

    cfg = _config()
    with pytest.raises(CapabilityError, match="relative-position buckets"):
        extend(cfg, LC(method, 2.0, 256))
    assert cfg.position_bias_max_distance == 256


def test_forward_and_generate_beyond_and_roundtrip(tmp_path):
    cfg = _config(LC("family", 2.0, 256))
    model = _model(cfg)
    ids = torch.randint(4, 370, (1, 520))
    ids[0, 0] = 2
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        out = model.generate(ids[:, :500], max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert logits.shape[1] == 520 and torch.isfinite(logits).all()
    assert out.shape[1] == 512
    model.save_pretrained(tmp_path)
    from llm_plugins_cpm.loader import tiny_cpmant_tokenizer

    tiny_cpmant_tokenizer().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["position_bias_max_distance"] == 512
    again, _ = load_model(resolve_model(str(tmp_path)), LoadOptions(dtype="float32"))
    assert again.config.position_bias_max_distance == 512
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(input_ids=ids).logits, logits)


def test_auto_original_is_the_bucket_distance():
    from lmforge.modeling.longctx import resolve
    from lmforge.plugins.registry import get_registry

    fam = get_registry().family("cpmant")
    lc = LongContextSpec(method="family", factor=2.0, original_max_position="auto")
    got = resolve(lc, {"model_type": "cpmant", "position_bias_max_distance": 2048}, fam)
    assert got.original_max_position == 2048  # CPM-Ant declares no max positions, only the bucket distance
