"""Long-context extension: the ``long_context:`` section applied to a model config before it is built.

:func:`extend` is what the loaders call (through
:func:`lmforge.modeling.loading.apply_long_context`): it refuses a family or method
the family does not accept (:func:`check`), makes the section concrete against the
config (:func:`resolve`) and runs the family's ``ModelFamily.extend_context`` on
the transformers config in place, so the model is built with the extension and
its saved ``config.json`` carries it.

:func:`rope_scaling` is that function for RoPE families on transformers' modeling:
it writes transformers' own RoPE parameters, so ``ROPE_INIT_FUNCTIONS`` (the code
transformers and vLLM run on the saved config) do the math. transformers 5.23
and 5.24 both read ``config.rope_parameters`` with ``rope_type`` (the old
``rope_scaling`` with ``type`` is only a deprecated alias of it). The methods:

- ``linear``: position interpolation (Chen et al. 2023), ``rope_type: linear``.
- ``dynamic``: dynamic NTK (transformers' ``rope_type: dynamic``): the base grows
  with the running sequence length beyond ``max_position_embeddings``, which
  transformers reads as the pretraining length, so it is left at the original.
- ``yarn``: YaRN (Peng et al. 2023), ``rope_type: yarn`` with
  ``original_max_position_embeddings`` (beta_fast 32, beta_slow 1, transformers' defaults).
- ``llama3``: Llama 3.1's wavelength bands, ``rope_type: llama3`` (low/high
  frequency factors 1 and 4, as released).
- ``ntk``: static NTK-aware scaling (PaddleNLP's ``ntk`` strategy, the original
  "NTK-aware" post): ``rope_theta`` becomes ``theta * factor ** (d / (d - 2))`` with
  ``d`` the rotary dimension. transformers has no rope type for it (its ``dynamic``
  is the *dynamic* variant), so the new base is written as the plain ``rope_theta``.

Every method but ``dynamic`` raises ``max_position_embeddings`` to
``factor x original``. Torch-free; :func:`rope_scaling` reads only the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lmforge.config.spec import LongContextSpec
from lmforge.errors import CapabilityError, ConfigError, LmforgeError

METHODS = ("linear", "dynamic", "yarn", "llama3", "ntk")
ROPE_METHODS = METHODS
POSITION_KEYS = ("max_position_embeddings", "seq_length", "max_sequence_length", "n_positions")
LLAMA3_BANDS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}  # Llama 3.1's released values


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def max_positions(config: Any) -> int | None:
    """The max positions a config (a dict or a ``PretrainedConfig``) declares, or ``None``."""
    for key in POSITION_KEYS:
        value = _get(config, key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def rope_parameters(config: Any) -> dict:
    """The config's RoPE parameters in transformers 5's spelling (``rope_parameters`` / ``rope_type``), read
    from ``rope_parameters`` or the older ``rope_scaling`` / ``type`` plus ``rope_theta``; ``{}`` when none."""
    params = _get(config, "rope_parameters") or _get(config, "rope_scaling") or {}
    params = dict(params) if isinstance(params, Mapping) else {}
    if "type" in params:
        params.setdefault("rope_type", params.pop("type"))
    theta = _get(config, "rope_theta")
    if theta is not None:
        params.setdefault("rope_theta", theta)
    if params:
        params.setdefault("rope_type", "default")
    return params


def window(config: Any) -> int | None:
    """The longest sequence a config serves: its max positions, times the factor for dynamic NTK (which keeps
    ``max_position_embeddings`` at the pretraining length and scales beyond it)."""
    n = max_positions(config)
    params = rope_parameters(config)
    if n is not None and params.get("rope_type") == "dynamic" and params.get("factor"):
        return int(round(n * float(params["factor"])))
    return n


def check(family, lc: LongContextSpec) -> None:
    """Refuse long context on a family that does not support it, or a method it does not accept."""
    if lc.factor == 1.0:
        return  # nothing to extend (e.g. LongLoRA's shifted attention alone)
    cap = family.capability("long_context")
    methods = tuple(family.long_context_methods)
    if not cap.usable or not methods or family.extend_context is None:
        why = cap.reason if not cap.usable else "the family declares no long-context method"
        raise CapabilityError(f"long_context: not supported by the {family.name!r} family: {why}")
    if lc.method != "family" and lc.method not in methods:
        raise CapabilityError(f"long_context.method: {lc.method!r} is not supported by the {family.name!r} family "
                              f"(it accepts {', '.join(methods)})")


def resolve(lc: LongContextSpec, config: Any, family=None) -> LongContextSpec:
    """``lc`` made concrete for one model config: ``method: family`` becomes the family's first method and
    ``original_max_position: auto`` the config's max positions."""
    method = lc.method
    if method == "family":
        methods = tuple(getattr(family, "long_context_methods", ()) or ())
        if not methods:
            name = getattr(family, "name", None)
            raise ConfigError("long_context.method: 'family' needs a family that declares long-context methods"
                              + (f" ({name!r} declares none)" if name else ""))
        method = methods[0]
    orig = lc.original_max_position
    if orig in (None, "auto"):
        # a relative-bias model (CPM-Ant) declares no max positions, only the distance its buckets span:
        # that is what an extension scales, so it is its "original" here (not a serving window: see window())
        orig = max_positions(config) or _get(config, "position_bias_max_distance")
        if orig is None:
            raise ConfigError("long_context.original_max_position: auto, but the model config declares no max "
                              f"positions ({', '.join(POSITION_KEYS)}); set it to a number")
    return dataclasses.replace(lc, method=method, original_max_position=int(orig))


def extend(config: Any, family, lc: LongContextSpec) -> LongContextSpec:
    """Check, resolve and apply ``lc`` to ``config`` (in place) with the family's ``extend_context``;
    returns the resolved section. A factor of 1 changes nothing."""
    check(family, lc)
    if lc.factor == 1.0:
        return lc  # positions unchanged (LongLoRA's shifted attention alone): nothing to resolve or write
    resolved = resolve(lc, config, family)
    from lmforge.plugins.descriptors import resolve_ref

    resolve_ref(family.extend_context)(config, resolved)
    return resolved


def rotary_dim(config: Any) -> int:
    """The rotary dimension transformers' RoPE functions use: ``head_dim`` (else hidden / heads) times
    ``partial_rotary_factor``."""
    head_dim = _get(config, "head_dim") or _get(config, "hidden_size") // _get(config, "num_attention_heads")
    partial = rope_parameters(config).get("partial_rotary_factor") or _get(config, "partial_rotary_factor") or 1.0
    return int(head_dim * partial)


def rope_scaling(config: Any, lc: LongContextSpec) -> None:
    """Write ``lc`` into a transformers config as its own RoPE parameters (see the module docstring), in place.

    ``lc`` is resolved (:func:`resolve`). A config that already has this method and factor (a run
    trained with it) is left as it is. Refuses a method outside :data:`ROPE_METHODS`, a config
    without RoPE parameters, and a config that already scales its positions otherwise (a second
    scaling is not stacked: transformers applies one ``rope_type``).
    """
    if lc.method not in ROPE_METHODS:
        raise CapabilityError(f"long_context.method: {lc.method!r} is not a RoPE scaling ({', '.join(ROPE_METHODS)})")
    params = rope_parameters(config)
    if not params:
        raise CapabilityError("long_context: this model config has no RoPE parameters (rope_parameters / "
                              "rope_theta), so RoPE scaling does not apply to it")
    kind = params.get("rope_type", "default")
    if kind == lc.method and params.get("factor") is not None and float(params["factor"]) == float(lc.factor):
        return  # already extended this way (a run trained with it, served with use_long_glm=True): kept as saved
    if kind != "default":
        raise LmforgeError(f"long_context: the model config already scales its positions (rope_type {kind!r}, "
                           f"factor {params.get('factor')}); lmforge does not stack a second scaling on it")
    factor, orig = float(lc.factor), int(lc.original_max_position)
    new: dict[str, Any] = {"rope_theta": float(params.get("rope_theta", 10000.0))}
    if params.get("partial_rotary_factor") is not None:
        new["partial_rotary_factor"] = params["partial_rotary_factor"]
    if lc.method == "ntk":
        d = rotary_dim(config)
        new.update(rope_type="default", rope_theta=new["rope_theta"] * factor ** (d / (d - 2)))
    elif lc.method in ("linear", "dynamic"):
        new.update(rope_type=lc.method, factor=factor)
    elif lc.method == "yarn":
        new.update(rope_type="yarn", factor=factor, original_max_position_embeddings=orig)
    else:  # llama3
        new.update(rope_type="llama3", factor=factor, original_max_position_embeddings=orig, **LLAMA3_BANDS)
    positions = orig if lc.method == "dynamic" else int(round(factor * orig))
    if isinstance(config, dict):
        config["rope_parameters"] = new
        config.pop("rope_scaling", None)
        config.pop("rope_theta", None)
        config["max_position_embeddings"] = positions
        return
    config.rope_parameters = new
    config.max_position_embeddings = positions
    if hasattr(config, "original_max_position_embeddings"):
        config.original_max_position_embeddings = orig  # transformers prefers it over rope_parameters' copy
    if hasattr(config, "rope_theta"):
        config.rope_theta = new["rope_theta"]
    if hasattr(config, "standardize_rope_params"):
        config.standardize_rope_params()
    if hasattr(config, "validate_rope"):
        config.validate_rope()


__all__ = ["METHODS", "check", "resolve", "extend", "rope_scaling", "rotary_dim", "window", "max_positions",
           "rope_parameters"]
