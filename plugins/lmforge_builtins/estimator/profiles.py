"""A model's estimator profile: how its forward pass differs from transformers' LLaMA.

A family describes its architecture numbers in :class:`~lmforge.plugins.descriptors.ArchSpec`;
the few implementation details that change what autograd saves come from the
family's own ``ModelFamily.estimator_profile`` (``profile(arch, model_type) ->
mapping``, pure Python, in the family plugin), looked up in the registry by the
checkpoint's ``model_type``. The family's ``ArchSpec.extra`` always wins over
its profile. The keys this estimator reads:

``program``        ``llama`` (default) or ``bloom`` (see :mod:`.decoder`), or ``"module:attr"``
``attn_kernel``    force ``eager`` / ``sdpa`` whatever the job asks (the model has only that path)
``kv_repeat``      ``hf`` (repeat K/V only when SDPA gets a mask) or ``always``
``rmsnorm``        ``hf`` (normalise in fp32, cast, then scale), ``glm2`` (scale in fp32, then cast) or
                   ``minicpm`` (normalise the input in its own dtype, cast, then scale)
``rope_saved``     ``cos_sin`` (two (s, d) tables) or ``cache`` (one (b, s, rot/2, 2) table)
``rotary_fraction`` share of each head's dimensions that is rotated (``partial_rotary_factor`` wins)
``embedding_norm`` a LayerNorm right after the word embeddings (BLOOM)
``linear_shapes``, ``layer_params``, ``extra_params``: the parameter layout (see :mod:`.params`)
``approximate``    not merged into ``extra``: why this estimator replays the model's forward pass only
                   approximately (priced as a LLaMA-style decoder), shown as a note
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lmforge.plugins.descriptors import resolve_ref

APPROXIMATE = "approximate"


def family_profile(arch, model_type: str) -> dict[str, Any]:
    """The profile the first registered family listing ``model_type`` gives for ``arch`` ({} when none)."""
    if not model_type:
        return {}
    from lmforge.plugins.registry import get_registry

    for family in get_registry().families():
        if family.estimator_profile is not None and model_type in family.model_types:
            return dict(resolve_ref(family.estimator_profile)(arch, model_type) or {})
    return {}


def with_profile(arch, model_type: str):
    """``arch`` with the profile of ``model_type`` under its own ``extra``."""
    prof = family_profile(arch, model_type)
    prof.pop(APPROXIMATE, None)
    if not prof:
        return arch
    prof.update(arch.extra)
    return replace(arch, extra=prof)


def approximation(arch, model_type: str) -> str | None:
    """Why the activations of this model type are approximate, or None when the replay is faithful."""
    return family_profile(arch, model_type).get(APPROXIMATE)
