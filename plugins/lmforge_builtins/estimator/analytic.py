"""The ``analytic`` estimator: parameters, gradients, optimizer states, activations and the step's peak.

See docs/memory.md for the model. In short:

- parameters / gradients / optimizer states come from :mod:`.params` (every tensor,
  exact) and, under ZeRO, :mod:`.zero` (DeepSpeed's partitioning arithmetic);
- activations come from :mod:`.decoder`, a symbolic replay of the forward pass
  that records what autograd saves, storage by storage;
- the peak walks one step: the end of the forward pass and the loss backward
  (where the logits block peaks), each layer's backward (activations still held,
  gradients so far, the layer's temporaries and, with checkpointing, its
  recompute), and the optimizer step (all gradients plus the optimizer's
  temporaries). The largest of these plus the framework overhead is the peak.
"""

from __future__ import annotations

from math import ceil

from lmforge.errors import ConfigError
from lmforge.modeling.memory import EstimateJob, MemoryBreakdown, format_size

from .decoder import trace_forward
from .profiles import approximation, with_profile
from .params import ATTENTION_ROLES, BYTES, ROLE_ALIASES, ParamTable, param_table
from .zero import PREFETCH_BUCKET_SIZE, layout

# bitsandbytes 8-bit optimizers: tensors below this many elements keep fp32 states
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256


def optimizer_state_bytes(table: ParamTable, job: EstimateJob) -> int:
    """Bytes of optimizer state for ``table``'s trainable tensors without ZeRO (torch / bitsandbytes)."""
    trainable = table.trainable
    if job.optimizer == "sgd":
        if not job.momentum:
            return 0
        return sum(p.numel * BYTES[p.dtype] for p in trainable)
    if job.optimizer == "adamw8bit":
        out = 0
        for p in trainable:
            if p.numel < BNB_MIN_8BIT_SIZE:
                out += 2 * p.numel * 4
            else:
                out += 2 * p.numel + 2 * ceil(p.numel / BNB_BLOCK) * 4
        if any(p.numel >= BNB_MIN_8BIT_SIZE for p in trainable):
            out += 2 * 256 * 4  # the dynamic quantization maps (shared by all tensors)
        return out
    # torch AdamW: exp_avg and exp_avg_sq in the parameter's dtype, a scalar fp32 step per tensor
    return sum(2 * p.numel * BYTES[p.dtype] + 4 for p in trainable)


def _moments(job: EstimateJob) -> int:
    return 0 if job.optimizer == "sgd" and not job.momentum else (1 if job.optimizer == "sgd" else 2)


def estimate(arch, job: EstimateJob) -> MemoryBreakdown:
    """Price ``job`` on ``arch``; see the module docstring. Raises ConfigError for impossible jobs."""
    if job.peft == "qlora" and job.zero_stage == 3:
        raise ConfigError("estimate: QLoRA's 4-bit weights cannot be partitioned by ZeRO-3 here; use stage 0-2")
    arch = with_profile(arch, job.model_type)
    table = param_table(arch, job)
    notes = list(table.notes)
    approx = approximation(arch, job.model_type)
    if approx:
        notes.append(f"activations of {approx} are priced as a LLaMA-style decoder (approximate)")
    trace = trace_forward(arch, job, table)
    if job.peft in ("prefix", "unipelt") and job.gradient_checkpointing:
        notes.append("peft refuses prefix tuning with gradient checkpointing; priced as if it ran")
    if job.attn == "flash" and job.padding:
        notes.append("flash attention runs padded batches unpadded: no attention mask is materialised")

    # ------------------------------------------------------------ resident state
    trainable_bytes = sum(p.numel * BYTES[p.dtype] for p in table.trainable)
    if job.zero_stage == 0:
        params_bytes = table.param_bytes
        grads_bytes = trainable_bytes
        optimizer_bytes = optimizer_state_bytes(table, job)
        bucket = trainable_bytes if job.world_size > 1 else 0  # DDP gradient buckets (gradient_as_bucket_view=False)
        cpu_bytes = 0
        opt_note = {"adamw": "AdamW: 2 moments in the parameter dtype",
                    "adamw8bit": "8-bit AdamW: blockwise-quantized moments",
                    "sgd": "SGD" + (" with momentum" if job.momentum else " (no state)")}[job.optimizer]
        grads_progressive = True
        backward_bucket = 0
    else:
        zl = layout(table, job, _moments(job))
        params_bytes = zl.params_bytes
        grads_bytes = zl.grads_bytes
        optimizer_bytes = 0 if job.offload != "none" else zl.master_bytes + zl.moments_bytes + zl.step_bytes
        bucket = 0
        backward_bucket = zl.bucket_bytes + zl.persistent_bytes
        cpu_bytes = zl.cpu_bytes
        opt_note = (f"ZeRO-{job.zero_stage}: fp32 master + moments for 1/{job.world_size} of the trainable weights"
                    + (", offloaded to CPU" if job.offload != "none" else ""))
        grads_progressive = False
    resident = params_bytes + table.buffer_bytes + optimizer_bytes + bucket
    if not grads_progressive:
        resident += grads_bytes

    # ------------------------------------------------------------ activations and logits
    stages = trace.saved_by_stage
    loss_saved = trace.loss_saved
    activations = trace.total - loss_saved
    V_numel = trace.logits_numel
    logits_rg = loss_saved > 0
    e_logits = BYTES[trace.hidden_dtype if job.mixed_precision == "no" or job.zero_stage else job.mixed_precision]
    if logits_rg:
        # saved log-probs + the nll gradient + the log-softmax gradient (all fp32), plus labels/total_weight
        logits_bytes = 3 * 4 * V_numel + (loss_saved - 4 * V_numel)
        head_temp = e_logits * V_numel
    else:
        logits_bytes = 4 * V_numel + (e_logits * V_numel if e_logits != 4 else 0)
        head_temp = 0

    # gradients per backward stage (allocated when that stage's backward runs)
    order = [st for st in trace.order if st != "loss"]
    stage_set = set(order)

    def stage_of(p) -> str:
        if p.layer is None:
            return "head" if p.name.startswith(("lm_head", "norm")) else "embed"
        base = f"layer{p.layer}"
        mod = p.name.split(".")[2]
        part = ".attn" if (ROLE_ALIASES.get(mod) in ATTENTION_ROLES or mod == "norm0") else ".mlp"
        return base + part if base + part in stage_set else base

    grads_by_stage: dict[str, int] = {}
    tied_grad = 0
    for p in table.trainable:
        st = stage_of(p)
        if p.name == "embed_tokens.weight" and arch.tied_embeddings and "lm_head.weight" not in {q.name for q in table.params}:
            # a tied embedding gets its first gradient from the LM head; the embedding's own dense
            # gradient is a temporary until it is accumulated into it
            st, tied_grad = "head", p.numel * BYTES[p.dtype]
        grads_by_stage[st] = grads_by_stage.get(st, 0) + p.numel * BYTES[p.dtype]
    stage_grad_temp: dict[str, int] = {"embed": tied_grad} if tied_grad else {}
    emb = next((p for p in table.trainable if p.name == "embed_tokens.weight"), None)
    if emb is not None and job.device == "cpu" and emb.dtype in ("bf16", "fp16"):
        # the CPU embedding backward accumulates a 16-bit weight's gradient in an fp32 buffer, which is
        # added into the (tied) gradient directly
        stage_grad_temp["embed"] = emb.numel * 4
    if job.zero_stage:
        # full-size gradients exist only until the bucket copies/reduces them
        stage_grad_temp, grads_by_stage = grads_by_stage, {}
        if tied_grad:
            stage_grad_temp["embed"] = stage_grad_temp.get("embed", 0) + tied_grad
    gathered: dict[str, int] = {}
    if job.zero_stage == 3:
        # each module's parameters are all-gathered (16-bit) while it runs, plus the prefetch bucket
        e = BYTES[job.dtype]
        for p in table.params:
            gathered[stage_of(p)] = gathered.get(stage_of(p), 0) + p.numel * e
        if arch.tied_embeddings:
            gathered["head"] = gathered.get("head", 0) + gathered.get("embed", 0)
        prefetch = min(PREFETCH_BUCKET_SIZE * e, max(gathered.values(), default=0))
        gathered = {k: v + prefetch for k, v in gathered.items()}

    h_bytes = job.micro_batch * job.seq_len * arch.hidden_size * BYTES[trace.hidden_dtype]
    phases: list[tuple[str, int]] = []
    held = trace.held_bytes
    # forward: what earlier stages saved plus the running layer's unsaved temporaries
    saved_so_far = 0
    fwd_peak, fwd_stage = 0, ""
    for st in order:
        saved_so_far += stages.get(st, 0)
        v = saved_so_far + trace.forward_temp.get(st, 0) + gathered.get(st, 0)
        if v > fwd_peak:
            fwd_peak, fwd_stage = v, st
    mask_live = 0 if job.gradient_checkpointing else trace.mask_bytes  # held already includes it
    phases.append((f"{fwd_stage} forward", resident + held + mask_live + fwd_peak))
    # end of forward + loss backward (the logits block at its largest)
    phases.append(("loss backward", resident + activations + logits_bytes + held + gathered.get("head", 0)
                   + backward_bucket))
    remaining = activations
    grads_so_far = 0
    for st in reversed(order):
        grads_so_far += grads_by_stage.get(st, 0)
        temp = (trace.backward_temp.get(st, 0) + trace.extra_temp.get(st, 0) + 2 * h_bytes
                + stage_grad_temp.get(st, 0) + gathered.get(st, 0) + backward_bucket)
        if st == "head":
            temp += head_temp
        if job.gradient_checkpointing and st.startswith("layer"):
            # the layer was recomputed when its backward began; parts already done are freed
            layer = st.split(".")[0]
            temp += sum(v for k, v in trace.recompute_by_stage.items()
                        if k.split(".")[0] == layer and order.index(k) <= order.index(st))
        phases.append((f"{st} backward", resident + remaining + held + grads_so_far + temp))
        remaining -= stages.get(st, 0)
    # optimizer step
    opt_temp = 0
    if job.optimizer == "adamw" and job.zero_stage == 0:
        if job.optimizer_impl == "foreach":
            opt_temp = trainable_bytes
        elif job.optimizer_impl == "single":
            opt_temp = 2 * max((p.numel * BYTES[p.dtype] for p in table.trainable), default=0)
    elif job.zero_stage in (1, 2) and job.offload == "none":
        opt_temp = layout(table, job, _moments(job)).partition_numel * 4  # fp32 gradient partition for the step
    phases.append(("optimizer step", resident + (grads_bytes if grads_progressive else 0) + opt_temp))

    phase, peak_alloc = max(phases, key=lambda x: x[1])
    transient = max(peak_alloc - resident - activations - logits_bytes - held, 0) if phase == "loss backward" else \
        max(peak_alloc - resident - (grads_bytes if grads_progressive else 0), 0)
    overhead = job.overhead
    details = {
        "buffers_bytes": table.buffer_bytes,
        "quant_state_bytes": table.quant_state_bytes,
        "saved_tensor_bytes": trace.total,
        "activations_per_layer_bytes": trace.layer_saved[0] if trace.layer_saved else 0,
        "checkpoint_recompute_bytes": trace.recompute_bytes,
        "attention_mask_bytes": trace.mask_bytes,
        "zero_bucket_bytes": backward_bucket,
        "ddp_bucket_bytes": bucket,
        "optimizer_step_temp_bytes": opt_temp,
        "phases": {name: int(v) for name, v in phases if name in ("loss backward", "optimizer step")} | {
            "layer backward (largest)": int(max((v for n, v in phases if n.startswith("layer")), default=0))},
        "optimizer_note": opt_note,
        "activations_note": (f"{job.attn}, checkpointing {'on' if job.gradient_checkpointing else 'off'}, "
                             f"{format_size(trace.layer_saved[0] if trace.layer_saved else 0)}/layer"),
        "logits_note": f"{arch.vocab_size:,} vocab x {job.micro_batch * job.seq_len:,} tokens, fp32 loss",
        "transient_note": phase,
    }
    return MemoryBreakdown(
        total_params=sum(p.numel for p in table.params),
        trainable_params=table.trainable_params,
        params_bytes=int(params_bytes),
        grads_bytes=int(grads_bytes),
        optimizer_bytes=int(optimizer_bytes),
        activations_bytes=int(activations),
        logits_bytes=int(logits_bytes),
        transient_bytes=int(transient),
        overhead_bytes=int(overhead),
        peak_bytes=int(peak_alloc + overhead),
        peak_phase=phase,
        cpu_bytes=int(cpu_bytes),
        estimator="analytic",
        job=job,
        details=details,
        notes=notes,
    )
