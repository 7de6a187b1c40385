"""Architecture numbers of LLaMA-style checkpoints (pure Python: no torch).

Most decoder families since LLaMA (Qwen2, Mistral, MiniCPM, ...) keep LLaMA's
``config.json`` keys: ``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, a gated
MLP, RMSNorm and RoPE. :func:`llama_arch` reads them into the
:class:`~lmforge.plugins.descriptors.ArchSpec` the memory estimator prices, so
such a family declares ``arch_from_config=llama_arch`` (or wraps it for its
own defaults).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lmforge.plugins.descriptors import ArchSpec


def llama_arch(cfg: Mapping[str, Any], *, tied_default: bool = False, attention_bias_default: bool = False,
               extra_keys: Sequence[str] = ()) -> ArchSpec:
    """:class:`ArchSpec` of a LLaMA-layout ``config.json``.

    ``tied_default``: whether embeddings are tied when the config does not say
    (``tie_word_embeddings``); ``attention_bias_default``: whether q/k/v have biases
    when the config has no ``attention_bias`` key (Qwen2's do); ``extra_keys``:
    config keys copied into ``ArchSpec.extra`` when present (muP scalings, ...).
    """
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    return ArchSpec(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=cfg.get("head_dim"),
        intermediate_size=int(cfg["intermediate_size"]),
        mlp_kind="gated",
        activation=str(cfg.get("hidden_act", "silu")),
        norm_kind="rmsnorm",
        position_kind="rope",
        attention_kind="gqa" if kv != heads else "mha",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", tied_default)),
        attention_bias=bool(cfg.get("attention_bias", attention_bias_default)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        extra={k: cfg[k] for k in extra_keys if k in cfg},
    )
