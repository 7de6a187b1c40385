"""Long context for CPM-Ant: its relative-position buckets (pure Python; see docs/long-context.md).

CPM-Ant has no position table: every attention score gets a learned per-head bias chosen by a
bucket of the query-key distance (T5-style, bidirectional): half the buckets per direction, the
first half of those exact (distances below ``max_exact``), the rest log-spaced up to
``position_bias_max_distance``, and every larger distance in the last bucket. So the model runs at
any length as released; beyond the max distance the buckets *saturate* and distances stop being
told apart.

:func:`extend` (``method: family``) raises ``position_bias_max_distance`` to ``factor x`` the
original, so distances up to the new length get distinct buckets again, with the same number of
buckets (and bias rows) and the exact buckets unchanged. It changes the bucket map: the
log-spaced buckets are spread over the longer range, so a distance in that range now reads the
bias learned for a somewhat shorter distance (an interpolation of the bucket map, in log space),
which a fine-tune at the longer length adapts to, as with RoPE position interpolation. It is a
config key transformers' CPM-Ant reads, so the saved ``config.json`` reloads with it anywhere.
"""

from __future__ import annotations

import math


def position_bucket(distance: int, num_buckets: int, max_distance: int) -> int:
    """CPM-Ant's bucket of ``key - query`` (the formula of transformers' ``_position_bucket``, in Python)."""
    half = num_buckets // 2
    offset = half if distance > 0 else 0
    distance = abs(distance)
    max_exact = half // 2
    if distance < max_exact:
        return offset + distance
    large = max_exact + int(math.log(distance / max_exact) / math.log(max_distance / max_exact) * (half - max_exact))
    return offset + min(large, half - 1)


def extend(config, lc) -> None:
    """``position_bias_max_distance = factor x original`` (see the module docstring); other methods are refused."""
    from lmforge.errors import CapabilityError, ConfigError

    if lc.method != "family":
        raise CapabilityError(f"long_context.method: {lc.method!r} rescales rotary (RoPE) frequencies, which CPM-Ant "
                              "does not have (relative-position buckets); use method: family, which spreads the "
                              "buckets over factor x position_bias_max_distance")
    factor = float(lc.factor)
    if not factor > 1.0:
        raise ConfigError(f"long_context.factor: must be greater than 1 to extend the context, got {lc.factor!r}")
    orig = lc.original_max_position
    if not isinstance(orig, int) or isinstance(orig, bool) or orig <= 0:
        orig = config.position_bias_max_distance
    config.position_bias_max_distance = int(round(factor * orig))
