"""The GLM families' estimator profile: how their forward passes differ from transformers' LLaMA.

Pure Python; registered as ``ModelFamily.estimator_profile`` by every GLM family
(they share ``model_type`` values, so the variant is told apart here). The
built-in ``analytic`` estimator merges the result under the arch's own ``extra``
(see :mod:`lmforge_builtins.estimator.profiles` for the keys).
"""

from __future__ import annotations

from typing import Any

# ChatGLM2/3 and GLM-4 in THUDM's layout (this plugin's own modeling code)
CHATGLM2 = {"rmsnorm": "glm2", "rope_saved": "cache", "attn_kernel": "sdpa", "kv_repeat": "always",
            "rotary_fraction": 0.5}


def profile(arch, model_type: str) -> dict[str, Any]:
    """The profile of a GLM checkpoint; GLM v1 and ChatGLM-6B are replayed only approximately."""
    if model_type == "chatglm":
        if arch.position_kind == "rope_2d":
            return {"approximate": "ChatGLM-6B (2D rotary, own attention)"}
        return dict(CHATGLM2)
    if model_type == "glm" and arch.position_kind == "learned":
        return {"approximate": "GLM v1 (2D block positions, own attention)"}
    return {}  # transformers' native glm / glm4 layout: LLaMA-like
