"""Long-context extension for the GLM families: ``extend(config, lc)`` per position scheme (pure Python).

Each function changes the config the loader is about to build or load the model with,
in place, so the model runs with the extension and the saved ``config.json`` carries it
(``lc`` is the resolved ``long_context`` section: ``method``, ``factor``,
``original_max_position``). docs/long-context.md gives the reasons for each choice.

- ChatGLM2/3 and GLM-4 in THUDM's layout (:func:`extend_chatglm2`): the released
  ``rope_ratio`` mechanism of chatglm3-6b-32k / glm-4-9b (rotary base
  ``10000 * rope_ratio``). ``ntk`` multiplies ``rope_ratio`` by
  ``factor ** (d / (d - 2))`` (NTK-aware base scaling, ``d`` the rotated channels:
  ``kv_channels / 2``) and sets ``seq_length`` to ``factor x original``. Other methods
  are refused: the released modeling code (and vLLM's chatglm) reads ``rope_ratio``
  and nothing else, so any other scaling would not survive in the saved config.
- GLM-4 in transformers' layout (:func:`extend_glm4`): transformers' own RoPE
  parameters (:func:`lmforge.modeling.longctx.rope_scaling`), so transformers' and
  vLLM's RoPE code do the math.
- GLM v1 and ChatGLM-6B (:func:`extend_block_positions`): position interpolation of
  both channels of the 2D block positions (positions and block positions scaled by
  ``1 / factor``); ``position_interpolation_factor`` is lmforge's config key for it,
  read by this plugin's modeling (released THUDM code ignores it).
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import CapabilityError, ConfigError

from .plugin import BLOCK_POSITION_METHODS, CHATGLM2_METHODS, GLM4_METHODS


def _factor(lc) -> float:
    factor = float(lc.factor)
    if not factor > 1.0:
        raise ConfigError(f"long_context.factor: must be greater than 1 to extend the context, got {lc.factor!r}")
    return factor


def _original(config: Any, lc, key: str) -> int:
    orig = lc.original_max_position
    if not isinstance(orig, int) or isinstance(orig, bool) or orig <= 0:
        orig = getattr(config, key, None)
    if not isinstance(orig, int) or orig <= 0:
        raise ConfigError(f"long_context.original_max_position: the model config has no {key}; set it to a number")
    return orig


def ntk_ratio(factor: float, rotary_dim: int) -> float:
    """NTK-aware base scaling: the factor the rotary base is multiplied by, ``factor ** (d / (d - 2))``."""
    return float(factor) ** (rotary_dim / (rotary_dim - 2))


def chatglm2_rotary_dim(config: Any) -> int:
    """Channels ChatGLM2's rotary embedding rotates: half of the head (``kv_channels / 2``)."""
    head = getattr(config, "kv_channels", None) or config.hidden_size // config.num_attention_heads
    return int(head) // 2


def extend_chatglm2(config: Any, lc) -> None:
    """ChatGLM2/3, GLM-4 (THUDM layout): ``rope_ratio *= factor ** (d/(d-2))``, ``seq_length = factor x original``."""
    if lc.method not in CHATGLM2_METHODS:
        raise CapabilityError(
            f"long_context.method: {lc.method!r} is not available for the THUDM ChatGLM2/ChatGLM3/GLM-4 layout: its "
            "modeling code reads only rope_ratio (the rotary base is 10000 x rope_ratio, the way the -32k/-128k "
            "checkpoints extend), so lmforge offers that alone (method: ntk, or family); use the transformers "
            "layout of GLM-4 for linear/dynamic/yarn/llama3 scaling")
    factor = _factor(lc)
    orig = _original(config, lc, "seq_length")
    ratio = float(getattr(config, "rope_ratio", None) or 1)
    config.rope_ratio = ratio * ntk_ratio(factor, chatglm2_rotary_dim(config))
    config.seq_length = int(round(factor * orig))


def extend_glm4(config: Any, lc) -> None:
    """GLM-4: ``rope_ratio`` in THUDM's layout (``model_type: chatglm``), transformers' RoPE parameters otherwise."""
    if getattr(config, "model_type", None) == "chatglm":
        extend_chatglm2(config, lc)
    else:
        from lmforge.modeling.longctx import rope_scaling

        rope_scaling(config, lc)


def extend_block_positions(config: Any, lc) -> None:
    """GLM v1 and ChatGLM-6B: interpolate both position channels by ``1 / factor``.

    ``max_sequence_length`` becomes ``factor x original`` (the longest sequence); GLM v1's
    learned tables keep their trained rows (``original_max_sequence_length``) and are read at
    fractional positions by linear interpolation between neighbouring rows.
    """
    if lc.method not in BLOCK_POSITION_METHODS:
        raise CapabilityError(
            f"long_context.method: {lc.method!r} is not available for GLM v1 / ChatGLM-6B: their 2D block positions "
            "(position, block position) are extended by position interpolation of both channels (method: linear, "
            "or family); base-frequency methods do not apply to GLM v1's learned position tables")
    factor = _factor(lc)
    orig = _original(config, lc, "max_sequence_length")
    if getattr(config, "original_max_sequence_length", None) is None:
        config.original_max_sequence_length = int(getattr(config, "max_sequence_length", orig))
    config.position_interpolation_factor = float(getattr(config, "position_interpolation_factor", None) or 1.0) * factor
    config.max_sequence_length = int(round(factor * orig))


__all__ = ["CHATGLM2_METHODS", "GLM4_METHODS", "BLOCK_POSITION_METHODS", "ntk_ratio", "chatglm2_rotary_dim",
           "extend_chatglm2", "extend_glm4", "extend_block_positions"]
