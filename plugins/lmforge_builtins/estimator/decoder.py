"""The forward pass of a decoder-only LM, replayed on :class:`~.graph.Graph`.

Two programs cover the built-in families: :func:`llama_layer` (transformers'
LLaMA-style decoders: RMSNorm with an fp32 upcast, RoPE, GQA, gated or plain MLP,
fused or split projections) and :func:`bloom_layer` (LayerNorm, ALiBi through
``baddbmm``, fused QKV, dropout-add). A family selects one with
``ArchSpec.extra["program"]`` (``"llama"``/``"bloom"``); the default follows
``position_kind`` (ALiBi -> bloom). A family with its own modeling code can
point ``extra["program"]`` at a ``"module:attr"`` layer function with the same
signature as :func:`llama_layer` (pure Python, no torch).

The result, :class:`ForwardTrace`, holds the bytes autograd saves per stage
(``embed``, ``layer0`` ... ``head``, ``loss``), what the recompute of one
checkpointed layer saves, the attention mask kept alive, and backward-time
temporaries per stage for the peak model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lmforge.plugins.descriptors import resolve_ref

from .graph import Graph, Sym, W
from .params import BYTES, LORA_LIKE, VIRTUAL_TOKENS, Param, ParamTable, layer_linears, resolve_targets


@dataclass
class Ctx:
    """What a layer program needs besides the hidden state."""

    arch: Any
    job: Any
    table: ParamTable
    b: int
    s: int
    kv_len: int
    dtype: str                  # dtype of the hidden states entering the layers
    mask: bool                  # an attention mask is materialised
    cos: Sym | None = None
    sin: Sym | None = None
    alibi: Sym | None = None
    prefix_kv: dict[int, tuple[Sym, Sym]] = field(default_factory=dict)
    q_contiguous: bool = False  # queries reach attention (b, H, s, d)-contiguous, not as a transposed view
    lora: dict[str, dict] = field(default_factory=dict)  # module name -> {r, dropout, dora}
    weights: dict[str, Param] = field(default_factory=dict)  # name -> Param

    def w(self, name: str) -> W:
        p = self.weights.get(name)
        if p is None:
            return W(False, self.dtype)
        return W(p.trainable, "uint8" if p.quant else p.dtype, p.quant)

    def trainable(self, name: str) -> bool:
        p = self.weights.get(name)
        return bool(p and p.trainable)


@dataclass
class ForwardTrace:
    saved_by_stage: dict[str, int]
    order: list[str]                # stages in forward order ("embed", "layer0.attn", "layer0.mlp", ..., "loss")
    layer_saved: list[int]          # bytes a layer's forward saves (non-checkpointed)
    recompute_bytes: int            # largest layer's saved bytes when recomputed under checkpointing
    recompute_by_stage: dict[str, int]
    loss_saved: int                 # log-probabilities + labels saved by the loss
    held_bytes: int                 # tensors kept alive but not saved (mask, RoPE tables under checkpointing)
    mask_bytes: int
    backward_temp: dict[str, int]
    extra_temp: dict[str, int]
    forward_temp: dict[str, int]
    logits_numel: int
    hidden_dtype: str

    @property
    def total(self) -> int:
        return sum(self.saved_by_stage.values())


def dropout_p(arch, key: str) -> float:
    return float(arch.extra.get(key, 0.0) or 0.0)


def _rmsnorm_glm2(g: Graph, x: Sym, w: W) -> Sym:
    var = g.mean_last(g.pow2(g.cast(x, "fp32")))
    r = g.rsqrt(g.scalar(var))
    hs = g.mul(x, r, shape=x.shape)          # promotes to fp32
    return g.cast(g.mul_param(hs, w), x.dtype)


def _rmsnorm_minicpm(g: Graph, x: Sym, w: W) -> Sym:
    var = g.mean_last(g.pow2(g.cast(x, "fp32")))
    r = g.rsqrt(g.scalar(var))
    hn = g.cast(g.mul(x, r, shape=x.shape), x.dtype)  # x * rsqrt saves x itself, in its own dtype
    return g.mul_param(hn, w)


def _rmsnorm(g: Graph, x: Sym, w: W) -> Sym:
    xf = g.cast(x, "fp32")
    var = g.mean_last(g.pow2(xf))
    r = g.rsqrt(g.scalar(var))
    hn = g.mul(xf, r, shape=xf.shape)
    hn = g.cast(hn, x.dtype)
    return g.mul_param(hn, w)


def norm(g: Graph, ctx: Ctx, x: Sym, name: str) -> Sym:
    w = ctx.w(name + ".weight")
    if ctx.arch.norm_kind == "layernorm":
        bias_t = ctx.trainable(name + ".bias")
        return g.layer_norm(x, W(w.trainable or bias_t, w.dtype))
    if ctx.arch.extra.get("rmsnorm") == "glm2":
        return _rmsnorm_glm2(g, x, w)
    if ctx.arch.extra.get("rmsnorm") == "minicpm":
        return _rmsnorm_minicpm(g, x, w)
    return _rmsnorm(g, x, w)


def proj(g: Graph, ctx: Ctx, x: Sym, layer: int, name: str, out_features: int) -> Sym:
    """A linear layer of a decoder layer, with its LoRA/DoRA adapter when targeted (as peft runs it)."""
    key = f"layers.{layer}.{name}"
    w = ctx.w(key + ".weight")
    if g.autocast is None and not w.quant and x.dtype != w.dtype:
        x = g.cast(x, w.dtype)
    result = g.linear(x, out_features, w, bias_trainable=ctx.trainable(key + ".bias"))
    ad = ctx.lora.get(name)
    if ad is None:
        return result
    # peft casts the input to the adapter's (fp32) dtype, under autocast too
    xa = g.cast(x, "fp32")
    if xa is not x and xa.rg:
        # backward: the adapter's fp32 input gradient and its cast back
        g.temp_extra(xa.numel * (4 + BYTES[x.dtype]))
    xd = g.dropout(xa, ad["dropout"])
    a = g.linear(xd, ad["r"], W(True, "fp32"))
    bo = g.linear(a, out_features, W(True, "fp32"))
    if ad.get("dora"):
        # DoRA rescales the base output by magnitude / ||W + BA||: the weight norm is computed
        # without grad, the rescaled base output is saved by the magnitude product.
        g.save(result)
    out = g.add(result, g.scalar(bo))
    return g.cast(out, result.dtype)


def attention_core(g: Graph, ctx: Ctx, q: Sym, k: Sym, v: Sym, layer: int) -> Sym:
    """softmax(q k^T) v by the job's kernel; returns (b, s, H*d) ready for the output projection."""
    arch, job = ctx.arch, ctx.job
    b, s, H, kv, d = ctx.b, ctx.s, arch.num_attention_heads, arch.kv_heads, arch.dim_per_head
    kv_len = k.shape[2]
    n_rep = H // kv
    p_attn = dropout_p(arch, "attention_dropout")
    kernel = arch.extra.get("attn_kernel") or job.attn
    if arch.extra.get("kv_repeat") == "always" and n_rep > 1:
        k = g.new((b, H, kv_len, d), k.dtype, k.rg)
        v = g.new((b, H, kv_len, d), v.dtype, v.rg)
        n_rep = 1
    if kernel == "eager":
        kr = k if n_rep == 1 else g.new((b, H, kv_len, d), k.dtype, k.rg)
        vr = v if n_rep == 1 else g.new((b, H, kv_len, d), v.dtype, v.rg)
        scores = g.scalar(g.matmul(q, kr, (b, H, s, kv_len)))
        # the scaled scores and their masked copy coexist while the mask is added
        n, e = b * H * s * kv_len, BYTES[scores.dtype]
        # softmax(dtype=float32) of 16-bit scores first makes an fp32 copy of its input, while the
        # 16-bit copy of the probabilities (counted with the layer's tensors) does not exist yet
        g.fwd_temp(2 * n * e + (4 * n - n * e if e != 4 else 0))
        w = g.softmax(scores, dtype="fp32")
        w = g.cast(w, q.dtype if g.autocast is None else ("fp32" if q.dtype == "fp32" else q.dtype))
        w = g.dropout(w, p_attn)
        o = g.matmul(w, vr, (b, H, s, d))
        # backward: the fp32 gradient of the probabilities next to the scores' gradient (in the scores' dtype)
        g.temp(b * H * s * kv_len * (4 + BYTES[q.dtype if g.autocast is None else g.autocast]))
        return g.copy(g.view(o, (b, s, H * d)))
    rg = q.rg or k.rg or v.rg
    qc, kc, vc = g._ac(q), g._ac(k), g._ac(v)
    e = BYTES[qc.dtype]
    if kernel == "flash" or (job.device == "cuda" and not ctx.mask):
        # FlashAttention (flash-attn 2, or SDPA's flash backend): GQA-native, no mask, no s^2 matrix
        out = g.new((b, s, H * d), qc.dtype, rg)
        if rg:
            g.save(qc, kc, vc, out, g.new((b, H, s), "fp32"), g.new((2,), "int64"))
        g.temp(3 * b * s * H * d * e)
        return out
    if ctx.mask:
        # transformers repeats K/V when a mask is passed (GQA kernels need no mask)
        if n_rep > 1:
            kc = g.new((b, H, kv_len, d), kc.dtype, kc.rg)
            vc = g.new((b, H, kv_len, d), vc.dtype, vc.rg)
    out = g.new((b, s, H * d), qc.dtype, rg)
    if rg:
        g.save(qc, kc, vc, out)
        if job.device == "cuda":
            # memory-efficient kernel: additive bias converted from the boolean mask each call,
            # padded to a multiple of 16 keys; logsumexp padded to 32 queries; philox seed/offset
            g.save(g.new((b, 1, s, -(-kv_len // 16) * 16), qc.dtype), g.new((b, H, -(-s // 32) * 32), "fp32"),
                   g.new((2,), "int64"))
        else:
            g.save(g.new((b, H, s), "fp32"))
            if ctx.mask:
                g.save(g.new((b, 1, s, kv_len), qc.dtype))
    g.temp(3 * b * s * H * d * e)
    if ctx.q_contiguous:
        # the kernel's output follows the query's layout; a (b, H, s, d)-contiguous query (partial
        # rotary ends in a cat) means the (b, s, H*d) view for the output projection is a copy
        return g.copy(out)
    return out


def rope(g: Graph, ctx: Ctx, x: Sym) -> Sym:
    if ctx.sin is None:  # one interleaved (cos, sin) table: every product saves a view of it
        return g.mul(x, ctx.cos, shape=x.shape)
    a = g.mul(x, ctx.cos, shape=x.shape)
    rot = g.new(x.shape, x.dtype, x.rg)  # rotate_half: slices, neg, cat (nothing saved)
    c = g.mul(rot, ctx.sin, shape=x.shape)
    return g.add(a, c)


def llama_layer(g: Graph, ctx: Ctx, x: Sym, layer: int) -> Sym:
    """One transformers LLaMA-style decoder layer (pre-norm, RoPE, gated or plain MLP)."""
    arch = ctx.arch
    b, s, H, kv, d = ctx.b, ctx.s, arch.num_attention_heads, arch.kv_heads, arch.dim_per_head
    linears = {lin.role: lin for lin in layer_linears(arch)}
    base = g.stage
    g.stage = base + ".attn"
    residual = x
    n1 = norm(g, ctx, x, f"layers.{layer}.norm0")
    if "qkv" in linears:
        lin = linears["qkv"]
        qkv = proj(g, ctx, n1, layer, lin.name, lin.out_features)
        q = g.view(qkv, (b, H, s, d))
        k = g.view(qkv, (b, kv, s, d))
        v = g.view(qkv, (b, kv, s, d))
    else:
        q = g.view(proj(g, ctx, n1, layer, linears["q"].name, H * d), (b, H, s, d))
        k = g.view(proj(g, ctx, n1, layer, linears["k"].name, kv * d), (b, kv, s, d))
        v = g.view(proj(g, ctx, n1, layer, linears["v"].name, kv * d), (b, kv, s, d))
    if ctx.cos is not None:
        q, k = rope(g, ctx, q), rope(g, ctx, k)
    if layer in ctx.prefix_kv:
        pk, pv = ctx.prefix_kv[layer]
        p = pk.shape[2]
        k = g.cat([g.cast(pk, k.dtype), k], (b, kv, p + s, d))
        v = g.cat([g.cast(pv, v.dtype), v], (b, kv, p + s, d))
    attn = attention_core(g, ctx, q, k, v, layer)
    o = proj(g, ctx, attn, layer, linears["o"].name, arch.hidden_size)
    o = g.dropout(o, dropout_p(arch, "hidden_dropout"))
    x = g.add(residual, o)
    residual = x
    g.stage = base + ".mlp"
    n2 = norm(g, ctx, x, f"layers.{layer}.norm1")
    inter = arch.intermediate_size
    e = BYTES[x.dtype if g.autocast is None else g.autocast]
    if "gate_up" in linears:
        gu = proj(g, ctx, n2, layer, linears["gate_up"].name, 2 * inter)
        gate, up = g.view(gu, (b, s, inter)), g.view(gu, (b, s, inter))
        m = g.mul(g.act(gate, arch.activation), up)
    elif "gate" in linears:
        gate = proj(g, ctx, n2, layer, linears["gate"].name, inter)
        a = g.act(gate, arch.activation)
        up = proj(g, ctx, n2, layer, linears["up"].name, inter)
        m = g.mul(a, up)
    elif arch.mlp_kind == "gated":
        gu = proj(g, ctx, n2, layer, linears["up"].name, 2 * inter)
        gate, up = g.view(gu, (b, s, inter)), g.view(gu, (b, s, inter))
        m = g.mul(g.act(gate, arch.activation), up)
    else:
        m = g.act(proj(g, ctx, n2, layer, linears["up"].name, inter), arch.activation)
    down = proj(g, ctx, m, layer, linears["down"].name, arch.hidden_size)
    down = g.dropout(down, dropout_p(arch, "hidden_dropout"))
    # backward: two intermediate-size gradients beyond what the stage saved, plus the hidden gradients
    g.temp(2 * b * s * inter * e)
    out = g.add(residual, down)
    g.stage = base
    return out


def bloom_layer(g: Graph, ctx: Ctx, x: Sym, layer: int) -> Sym:
    """One transformers BLOOM block: LayerNorm, fused QKV, ALiBi via baddbmm, GELU MLP, dropout-add."""
    arch = ctx.arch
    b, s, H, d = ctx.b, ctx.s, arch.num_attention_heads, arch.dim_per_head
    linears = {lin.role: lin for lin in layer_linears(arch)}
    base = g.stage
    g.stage = base + ".attn"
    ln1 = norm(g, ctx, x, f"layers.{layer}.norm0")
    residual = ln1 if arch.extra.get("residual_post_layernorm") else x
    lin = linears.get("qkv")
    qkv = proj(g, ctx, ln1, layer, lin.name if lin else "query_key_value", 3 * H * d)
    # transformers splits qkv with a view, then transposes/reshapes q, k, v into new (b*H, s, d) tensors;
    # with one sample the reshape is still a view of the fused output
    if b == 1:
        q, k, v = (g.view(qkv, (H, s, d)) for _ in range(3))
    else:
        q = g.new((b * H, s, d), qkv.dtype, qkv.rg)
        k = g.new((b * H, s, d), qkv.dtype, qkv.rg)
        v = g.new((b * H, s, d), qkv.dtype, qkv.rg)
    kv_len = s
    if layer in ctx.prefix_kv:
        pk, pv = ctx.prefix_kv[layer]
        kv_len = s + pk.shape[2]
        k = g.cat([g.cast(pk, k.dtype), k], (b * H, kv_len, d))
        v = g.cat([g.cast(pv, v.dtype), v], (b * H, kv_len, d))
    # baddbmm(alibi, q, k^T): saves q and k^T like a matmul
    scores = g.matmul(q, k, (b, H, s, kv_len))
    # the raw and the masked scores are both referenced until the attention returns; the block returns its
    # probabilities, which stay referenced while the next block runs (saved anyway without checkpointing)
    n, e = b * H * s * kv_len, BYTES[scores.dtype]
    ckpt = ctx.job.gradient_checkpointing
    # softmax(dtype=float32) of 16-bit scores first makes an fp32 copy of its input, while the 16-bit copy
    # of the probabilities (counted with the layer's tensors) does not exist yet
    upcast = 4 * n - n * e if e != 4 else 0
    g.fwd_temp(2 * n * e + upcast + (n * e if ckpt else 0))
    w = g.softmax(scores, dtype="fp32")
    w = g.cast(w, x.dtype if g.autocast is None else g.autocast)
    w = g.dropout(w, dropout_p(arch, "attention_dropout"))
    o = g.matmul(w, v, (b * H, s, d))
    g.temp(b * H * s * kv_len * (4 + BYTES[w.dtype]))
    ctx_layer = g.new((b, s, H * d), o.dtype, o.rg)  # _merge_heads: permute + reshape (a copy)
    dense = proj(g, ctx, ctx_layer, layer, linears["o"].name if "o" in linears else "dense", arch.hidden_size)
    dense = g.dropout(dense, dropout_p(arch, "hidden_dropout"))
    x = g.add(dense, residual)
    g.stage = base + ".mlp"
    ln2 = norm(g, ctx, x, f"layers.{layer}.norm1")
    residual = ln2 if arch.extra.get("residual_post_layernorm") else x
    up = proj(g, ctx, ln2, layer, linears["up"].name if "up" in linears else "dense_h_to_4h", arch.intermediate_size)
    a = g.act(up, "gelu")
    down = proj(g, ctx, a, layer, linears["down"].name if "down" in linears else "dense_4h_to_h", arch.hidden_size)
    down = g.dropout(down, dropout_p(arch, "hidden_dropout"))
    g.temp(2 * b * s * arch.intermediate_size * BYTES[x.dtype])
    out = g.add(down, residual)
    g.stage = base
    return out


PROGRAMS: dict[str, Callable] = {"llama": llama_layer, "bloom": bloom_layer}


def layer_program(arch) -> Callable:
    prog = arch.extra.get("program")
    if prog is None:
        prog = "bloom" if arch.position_kind == "alibi" else "llama"
    if prog in PROGRAMS:
        return PROGRAMS[prog]
    return resolve_ref(prog)


def lora_plan(arch, job) -> dict[str, dict]:
    opts = dict(job.peft_options or {})
    if job.peft == "unipelt":
        opts = {"r": opts.get("r", 8), "dropout": opts.get("dropout", 0.0),
                "target_modules": opts.get("lora_targets") or ["q_proj", "v_proj"]}
    elif job.peft not in LORA_LIKE:
        return {}
    r = int(opts.get("init_r") or 12) if job.peft == "adalora" else int(opts.get("r") or 8)
    drop = opts.get("dropout", opts.get("lora_dropout", 0.05))
    drop = float(0.05 if drop is None else drop)
    dora = job.peft == "dora" or bool(opts.get("use_dora"))
    targets = resolve_targets(arch, opts.get("target_modules", "default"), job.default_lora_targets)
    return {t.name: {"r": r, "dropout": drop, "dora": dora} for t in targets}


def trace_forward(arch, job, table: ParamTable) -> ForwardTrace:
    """Replay one training forward pass of micro-batch ``job.micro_batch`` x ``job.seq_len``."""
    autocast = job.mixed_precision if (job.mixed_precision != "no" and job.zero_stage == 0) else None
    g = Graph(device=job.device, autocast=autocast)
    opts = dict(job.peft_options or {})
    b = job.micro_batch
    virtual = int(opts.get("num_virtual_tokens") or VIRTUAL_TOKENS) if job.peft in ("prompt", "ptuning") else 0
    s = job.seq_len + virtual
    prefix = (int(opts.get("num_virtual_tokens") or VIRTUAL_TOKENS) if job.peft == "prefix"
              else int(opts.get("prefix_tokens") or 10) if job.peft == "unipelt" else 0)
    weights = {p.name: p for p in table.params}
    emb = weights["embed_tokens.weight"]
    hdt = emb.dtype
    mask = job.attn != "flash" and (job.padding or prefix > 0 or job.attn == "eager")
    ctx = Ctx(arch, job, table, b, s, s + prefix, hdt, mask, lora=lora_plan(arch, job), weights=weights)
    ckpt = job.gradient_checkpointing

    # ---- embeddings
    g.stage = "embed"
    ids = g.new((b, job.seq_len), "int64")
    x = g.embedding(ids, arch.hidden_size, ctx.w("embed_tokens.weight"))
    if virtual:
        prompts = g.new((b, virtual, arch.hidden_size), hdt, True)
        if job.peft == "ptuning":
            g.save(g.new((b, virtual, int(opts.get("encoder_hidden_size") or arch.hidden_size)), "fp32"))
        x = g.cat([x, g.cast(prompts, x.dtype)], (b, s, arch.hidden_size))
    if ckpt and job.peft != "full" and not x.rg:
        x = g.view(x, rg=True)  # enable_input_require_grads: checkpointed layers need an input that requires grad
    if arch.position_kind == "learned":
        x = g.add(x, g.embedding(g.new((1, s), "int64"), arch.hidden_size, ctx.w("embed_positions.weight")))
    if arch.extra.get("embedding_norm"):
        x = norm(g, ctx, x, "embedding_norm")
    if prefix:
        token_dim = arch.kv_heads * arch.dim_per_head
        pids = g.view(g.new((1, prefix), "int64"), (b, prefix))  # peft expands one row of prompt-token ids
        pkv = g.embedding(pids, arch.num_layers * 2 * token_dim, W(True, "fp32"))
        if opts.get("prefix_projection"):
            hid = int(opts.get("encoder_hidden_size") or arch.hidden_size)
            t = g.act(g.linear(g.embedding(pids, token_dim, W(True, "fp32")), hid, W(True, "fp32")), "tanh")
            pkv = g.linear(t, arch.num_layers * 2 * token_dim, W(True, "fp32"))
        pkv = g.cast(pkv, hdt)
        for layer in range(arch.num_layers):
            pk = g.view(pkv, (b, arch.kv_heads, prefix, arch.dim_per_head))
            ctx.prefix_kv[layer] = (pk, g.view(pkv, (b, arch.kv_heads, prefix, arch.dim_per_head)))
    if arch.position_kind.startswith("rope"):
        frac = float(arch.extra.get("partial_rotary_factor", arch.extra.get("rotary_fraction", 1.0)))
        rot = int(arch.dim_per_head * frac)
        if arch.extra.get("rope_saved") == "cache":
            ctx.cos = g.new((b, s, rot // 2, 2), hdt)
        else:
            ctx.cos = g.new((1, 1, s, rot), hdt)
            ctx.sin = g.new((1, 1, s, rot), hdt)
            ctx.q_contiguous = rot < arch.dim_per_head
    kernel = arch.extra.get("attn_kernel") or job.attn
    if kernel == "eager" or arch.extra.get("attn_kernel"):
        mask = job.padding or prefix > 0 or kernel == "eager"
    ctx.mask = mask
    mask_dtype = "bool" if kernel == "sdpa" else hdt
    mask_bytes = b * s * ctx.kv_len * BYTES[mask_dtype] if mask else 0

    program = layer_program(arch)
    layer_saved: list[int] = []
    recompute = 0
    recompute_by_stage: dict[str, int] = {}
    for layer in range(arch.num_layers):
        g.stage = f"layer{layer}"
        before = g.total()
        if ckpt:
            # the checkpoint saves the layer's input; the layer runs again in backward
            sub = Graph(device=job.device, autocast=autocast)
            sub.stage = g.stage
            out = program(sub, ctx, x, layer)
            recompute = max(recompute, sub.total())
            subs = [st for st in sub.order if st.startswith(f"layer{layer}.")] or [f"layer{layer}"]
            sub_saved = sub.by_stage()
            if x.storage.id in sub.saved:  # the recompute re-saves the checkpointed input itself
                nbytes, st0 = sub.saved[x.storage.id]
                sub_saved[st0] -= nbytes
            for st in subs:
                g.stage = st
                recompute_by_stage[st] = sub_saved.get(st, 0)
                g.peak_temp[st] = sub.peak_temp.get(st, 0)
                g.extra_temp[st] = sub.extra_temp.get(st, 0)
                # inside the checkpointed forward the layer's intermediates still exist while it runs
                g.forward_temp[st] = sub.forward_temp.get(st, 0) + sub_saved.get(st, 0)
            g.stage = subs[0]  # freed when the first part's backward (the last to run) is done
            g.save(x)
            x = g.new(out.shape, out.dtype, out.rg)
        else:
            x = program(g, ctx, x, layer)
        layer_saved.append(g.total() - before)

    # ---- head and loss
    g.stage = "head"
    if arch.extra.get("final_norm", True):
        x = norm(g, ctx, x, "norm")
    head = ctx.w("lm_head.weight") if "lm_head.weight" in weights else ctx.w("embed_tokens.weight")
    if g.autocast is None and x.dtype != head.dtype:
        x = g.cast(x, head.dtype)
    logits = g.linear(x, arch.vocab_size, head)
    g.stage = "loss"
    before = g.total()
    lf = g.cast(logits, "fp32")
    logp = g.new(lf.shape, "fp32", lf.rg)
    if lf.rg:
        # labels are padded by one and shifted; a single row's slice is already contiguous (no copy)
        labels = g.new((b, s + 1), "int64") if b == 1 else g.new((b, s), "int64")
        g.save(logp, labels, g.new((), "fp32"))
    loss_saved = g.total() - before

    held = 0
    if ckpt:
        # the layers' keyword arguments (mask, RoPE tables) stay referenced until the last recompute
        held = mask_bytes + sum(t.nbytes for t in (ctx.cos, ctx.sin) if t is not None)
    return ForwardTrace(
        saved_by_stage=g.by_stage(),
        order=list(g.order),
        layer_saved=layer_saved,
        recompute_bytes=recompute,
        recompute_by_stage=recompute_by_stage,
        loss_saved=loss_saved,
        held_bytes=held,
        mask_bytes=mask_bytes,
        backward_temp=dict(g.peak_temp),
        extra_temp=dict(g.extra_temp),
        forward_temp=dict(g.forward_temp),
        logits_numel=b * s * arch.vocab_size,
        hidden_dtype=hdt,
    )
