"""Capabilities: the closed set of keys a family's capability map may use, and their values.

A family says, per key, whether it supports a feature: ``supported``,
``experimental`` or ``unsupported(reason)`` (a :class:`Capability`). The keys are
the members of :class:`CapabilityKey`, declared here once, each with a one-line
meaning; a family's ``capabilities`` and a PEFT method's ``capability`` are
checked against them when the plugin registers, and a key that is not one of
them (a typo, or a feature lmforge does not know) marks that plugin broken with
a did-you-mean.

A key a family does not declare is *untested*: :func:`capability_of` answers
``experimental`` with the reason "untested: the family does not declare it".
Training goes ahead (core warns for an experimental PEFT method or packing),
and ``lmforge models`` shows the entry as such. A family that knows better
declares the key.

Pure Python, no imports beyond the standard library and :mod:`lmforge.errors`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from lmforge.errors import PluginError, did_you_mean

SUPPORTED = "supported"
EXPERIMENTAL = "experimental"
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Capability:
    """Whether a family supports a feature, and why not when it does not."""

    status: str = SUPPORTED
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in (SUPPORTED, EXPERIMENTAL, UNSUPPORTED):
            raise ValueError(f"capability status must be supported/experimental/unsupported, got {self.status!r}")
        if self.status == UNSUPPORTED and not self.reason:
            raise ValueError("an unsupported capability must say why (reason=...)")

    @property
    def usable(self) -> bool:
        return self.status != UNSUPPORTED

    def to_json(self) -> dict:
        return {"status": self.status, "reason": self.reason or None}


def supported(reason: str = "") -> Capability:
    return Capability(SUPPORTED, reason)


def experimental(reason: str = "") -> Capability:
    return Capability(EXPERIMENTAL, reason)


def unsupported(reason: str) -> Capability:
    return Capability(UNSUPPORTED, reason)


class CapabilityKey(enum.StrEnum):
    """Every capability key, with its meaning. Members compare equal to their string value."""

    meaning: str
    enforced: bool

    def __new__(cls, value: str, meaning: str, enforced: bool = True) -> "CapabilityKey":
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.meaning = meaning
        # refused before weights load when unsupported (lmforge.train.job.check_capabilities); False: only
        # shown by `lmforge models`
        obj.enforced = enforced
        return obj

    # PEFT methods: the key of each built-in method (``PeftMethod.capability_key``)
    FULL = "full", "full fine-tuning: every parameter trains"
    FREEZE = "freeze", "the first/last N blocks or named modules train, the rest is frozen"
    LORA = "lora", "LoRA adapters on the family's default_lora_targets"
    DORA = "dora", "DoRA: weight-decomposed LoRA (peft use_dora)"
    QLORA = "qlora", "LoRA on a 4-bit bitsandbytes base: the family's linear layers quantize"
    ADALORA = "adalora", "AdaLoRA: LoRA whose ranks are reallocated while training"
    IA3 = "ia3", "(IA)^3: learned rescaling vectors on keys, values and the MLP"
    PREFIX = "prefix", "prefix tuning (P-tuning v2): trained keys/values enter through past_key_values"
    PROMPT = "prompt", "prompt tuning: trained virtual tokens enter as inputs_embeds"
    PTUNING = "ptuning", "P-tuning: virtual tokens from a prompt encoder enter as inputs_embeds"
    BITFIT = "bitfit", "BitFit: only the biases train"
    UNIPELT = "unipelt", "UniPELT: gated LoRA + prefix + adapter"
    # features of the job
    PACKING = "packing", "packing: several examples per row with no attention across them (docs/packing.md)"
    GRADIENT_CHECKPOINTING = ("gradient_checkpointing",
                              "gradient_checkpointing: activations are recomputed in the backward pass")
    FLASH_ATTENTION = "flash_attention", "attn_implementation: flash_attention_2"
    LONG_CONTEXT = "long_context", "sequences beyond the pretraining length (position scaling)"


KEYS: tuple[str, ...] = tuple(k.value for k in CapabilityKey)
FEATURE_KEYS: tuple[str, ...] = ("packing", "gradient_checkpointing", "flash_attention", "long_context")
PEFT_KEYS: tuple[str, ...] = tuple(k for k in KEYS if k not in FEATURE_KEYS)


def unknown_key_message(key: Any, where: str) -> str:
    return (f"{where}: {key!r} is not a capability key{did_you_mean(key, KEYS)}; "
            f"the keys are {', '.join(KEYS)} (lmforge.plugins.capabilities.CapabilityKey)")


def check_key(key: Any, where: str) -> CapabilityKey:
    """Return ``key`` as a :class:`CapabilityKey`; raise :class:`PluginError` naming ``where`` if it is not one."""
    if isinstance(key, str) and key in KEYS:
        return CapabilityKey(key)
    raise PluginError(unknown_key_message(key, where))


def check_capability_map(capabilities: Mapping[Any, Any], where: str) -> None:
    """Raise :class:`PluginError` for a key outside the closed set or a value that is not a :class:`Capability`."""
    if not isinstance(capabilities, Mapping):
        raise PluginError(f"{where}: capabilities must be a mapping of key -> Capability, "
                          f"got {type(capabilities).__name__}")
    for key, value in capabilities.items():
        check_key(key, f"{where} capabilities")
        if not isinstance(value, Capability):
            raise PluginError(f"{where} capabilities[{str(key)!r}]: expected a Capability (supported(), "
                              f"experimental() or unsupported(reason)), got {type(value).__name__} {value!r}")


def undeclared(family: str, key: str) -> Capability:
    """What a key the family does not declare stands for: experimental, untested."""
    return experimental(f"untested: the {family!r} family does not declare {str(key)!r}")


def capability_of(capabilities: Mapping[Any, Capability], key: Any, family: str) -> Capability:
    """The capability ``key`` has in this map; :func:`undeclared` when the map does not hold it.

    ``key`` must be in the closed set (a :class:`PluginError` says otherwise), so a
    misspelt lookup in core fails loudly instead of reading "untested".
    """
    k = check_key(key, f"capability lookup on family {family!r}")
    found = capabilities.get(k.value)
    return found if found is not None else undeclared(family, k.value)
