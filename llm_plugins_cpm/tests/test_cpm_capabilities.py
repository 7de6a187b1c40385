"""Every "unsupported" entry of the CPM capability maps is refused with its reason before any weights load.

(The behaviour behind each refusal is shown next to the family: test_cpm_cpmant.py, test_cpm_minicpm3.py
and the scale_emb test below.)
"""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import CapabilityError

JOB_OPTIONS = {"flash_attention": dict(attn_implementation="flash_attention_2"),
               "gradient_checkpointing": dict(gradient_checkpointing=True),
               "packing": dict(packing=True)}
FAMILY_PRESET = {"cpmant": "tiny-cpmant", "minicpm": "tiny-minicpm", "minicpm3": "tiny-minicpm3"}


def _unsupported():
    from lmforge.plugins.registry import get_registry

    reg = get_registry()
    methods = set(reg.names("peft_methods"))
    for fam, preset in FAMILY_PRESET.items():
        for key, cap in reg.family(fam).capabilities.items():
            if not cap.usable and (key in methods or key in JOB_OPTIONS):
                yield pytest.param(preset, key, cap.reason, id=f"{fam}-{key}")


@pytest.mark.parametrize("preset,key,reason", list(_unsupported()))
def test_refused_with_the_family_reason(preset, key, reason, data_files):
    from lmforge import FineTune

    kwargs = JOB_OPTIONS.get(key, dict(peft=key))
    with pytest.raises(CapabilityError) as err:
        FineTune(model=preset).train_local(train_fpath=data_files[0], output_dir="/nonexistent/never-written",
                                           max_steps=1, **kwargs)
    assert reason in str(err.value)


def test_minicpm_does_not_scale_caller_given_embeddings():
    """Why prompt tuning / P-tuning are refused: peft passes inputs_embeds, which skip scale_emb (as released)."""
    from lmforge.modeling.loading import LoadOptions, load_model, resolve_model

    model, _ = load_model(resolve_model("tiny-minicpm"), LoadOptions())
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        from_ids = model(input_ids=ids).logits
        raw = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
        scaled = model(inputs_embeds=model.get_input_embeddings()(ids) * model.config.scale_emb).logits
    torch.testing.assert_close(scaled, from_ids)
    assert (raw - from_ids).abs().max() > 1e-2
