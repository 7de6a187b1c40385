"""Every parameter tensor of a model and its PEFT wrapper, from the architecture numbers alone.

The table mirrors what transformers and peft build (names, shapes, dtypes,
which tensors train), so counts and bytes are exact for the families whose
:class:`~lmforge.plugins.descriptors.ArchSpec` describes them faithfully. Families
influence the layout through ``ArchSpec.extra``:

``linear_shapes``
    ``{module_name: [in_features, out_features]`` or ``[in, out, bias]``} for the
    linear layers of one decoder layer, in module order (default: LLaMA's
    ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``). Names such as
    ``query_key_value``/``dense``/``dense_h_to_4h``/``dense_4h_to_h`` are
    understood without it (see :data:`ROLE_ALIASES`).
``norms_per_layer`` (default 2), ``embedding_norm`` (bool), ``final_norm`` (default true)
``extra_params``
    ``[[name, numel, trainable_in_full, decay], ...]`` for anything else outside the layers
    (learned position tables are added automatically when ``position_kind == "learned"``).
``layer_params``
    ``[[name, numel, decay], ...]``: further parameters of every layer (MLA's low-rank norms).
``quantized_linear_names``
    module names 4-bit quantization leaves alone besides ``lm_head``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from lmforge.errors import ConfigError

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1, "int8": 1}

# bitsandbytes NF4 (QLoRA's default): 64 weights per absmax block; with double
# quantization the absmax values are themselves 8-bit, 256 per fp32 second-level absmax.
NF4_BLOCK = 64
NF4_NESTED_BLOCK = 256

# Roles a linear layer can play in a decoder layer, and common module names for them.
ROLE_ALIASES: dict[str, str] = {
    "q_proj": "q", "query": "q", "wq": "q",
    "k_proj": "k", "key": "k", "wk": "k",
    "v_proj": "v", "value": "v", "wv": "v",
    "query_key_value": "qkv", "qkv_proj": "qkv", "c_attn": "qkv", "Wqkv": "qkv", "W_pack": "qkv", "qkv": "qkv",
    "o_proj": "o", "dense": "o", "out_proj": "o", "wo": "o", "attn_out": "o",
    "gate_proj": "gate", "w1": "gate",
    "up_proj": "up", "w3": "up", "fc1": "up", "c_fc": "up", "dense_h_to_4h": "up",
    "gate_up_proj": "gate_up",
    "down_proj": "down", "w2": "down", "fc2": "down", "dense_4h_to_h": "down", "c_proj": "down",
    "project_q": "q", "project_k": "k", "project_v": "v", "attention_out": "o",
    "w_0": "gate", "w_1": "up", "w_out": "down",
    "q_a_proj": "q", "q_b_proj": "q", "kv_a_proj_with_mqa": "k", "kv_b_proj": "v",
}
ATTENTION_ROLES = ("q", "k", "v", "qkv", "o")
MLP_ROLES = ("gate", "up", "gate_up", "down")


@dataclass(frozen=True)
class LinearShape:
    """One linear layer of a decoder layer: module name, features, bias, role (q/k/v/qkv/o/gate/up/gate_up/down)."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    role: str


def _role_shape(arch, role: str) -> tuple[int, int, bool]:
    h, d = arch.hidden_size, arch.dim_per_head
    qd, kvd, inter = arch.num_attention_heads * d, arch.kv_heads * d, arch.intermediate_size
    ab, mb = arch.attention_bias, arch.mlp_bias
    gated = arch.mlp_kind == "gated"
    return {
        "q": (h, qd, ab), "k": (h, kvd, ab), "v": (h, kvd, ab), "qkv": (h, qd + 2 * kvd, ab), "o": (qd, h, ab),
        "gate": (h, inter, mb), "up": (h, 2 * inter if (gated and not _has_separate_gate(arch)) else inter, mb),
        "gate_up": (h, 2 * inter, mb), "down": (inter, h, mb),
    }[role]


def _has_separate_gate(arch) -> bool:
    names = arch.extra.get("linear_shapes")
    if not names:
        return True
    return any(ROLE_ALIASES.get(n) == "gate" for n in names)


def layer_linears(arch) -> list[LinearShape]:
    """The linear layers of one decoder layer, in module order."""
    given = arch.extra.get("linear_shapes")
    if given:
        out = []
        for name, spec in dict(given).items():
            spec = list(spec)
            bias = bool(spec[2]) if len(spec) > 2 else False
            out.append(LinearShape(name, int(spec[0]), int(spec[1]), bias, ROLE_ALIASES.get(name, "other")))
        return out
    names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    names += ["gate_proj", "up_proj", "down_proj"] if arch.mlp_kind == "gated" else ["up_proj", "down_proj"]
    out = []
    for name in names:
        i, o, b = _role_shape(arch, ROLE_ALIASES[name])
        out.append(LinearShape(name, i, o, b, ROLE_ALIASES[name]))
    return out


def resolve_targets(arch, targets: Any, default_targets: Sequence[str] = ()) -> list[LinearShape]:
    """The decoder-layer linears a LoRA-style method adapts.

    ``targets`` is ``"default"`` (the family's ``default_lora_targets``, or all
    linears when it has none), ``"all-linear"``, a module name or a list of
    names (also comma-separated). A name is matched as peft does, by the last
    component of the module path; names that match nothing are ignored, as peft
    does, and :class:`ConfigError` is raised when no name matches.
    """
    linears = layer_linears(arch)
    if targets in (None, "default"):
        targets = list(default_targets) or "all-linear"
    if targets in ("all-linear", "all_linear", "all"):
        return list(linears)
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    by_name = {lin.name: lin for lin in linears}
    out: list[LinearShape] = []
    for t in targets:
        t = t.split(".")[-1]
        if t in by_name:
            out.append(by_name[t])
    if not out:
        # like peft: names that match nothing are ignored, but a list that matches nothing is an error
        known = ", ".join(by_name) or "none"
        missing = [t for t in targets if t.split(".")[-1] not in by_name][0]
        raise ConfigError(f"peft.target_modules: this architecture has no linear layer {missing!r}; its linears: {known}")
    seen: dict[str, LinearShape] = {}
    for lin in out:
        seen.setdefault(lin.name, lin)
    return list(seen.values())


# --------------------------------------------------------------------------
# the table


@dataclass
class Param:
    """One parameter tensor. ``quant`` is ``"nf4"`` for a 4-bit weight (stored packed, two per byte)."""

    name: str
    numel: int
    dtype: str
    trainable: bool
    decay: bool = True
    layer: int | None = None
    quant: str | None = None

    @property
    def nbytes(self) -> int:
        if self.quant == "nf4":
            return (self.numel + 1) // 2
        return self.numel * BYTES[self.dtype]


@dataclass
class ParamTable:
    """The model's parameters plus what else is resident with them (quantization state, buffers)."""

    params: list[Param]
    quant_state_bytes: int = 0
    buffer_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def trainable(self) -> list[Param]:
        return [p for p in self.params if p.trainable]

    @property
    def trainable_params(self) -> int:
        return sum(p.numel for p in self.params if p.trainable)

    @property
    def param_bytes(self) -> int:
        return sum(p.nbytes for p in self.params) + self.quant_state_bytes

    def layer_trainable_bytes(self, layer: int | None) -> int:
        return sum(p.nbytes for p in self.params if p.trainable and p.layer == layer)


def nf4_state_bytes(numel: int, double_quant: bool = True) -> int:
    """Bytes bitsandbytes keeps beside a 4-bit weight: block absmax (8-bit + nested fp32 when double-quantized),
    the 16-entry NF4 code, and the nested code/offset."""
    blocks = math.ceil(numel / NF4_BLOCK)
    if not double_quant:
        return blocks * 4 + 16 * 4
    nested = math.ceil(blocks / NF4_NESTED_BLOCK)
    # absmax (uint8) + nested absmax (fp32) + nested code (256 fp32) + offset (fp32) + nf4 code (16 fp32)
    return blocks + nested * 4 + 256 * 4 + 4 + 16 * 4


def base_params(arch, dtype: str) -> list[Param]:
    """The base model's parameters in module order (all trainable; PEFT methods freeze later)."""
    h, V, L = arch.hidden_size, arch.vocab_size, arch.num_layers
    ln_bias = arch.norm_kind == "layernorm"
    ex = arch.extra
    out = [Param("embed_tokens.weight", V * h, dtype, True, True)]
    if arch.position_kind == "learned":
        out.append(Param("embed_positions.weight", arch.max_position_embeddings * h, dtype, True, True))
    if ex.get("embedding_norm"):
        out.append(Param("embedding_norm.weight", h, dtype, True, False))
        if ln_bias:
            out.append(Param("embedding_norm.bias", h, dtype, True, False))
    linears = layer_linears(arch)
    norms = int(ex.get("norms_per_layer", 2))
    for layer in range(L):
        for lin in linears:
            out.append(Param(f"layers.{layer}.{lin.name}.weight", lin.in_features * lin.out_features, dtype, True,
                             True, layer))
            if lin.bias:
                out.append(Param(f"layers.{layer}.{lin.name}.bias", lin.out_features, dtype, True, False, layer))
        for n in range(norms):
            out.append(Param(f"layers.{layer}.norm{n}.weight", h, dtype, True, False, layer))
            if ln_bias:
                out.append(Param(f"layers.{layer}.norm{n}.bias", h, dtype, True, False, layer))
        for item in ex.get("layer_params", ()):
            out.append(Param(f"layers.{layer}.{item[0]}", int(item[1]), dtype, True,
                             bool(item[2]) if len(item) > 2 else True, layer))
    for item in ex.get("extra_params", ()):
        name, numel = item[0], int(item[1])
        trainable = bool(item[2]) if len(item) > 2 else True
        decay = bool(item[3]) if len(item) > 3 else True
        out.append(Param(str(name), numel, dtype, trainable, decay))
    if ex.get("final_norm", True):
        out.append(Param("norm.weight", h, dtype, True, False))
        if ln_bias:
            out.append(Param("norm.bias", h, dtype, True, False))
    if not arch.tied_embeddings:
        out.append(Param("lm_head.weight", V * h, dtype, True, True))
    return out


def buffer_bytes(arch) -> int:
    """Non-parameter buffers (RoPE inverse frequencies: transformers keeps two fp32 copies)."""
    if arch.position_kind.startswith("rope"):
        return 2 * (arch.dim_per_head // 2) * 4
    return 0


def param_dtype(job) -> str:
    """Parameter storage dtype: fp32 under autocast mixed precision, else the job's dtype."""
    if job.mixed_precision != "no" and job.zero_stage == 0:
        return "fp32"
    return job.dtype


LORA_LIKE = ("lora", "dora", "qlora", "adalora")


def param_table(arch, job) -> ParamTable:
    """Every parameter of ``arch`` wrapped by ``job.peft``, with what trains.

    Exact for full, freeze, lora, dora, qlora and prefix (as transformers + peft build
    them); the other methods follow peft's layouts. Raises :class:`ConfigError`
    for an unknown method or a bad option.
    """
    method = job.peft
    opts = dict(job.peft_options or {})
    dtype = param_dtype(job)
    params = base_params(arch, dtype)
    table = ParamTable(params, buffer_bytes=buffer_bytes(arch))
    if method == "full":
        return table
    for p in params:
        p.trainable = False
    if method == "freeze":
        _freeze(arch, params, opts, table)
    elif method == "unipelt":
        _unipelt(arch, job, params, opts, table)
    elif method in LORA_LIKE:
        _lora(arch, job, params, opts, table, method)
    elif method == "prefix":
        _prefix(arch, params, opts, table)
    elif method in ("prompt", "ptuning"):
        p = int(opts.get("num_virtual_tokens") or VIRTUAL_TOKENS)
        h = arch.hidden_size
        params.append(Param("prompt_encoder.embedding.weight", p * h, "fp32", True))
        if method == "ptuning":
            hid = int(opts.get("encoder_hidden_size") or h)
            for name, i, o in (("0", h, hid), ("2", hid, hid), ("4", hid, h)):
                params.append(Param(f"prompt_encoder.mlp_head.{name}.weight", i * o, "fp32", True))
                params.append(Param(f"prompt_encoder.mlp_head.{name}.bias", o, "fp32", True, False))
    elif method == "ia3":
        targets = resolve_targets(arch, opts.get("target_modules", "default"), _ia3_defaults(arch))
        ff = set(opts.get("feedforward_modules") or [t.name for t in targets if t.role == "down"])
        for layer in range(arch.num_layers):
            for t in targets:
                n = t.in_features if t.name in ff else t.out_features
                params.append(Param(f"layers.{layer}.{t.name}.ia3_l", n, "fp32", True, True, layer))
    elif method == "bitfit":
        for p in params:
            if p.name.endswith(".bias"):
                p.trainable = True
        if not any(p.trainable for p in params):
            table.notes.append("bitfit: this architecture has no bias terms, so nothing trains")
    else:
        raise ConfigError(f"estimate: unknown PEFT method {method!r}")
    return table


def _ia3_defaults(arch) -> list[str]:
    roles = {lin.role: lin.name for lin in layer_linears(arch)}
    return [roles[r] for r in ("k", "v", "qkv", "down") if r in roles]


def _freeze(arch, params: list[Param], opts: Mapping, table: ParamTable) -> None:
    """lmforge's freeze method: the last ``trainable_layers`` blocks (negative: the first), optionally only
    some of their submodules, plus ``extra_modules`` outside the blocks (a tied lm_head is the embedding)."""
    n = opts.get("trainable_layers", opts.get("num_layers", 2))
    n = int(2 if n is None else n)
    L = arch.num_layers
    layers = set(range(L - n, L)) if n >= 0 else set(range(0, min(-n, L)))
    modules = opts.get("trainable_modules", opts.get("modules", "all")) or "all"
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",") if m.strip()]
    extra = opts.get("extra_modules") or []
    if isinstance(extra, str):
        extra = [m.strip() for m in extra.split(",") if m.strip()]
    roles = {"self_attn": ATTENTION_ROLES, "attention": ATTENTION_ROLES, "mlp": MLP_ROLES}
    if arch.tied_embeddings:
        extra = ["embed_tokens" if e in ("lm_head", "output") else e for e in extra]
    for p in params:
        if p.layer in layers:
            if "all" in modules:
                p.trainable = True
            else:
                mod = p.name.split(".")[2]
                role = ROLE_ALIASES.get(mod)
                p.trainable = any(m == mod or (role is not None and role in roles.get(m, ())) for m in modules)
        elif p.layer is None and any(p.name.split(".")[0] == _TOP_ALIASES.get(e, e) for e in extra):
            p.trainable = True


_TOP_ALIASES = {"word_embeddings": "embed_tokens", "wte": "embed_tokens", "ln_f": "norm", "final_layernorm": "norm",
                "model.norm": "norm", "model.embed_tokens": "embed_tokens"}


def _lora(arch, job, params: list[Param], opts: Mapping, table: ParamTable, method: str) -> None:
    targets = resolve_targets(arch, opts.get("target_modules", "default"), job.default_lora_targets)
    if method == "adalora":
        r = int(opts.get("init_r") or 12)
    else:
        r = int(opts.get("r") or 8)
    if r < 1:
        raise ConfigError(f"peft.r must be at least 1, got {r}")
    bias = opts.get("bias") or "none"
    use_dora = method == "dora" or bool(opts.get("use_dora"))
    target_names = {t.name for t in targets}
    if method == "qlora":
        _quantize(arch, params, job, opts, table)
    out: list[Param] = []
    for p in params:
        out.append(p)
        if bias == "all" and p.name.endswith(".bias"):
            p.trainable = True
        if p.layer is None:
            continue
        parts = p.name.split(".")
        mod, leaf = parts[2], parts[-1]
        if mod not in target_names or leaf != "weight":
            continue
        if bias == "lora_only":
            for q in params:
                if q.name == f"layers.{p.layer}.{mod}.bias":
                    q.trainable = True
        t = next(t for t in targets if t.name == mod)
        base = f"layers.{p.layer}.{mod}"
        out.append(Param(f"{base}.lora_A.weight", r * t.in_features, "fp32", True, True, p.layer))
        out.append(Param(f"{base}.lora_B.weight", t.out_features * r, "fp32", True, True, p.layer))
        if method == "adalora":
            out.append(Param(f"{base}.lora_E", r, "fp32", True, True, p.layer))
            out.append(Param(f"{base}.ranknum", 1, "fp32", False, True, p.layer))
        if use_dora:
            out.append(Param(f"{base}.lora_magnitude_vector", t.out_features, "fp32", True, True, p.layer))
    params[:] = out
    _modules_to_save(arch, params, opts)


def _modules_to_save(arch, params: list[Param], opts: Mapping) -> None:
    """peft's ``modules_to_save`` wraps a module and trains a full copy of it (the original stays frozen)."""
    names = opts.get("modules_to_save") or []
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    aliases = {"embed_tokens": "embed_tokens", "word_embeddings": "embed_tokens", "wte": "embed_tokens",
               "lm_head": "lm_head", "norm": "norm", "ln_f": "norm", "final_layernorm": "norm"}
    for n in names:
        key = aliases.get(n, n)
        copies = [Param(p.name.replace(key, key + ".modules_to_save", 1), p.numel,
                        "fp32" if p.dtype in ("bf16", "fp16") else p.dtype, True, p.decay, p.layer)
                  for p in params if p.layer is None and p.name.split(".")[0] == key]
        if not copies and key == "lm_head" and arch.tied_embeddings:
            copies = [Param("lm_head.modules_to_save.weight", arch.vocab_size * arch.hidden_size,
                            "fp32", True, True)]
        params.extend(copies)


def _quantize(arch, params: list[Param], job, opts: Mapping, table: ParamTable) -> None:
    """QLoRA: decoder-layer linear weights become NF4; the rest stays (upcast to fp32 by
    ``prepare_model_for_kbit_training`` unless ``upcast_non_quantized`` is false)."""
    double = bool(opts.get("double_quant", opts.get("bnb_4bit_use_double_quant", True)))
    keep = set(arch.extra.get("quantized_linear_names_skip", ()) or ())
    upcast = bool(opts.get("upcast_non_quantized", True))
    state = 0
    for p in params:
        parts = p.name.split(".")
        if p.layer is not None and parts[-1] == "weight" and parts[2] in {lin.name for lin in layer_linears(arch)} \
                and parts[2] not in keep:
            p.quant = "nf4"
            p.dtype = "uint8"
            state += nf4_state_bytes(p.numel, double)
        elif upcast and p.dtype in ("bf16", "fp16"):
            p.dtype = "fp32"
    table.quant_state_bytes = state
    table.notes.append("qlora: decoder linears in 4-bit NF4" + (" with double quantization" if double else "")
                       + ("; embeddings, norms and lm_head upcast to fp32 (prepare_model_for_kbit_training)" if upcast else ""))


VIRTUAL_TOKENS = 16  # lmforge's default num_virtual_tokens


def _prefix(arch, params: list[Param], opts: Mapping, table: ParamTable) -> None:
    """peft's PrefixEncoder (fp32): one embedding row of every layer's key/value prefix per virtual token,
    or an embedding plus a two-layer MLP with ``prefix_projection``."""
    p = int(opts.get("num_virtual_tokens", opts.get("prefix_tokens")) or VIRTUAL_TOKENS)
    token_dim = arch.kv_heads * arch.dim_per_head
    L = arch.num_layers
    if opts.get("prefix_projection"):
        hid = int(opts.get("encoder_hidden_size") or arch.hidden_size)
        params.append(Param("prompt_encoder.embedding.weight", p * token_dim, "fp32", True))
        params.append(Param("prompt_encoder.transform.0.weight", token_dim * hid, "fp32", True))
        params.append(Param("prompt_encoder.transform.0.bias", hid, "fp32", True, False))
        params.append(Param("prompt_encoder.transform.2.weight", hid * L * 2 * token_dim, "fp32", True))
        params.append(Param("prompt_encoder.transform.2.bias", L * 2 * token_dim, "fp32", True, False))
    else:
        params.append(Param("prompt_encoder.embedding.weight", p * L * 2 * token_dim, "fp32", True))


def iter_trainable_numels(table: ParamTable, decay: bool | None = None) -> Iterable[int]:
    for p in table.params:
        if p.trainable and (decay is None or p.decay == decay):
            yield p.numel


def _unipelt(arch, job, params: list[Param], opts: Mapping, table: ParamTable) -> None:
    """lmforge's UniPELT, in the base model's dtype: per layer a gated LoRA on each of ``lora_targets``,
    a gated key/value prefix and a gated bottleneck adapter after the feed-forward block."""
    dtype = param_dtype(job)
    targets = resolve_targets(arch, opts.get("lora_targets") or ["q_proj", "v_proj"])
    r = int(opts.get("r") or 8)
    h, a = arch.hidden_size, int(opts.get("adapter_size") or 48)
    p = int(opts.get("prefix_tokens") or 10)
    for layer in range(arch.num_layers):
        for t in targets:
            base = f"layers.{layer}.{t.name}"
            params.append(Param(f"{base}.lora_A.weight", r * t.in_features, dtype, True, True, layer))
            params.append(Param(f"{base}.lora_B.weight", t.out_features * r, dtype, True, True, layer))
            params.append(Param(f"{base}.lora_gate.weight", t.in_features, dtype, True, True, layer))
            params.append(Param(f"{base}.lora_gate.bias", 1, dtype, True, False, layer))
        kv = arch.kv_heads * arch.dim_per_head
        params.append(Param(f"layers.{layer}.prefix.prefix_key", p * kv, dtype, True, True, layer))
        params.append(Param(f"layers.{layer}.prefix.prefix_value", p * kv, dtype, True, True, layer))
        for name, n in (("prefix.prefix_gate.weight", h), ("prefix.prefix_gate.bias", 1),
                        ("adapter.adapter_down.weight", h * a), ("adapter.adapter_down.bias", a),
                        ("adapter.adapter_up.weight", a * h), ("adapter.adapter_up.bias", h),
                        ("adapter.adapter_gate.weight", h), ("adapter.adapter_gate.bias", 1)):
            params.append(Param(f"layers.{layer}.{name}", n, dtype, True, not name.endswith("bias"), layer))
