"""Cached generation equals uncached generation for every family preset.

transformers 5.24 renamed the KV-cache argument (``past_key_values`` -> ``cache``);
modeling code that read only the old name decoded every token after the first
with no context while forward logits stayed exact. These tests compare, per
preset, greedy decoding with the cache against greedy decoding that recomputes
the whole sequence each step: same tokens, per-step logits within 1e-4 (fp32),
for one prompt and for a left-padded batch. ``make test-latest`` runs them on the
newest releases the declared ranges allow.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lmforge.plugins.registry import get_registry  # noqa: E402
from lmforge.testing.family import teacher_forced_logits  # noqa: E402

pytestmark = pytest.mark.latest


def tiny_presets() -> list[str]:
    reg = get_registry()
    return sorted(p.name for fam in reg.families() for p in fam.presets if p.name.startswith("tiny-"))


@pytest.fixture(scope="module")
def completions():
    from lmforge import Completion

    cache = {}

    def get(preset):
        if preset not in cache:
            torch.manual_seed(0)
            cache[preset] = Completion(preset, dtype="float32")
        return cache[preset]

    return get


def _greedy(comp, prompts, use_cache, steps=8):
    batch = comp.prepare_batch([comp.encode(p) for p in prompts])
    with torch.no_grad():
        out = comp.model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                  use_cache=use_cache, output_logits=True, return_dict_in_generate=True,
                                  pad_token_id=comp.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
    return out.sequences, torch.stack(out.logits, 1).float()


PREFIX_LM_FAMILIES = {"cpmant"}


@pytest.mark.parametrize("preset", tiny_presets())
@pytest.mark.parametrize("prompts", [["What is 2 plus 3?"], ["Hi", "What is 7 times 6? Answer briefly."]],
                         ids=["single", "padded-batch"])
def test_cached_greedy_equals_uncached(completions, preset, prompts):
    comp = completions(preset)
    seq_cached, logits_cached = _greedy(comp, prompts, use_cache=True)
    if comp.family.name in PREFIX_LM_FAMILIES:
        logits_full = teacher_forced_logits(comp, comp.prepare_batch([comp.encode(p) for p in prompts]), seq_cached)
        assert torch.equal(logits_full.argmax(-1), seq_cached[:, -logits_full.shape[1]:])
    else:
        seq_full, logits_full = _greedy(comp, prompts, use_cache=False)
        assert torch.equal(seq_cached, seq_full), f"{preset}: cached greedy tokens differ from full recompute"
    diff = (logits_cached - logits_full).abs().max().item()
    assert diff <= 1e-4, f"{preset}: per-step logits differ by {diff:.2e} between cached and uncached decoding"


def test_presets_cover_every_family():
    reg = get_registry()
    families_with_tiny = {fam.name for fam in reg.families() if any(p.name.startswith("tiny-") for p in fam.presets)}
    assert {"llama", "glm", "chatglm", "chatglm2", "chatglm3", "glm4", "bloom", "cpmant", "minicpm", "minicpm3"} <= families_with_tiny


@pytest.mark.parametrize("preset", tiny_presets())
def test_batched_equals_one_by_one_and_stream_equals_generate(completions, preset):
    comp = completions(preset)
    prompts = ["Hi", "What is 7 times 6? Answer briefly.", "Anna has 4 apples."]
    batched = comp.generate_batch(prompts, max_new_tokens=6)
    single = [comp.generate(p, max_new_tokens=6) for p in prompts]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single], preset
    assert [r.finish_reasons for r in batched] == [r.finish_reasons for r in single]
    assert "".join(comp.stream(prompts[1], max_new_tokens=6)) == single[1].text
