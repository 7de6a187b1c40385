"""BLOOM's estimator profile: how its forward pass differs from transformers' LLaMA (pure Python).

Registered as ``ModelFamily.estimator_profile``; the built-in ``analytic``
estimator merges it under the arch's own ``extra`` (see
:mod:`lmforge_builtins.estimator.profiles` for the keys).
"""

from __future__ import annotations

from typing import Any


def profile(arch, model_type: str) -> dict[str, Any]:
    """BLOOM: the bloom layer program, a LayerNorm after the embeddings, eager attention (ALiBi via baddbmm)."""
    h, i = arch.hidden_size, arch.intermediate_size
    return {"program": "bloom", "embedding_norm": True, "attn_kernel": "eager",
            "linear_shapes": {"query_key_value": [h, 3 * h, True], "dense": [h, h, True],
                              "dense_h_to_4h": [h, i, True], "dense_4h_to_h": [i, h, True]}}
