"""UniPELT (Mao et al., ACL 2022): LoRA, prefix tuning and a bottleneck adapter, each behind a learned gate.

peft has no UniPELT, so it is written here. In every transformer block:

- **LoRA** on the query and value projections (``lora_targets``):
  ``h = W x + G_L(x) * B A x * alpha / r`` with ``G_L(x) = sigmoid(w_L . x + b_L)``;
- **prefix tuning**: ``prefix_tokens`` trained key/value vectors prepended to the
  attention's keys and values, both scaled by ``G_P = sigmoid(w_P . x + b_P)``,
  where ``x`` is the attention input of the query token;
- **bottleneck adapter** after the feed-forward block (``ffn_module``):
  ``h = f + G_A(f) * up(act(down(f)))`` with ``G_A(f) = sigmoid(w_A . f + b_A)``.

Gates are per token. The paper pools the prefix gate over the sequence (its models
are encoders); a causal LM must not look at later tokens, so each query token
gates the prefix with its own input. LoRA ``B``, the adapter's up projection and
the gates' weights start at zero (the gates at 0.5), so at step 0 only the
prefix changes the model.

The gated prefix enters the softmax together with the ordinary keys, which is
not expressible as past key/values: the attention runs through an attention
function registered in transformers' ``AttentionInterface`` (``lmforge_unipelt``,
eager math). A model whose attention does not dispatch through that interface is
refused by :func:`apply` after a probe forward pass.

Saves only the UniPELT tensors (``trained_weights.safetensors``) plus
``lmforge_peft.json``; reloading rebuilds the structure and loads them.
"""

from __future__ import annotations

import math

from lmforge.errors import CapabilityError, ConfigError
from lmforge.plugins.descriptors import Option

from .checks import fraction, positive, recheck
from .common import (decoder_layers, inputs_require_grads, load_trained_tensors, match_module_name, options_of,
                     save_trained_tensors, trained_tensors_method)

ATTENTION_NAME = "lmforge_unipelt"
_ACTIVATIONS = ("relu", "gelu", "silu", "tanh")

OPTIONS = (
    Option("r", int, 8, "LoRA rank"),
    Option("alpha", float, 16.0, "LoRA scaling numerator (alpha / r)"),
    Option("dropout", float, 0.0, "dropout on the LoRA input"),
    Option("lora_targets", list, ["q_proj", "v_proj"], "linear layers that get a gated LoRA update"),
    Option("prefix_tokens", int, 10, "prefix length per layer"),
    Option("adapter_size", int, 48, "bottleneck width of the adapter after the feed-forward block"),
    Option("adapter_act", str, "relu", "adapter activation", choices=_ACTIVATIONS),
    Option("ffn_module", str, "mlp", "name of the feed-forward module inside each block"),
    Option("attention_module", str, "auto",
           "name of the attention module inside each block (auto: the one whose class is an Attention)"),
)


def check(options, config) -> None:
    positive(options, "r", "prefix_tokens", "adapter_size")
    fraction(options, "dropout")
    if not options["lora_targets"]:
        raise ValueError("peft.lora_targets: needs at least one linear layer (the paper uses [q_proj, v_proj])")


def _nn():
    import torch
    import torch.nn as nn

    return torch, nn


# --------------------------------------------------------------------------
# the three gated modules (classes built lazily: no torch import at registration)

_CLASSES: dict = {}


def _classes():
    if _CLASSES:
        return _CLASSES
    torch, nn = _nn()

    def zero_gate(dim: int) -> nn.Linear:
        gate = nn.Linear(dim, 1)
        nn.init.zeros_(gate.weight)
        nn.init.zeros_(gate.bias)
        return gate

    class GatedLoRALinear(nn.Module):
        """A frozen linear layer plus a gated low-rank update."""

        def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float) -> None:
            super().__init__()
            self.base_layer = base_layer
            w = base_layer.weight
            self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, dtype=w.dtype, device=w.device)
            self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, dtype=w.dtype, device=w.device)
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)
            self.lora_gate = zero_gate(base_layer.in_features).to(dtype=w.dtype, device=w.device)
            self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.scaling = alpha / r

        @property
        def weight(self):
            return self.base_layer.weight

        @property
        def bias(self):
            return self.base_layer.bias

        @property
        def in_features(self) -> int:
            return self.base_layer.in_features

        @property
        def out_features(self) -> int:
            return self.base_layer.out_features

        def forward(self, x):
            gate = torch.sigmoid(self.lora_gate(x))
            update = self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
            return self.base_layer(x) + gate * update

    class GatedAdapter(nn.Module):
        """The feed-forward block followed by a gated bottleneck adapter (residual)."""

        def __init__(self, base_layer: nn.Module, hidden: int, size: int, act: str, dtype, device) -> None:
            super().__init__()
            self.base_layer = base_layer
            self.adapter_down = nn.Linear(hidden, size, dtype=dtype, device=device)
            self.adapter_up = nn.Linear(size, hidden, dtype=dtype, device=device)
            nn.init.zeros_(self.adapter_up.weight)
            nn.init.zeros_(self.adapter_up.bias)
            self.adapter_gate = zero_gate(hidden).to(dtype=dtype, device=device)
            self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU(), "tanh": nn.Tanh()}[act]

        def forward(self, hidden_states, *args, **kwargs):
            out = self.base_layer(hidden_states, *args, **kwargs)
            rest = None
            if isinstance(out, tuple):  # FFNs that also return e.g. router logits
                out, rest = out[0], out[1:]
            gate = torch.sigmoid(self.adapter_gate(out))
            out = out + gate * self.adapter_up(self.act(self.adapter_down(out)))
            return (out, *rest) if rest is not None else out

    class GatedPrefix(nn.Module):
        """Trained key/value prefixes of one attention layer and their gate.

        A forward pre-hook on the attention module computes the gate from the
        attention input; :func:`unipelt_attention` reads it.
        """

        def __init__(self, kv_heads: int, head_dim: int, tokens: int, hidden: int, dtype, device) -> None:
            super().__init__()
            self.prefix_key = nn.Parameter(torch.randn(kv_heads, tokens, head_dim, dtype=dtype, device=device) * 0.02)
            self.prefix_value = nn.Parameter(torch.randn(kv_heads, tokens, head_dim, dtype=dtype, device=device) * 0.02)
            self.prefix_gate = zero_gate(hidden).to(dtype=dtype, device=device)
            self.current_gate = None
            self.calls = 0

        def capture(self, module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self.current_gate = torch.sigmoid(self.prefix_gate(hidden))  # (batch, q, 1)

    _CLASSES.update(GatedLoRALinear=GatedLoRALinear, GatedAdapter=GatedAdapter, GatedPrefix=GatedPrefix)
    return _CLASSES


# --------------------------------------------------------------------------
# attention with gated prefixes


def unipelt_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention over ``[gated prefix; keys]``; the ``AttentionInterface`` signature.

    ``query`` is (batch, heads, q, dim); ``key``/``value`` (batch, kv_heads, kv, dim).
    Returns ``(output (batch, q, heads, dim), weights)``.
    """
    torch, nn = _nn()
    heads, kv_heads = query.shape[1], key.shape[1]
    groups = heads // kv_heads
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :kv_len]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    elif q_len > 1:
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    prefix = getattr(module, "unipelt_prefix", None)
    if prefix is None:
        weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = nn.functional.dropout(weights, p=dropout, training=module.training)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights
    prefix.calls += 1
    gate = prefix.current_gate.unsqueeze(1).to(query.dtype)  # (batch, 1, q, 1)
    pk = prefix.prefix_key.repeat_interleave(groups, dim=0).to(query.dtype)  # (heads, n, dim)
    pv = prefix.prefix_value.repeat_interleave(groups, dim=0).to(query.dtype)
    n = pk.shape[1]
    prefix_scores = torch.matmul(query, pk.transpose(-1, -2)) * scaling * gate  # (batch, heads, q, n)
    weights = nn.functional.softmax(torch.cat([prefix_scores, scores], dim=-1), dim=-1, dtype=torch.float32)
    weights = nn.functional.dropout(weights.to(query.dtype), p=dropout, training=module.training)
    out = torch.matmul(weights[..., :n], pv) * gate + torch.matmul(weights[..., n:], value)
    return out.transpose(1, 2).contiguous(), weights


def register_attention() -> None:
    """Make ``lmforge_unipelt`` a valid ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, unipelt_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


# --------------------------------------------------------------------------
# building


def _attention_module(layer, name: str):
    if name != "auto":
        hits = [m for n, m in layer.named_modules() if n and match_module_name(n, name)]
        if not hits:
            raise ConfigError(f"peft.attention_module: {name!r} matches no module of the transformer block")
        return hits[0]
    for n, m in layer.named_modules():
        if n and "attention" in type(m).__name__.lower():
            return m
    raise ConfigError("peft.attention_module: no module whose class name contains 'Attention' in the "
                      "transformer block; name it with peft.attention_module")


def _kv_shape(config) -> tuple[int, int]:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(kv), int(head_dim)


def build(model, options: dict):
    """Insert the gated LoRA, prefix and adapter modules; freeze everything else. Returns the model."""
    torch, nn = _nn()
    cls = _classes()
    recheck(check, options, {})
    for p in model.parameters():
        p.requires_grad_(False)
    layers_name, layers = decoder_layers(model)
    hidden = model.config.hidden_size
    kv_heads, head_dim = _kv_shape(model.config)
    ref = next(p for p in model.parameters() if p.is_floating_point())
    for i, layer in enumerate(layers):
        for pat in options["lora_targets"]:
            hits = [(n, m) for n, m in layer.named_modules()
                    if n and match_module_name(n, pat) and isinstance(m, nn.Linear)]
            if not hits:
                raise ConfigError(f"peft.lora_targets: {pat!r} matches no linear layer in block {i}")
            for n, m in hits:
                layer.set_submodule(n, cls["GatedLoRALinear"](m, options["r"], options["alpha"], options["dropout"]))
        ffn_hits = [(n, m) for n, m in layer.named_modules() if n and match_module_name(n, options["ffn_module"])]
        if not ffn_hits:
            children = ", ".join(n for n, _ in layer.named_children())
            raise ConfigError(f"peft.ffn_module: {options['ffn_module']!r} matches no module of block {i} "
                              f"(its children: {children})")
        n, ffn = ffn_hits[0]
        layer.set_submodule(n, cls["GatedAdapter"](ffn, hidden, options["adapter_size"], options["adapter_act"],
                                                  ref.dtype, ref.device))
        attn = _attention_module(layer, options["attention_module"])
        prefix = cls["GatedPrefix"](kv_heads, head_dim, options["prefix_tokens"], hidden, ref.dtype, ref.device)
        attn.unipelt_prefix = prefix
        attn.register_forward_pre_hook(prefix.capture, with_kwargs=True)
    register_attention()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION_NAME)
    else:
        model.config._attn_implementation = ATTENTION_NAME
    _probe(model, layers)
    return model


def _probe(model, layers) -> None:
    """Run two tokens through the model and check every block's attention used the gated prefix."""
    torch, _ = _nn()
    prefixes = [m for m in layers.modules() if hasattr(m, "prefix_key")]
    for p in prefixes:
        p.calls = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device),
                  use_cache=False)
    finally:
        model.train(was_training)
    missed = sum(1 for p in prefixes if p.calls == 0)
    if missed:
        raise CapabilityError(
            f"peft.method: unipelt needs attention that dispatches through transformers' AttentionInterface; "
            f"{missed} of {len(prefixes)} blocks of {type(model).__name__} bypass it (use lora, prefix or ia3)"
        )
    for p in prefixes:
        p.current_gate = None


# --------------------------------------------------------------------------
# the PeftMethod entry points


def apply(model, options, ctx):
    model = build(model, options)  # the inserted modules are the only parameters left trainable
    inputs_require_grads(model, ctx)
    return model


def save(model, tokenizer, out_dir, ctx):
    save_trained_tensors(model, tokenizer, out_dir, "unipelt", options_of(ctx))


def load(base_model, run_dir, options):
    model = build(base_model, options)
    load_trained_tensors(model, run_dir, "unipelt")
    return model


UNIPELT = trained_tensors_method(
    __name__, name="unipelt", options=OPTIONS,
    description="UniPELT: gated LoRA (q, v) + gated prefix tuning + gated bottleneck adapter in every block")

METHODS = (UNIPELT,)
