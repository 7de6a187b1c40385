"""How close memory estimates come to what PyTorch allocates: lmforge vs the seed formula vs accelerate.

For every family's tiny and smallest published preset, over PEFT method x gradient
checkpointing x attention x (micro-batch, sequence), on CPU:

- *activations*: bytes of the unique storages autograd saves in one forward pass
  (``saved_tensors_hooks``), against lmforge's ``saved_tensor_bytes`` and the seed
  formula's activation term;
- *peak*: PyTorch's ``MemTracker`` peak over two AdamW steps (under ``FakeTensorMode``:
  shapes and storages, no data; presets up to 1.5B parameters, as MemTracker's own
  bookkeeping takes minutes per step beyond), against lmforge's ``peak_bytes`` (less the CUDA
  overhead, which is 0 for ``device="cpu"``), the seed formula and
  ``accelerate estimate-memory``'s training figure.

The seed formula is the AntLLM-style "dynamic batch size" arithmetic as issue 7
describes it (its code is not in this repository): 2-byte activations of
``s*b*h*(34 + 5*d*s/h)`` bytes per layer -- the attention-score term with the head
*size* d where the head *count* belongs, no SDPA/flash case, no GQA, a 4h
two-matrix MLP, no logits/loss term -- plus 16 bytes per trainable and 2 per
frozen parameter. ``accelerate estimate-memory`` needs the Hub to build its
model; here its own helpers (``calculate_maximum_sizes``, ``estimate_training_usage``)
run on the same locally built model, so the figure is exactly what the command
would print for a batch of 1 (it has no activation term at all).

Usage::

    python benchmarks/estimator_accuracy.py            # the whole grid (several minutes)
    python benchmarks/estimator_accuracy.py --quick    # tiny presets, a few shapes
    python benchmarks/estimator_accuracy.py --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import estimator_measure as measure  # noqa: E402  (tests/estimator_measure.py: torch-side ground truth)
from lmforge.modeling.memory import EstimateJob  # noqa: E402
from lmforge.plugins.registry import get_registry  # noqa: E402
from lmforge_builtins.estimator.analytic import estimate  # noqa: E402
from lmforge_builtins.estimator.profiles import approximation  # noqa: E402

PEFTS = ("full", "lora", "prefix", "freeze")
SHAPES = ((1, 128), (8, 2048))


def seed_formula(arch, job, table_trainable: int, table_total: int) -> tuple[int, int]:
    """(activations, peak) as issue 7's seed computes them."""
    b, s, h, L = job.micro_batch, job.seq_len, arch.hidden_size, arch.num_layers
    d = arch.dim_per_head
    act = int(L * s * b * h * (34 + 5 * d * s / h))
    if job.gradient_checkpointing:
        act = L * 2 * s * b * h
    static = 16 * table_trainable + 2 * (table_total - table_trainable)
    return act, static + act


def accelerate_training_bytes(model, dtype: str) -> int | None:
    try:
        from accelerate.commands.estimate import calculate_maximum_sizes, estimate_training_usage
    except ImportError:  # pragma: no cover
        return None
    total, _ = calculate_maximum_sizes(model)
    usage = estimate_training_usage(total, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype])
    return max(v for v in usage.values() if v != -1)


def cases(quick: bool):
    for fam in get_registry().families():
        tiny = next((p for p in fam.presets if p.tiny), None)
        if tiny is None:
            continue
        published = [p for p in fam.presets if not p.tiny]
        small = min(published, key=lambda p: estimate(fam.arch_from_config(p.config),
                                                     EstimateJob(seq_len=8, device="cpu")).total_params) if published else None
        for preset in ([tiny] if quick else [tiny, small]):
            if preset is None:
                continue
            shapes = SHAPES[:1] if (quick or not preset.tiny) else SHAPES
            for peft, ckpt, attn, (b, s) in itertools.product(PEFTS, (False, True), ("eager", "sdpa"), shapes):
                if peft == "prefix" and ckpt:
                    continue  # peft refuses prefix tuning with gradient checkpointing
                if fam.capability(peft).status == "unsupported":
                    continue
                if ckpt and fam.capability("gradient_checkpointing").status == "unsupported":
                    continue
                yield fam, preset, peft, ckpt, attn, b, s


PEAK_MAX_PARAMS = 1_500_000_000  # MemTracker's bookkeeping grows with modules x ops: larger presets take minutes


def run_case(fam, preset, peft, ckpt, attn, b, s, dtype="bf16", peak=True) -> dict:
    from torch._subclasses.fake_tensor import DataDependentOutputException

    arch = fam.arch_from_config(preset.config)
    job = EstimateJob(seq_len=s, micro_batch=b, peft=peft, default_lora_targets=fam.default_lora_targets, dtype=dtype,
                      attn=attn, gradient_checkpointing=ckpt, padding=True, device="cpu",
                      model_type=str(preset.config.get("model_type", "")))
    bd = estimate(arch, job)
    peak = peak and bd.total_params <= PEAK_MAX_PARAMS
    row = {"family": fam.name, "preset": preset.name, "peft": peft, "ckpt": ckpt, "attn": attn, "b": b, "s": s,
           "approximate": approximation(arch, job.model_type)}

    def build():
        return measure.build_family_model(fam, preset, dtype=dtype, attn=attn, peft=peft, gradient_checkpointing=ckpt)

    def measure_all():
        saved = measure.saved_tensor_bytes(build(), b, s, padding=True)
        tracked = measure.tracked_peak(build(), b, s, padding=True)["peak"] if peak else None
        full_model = measure.build_family_model(fam, preset, dtype=dtype, attn=attn, peft="full")
        return saved, tracked, accelerate_training_bytes(full_model, dtype)

    try:
        with measure.fake_mode():
            saved, tracked, acc = measure_all()
    except DataDependentOutputException:
        if not preset.tiny:
            row["skipped"] = "forward pass branches on tensor values (not traceable with fake tensors)"
            return row
        # a tiny model runs on real tensors instead, at a shape that fits in memory
        b, s = min(b, 2), min(s, 512)
        row.update(b=b, s=s, real_tensors=True)
        job = job.with_(micro_batch=b, seq_len=s)
        bd = estimate(arch, job)
        saved, tracked, acc = measure_all()
    seed_act, seed_peak = seed_formula(arch, job, bd.trainable_params, bd.total_params)
    predicted = bd.peak_bytes - bd.overhead_bytes
    row.update(
        measured_saved=saved, lmforge_saved=bd.details["saved_tensor_bytes"], seed_activations=seed_act,
        measured_peak=tracked, lmforge_peak=predicted, seed_peak=seed_peak, accelerate_peak=acc,
        err_act_lmforge=bd.details["saved_tensor_bytes"] / saved - 1, err_act_seed=seed_act / saved - 1,
    )
    if tracked:
        row.update(err_peak_lmforge=predicted / tracked - 1, err_peak_seed=seed_peak / tracked - 1,
                   err_peak_accelerate=(acc / tracked - 1) if acc else None)
    return row


def pct(x) -> str:
    return "    n/a" if x is None else f"{x:+7.1%}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny presets and the small shape only")
    ap.add_argument("--families", default=None, help="comma-separated family names")
    ap.add_argument("--no-peak", action="store_true", help="skip MemTracker (activations only)")
    ap.add_argument("--json", default=None, help="write every row to this file")
    args = ap.parse_args(argv)
    import warnings

    import torch

    warnings.filterwarnings("ignore")

    torch.set_num_threads(1)
    only = set(args.families.split(",")) if args.families else None
    rows = []
    header = (f"{'case':58} {'act: lmforge':>12} {'seed':>9} | {'peak: lmforge':>13} {'seed':>9} {'accelerate':>10}")
    print(header)
    print("-" * len(header))
    t0 = time.time()
    for fam, preset, peft, ckpt, attn, b, s in cases(args.quick):
        if only and fam.name not in only:
            continue
        row = run_case(fam, preset, peft, ckpt, attn, b, s, peak=not args.no_peak)
        rows.append(row)
        name = (f"{preset.name} {peft} {'ckpt' if ckpt else 'no-ckpt'} {attn} {row['b']}x{row['s']}"
                + (" (real)" if row.get("real_tensors") else "") + (" *" if row["approximate"] else ""))
        if "skipped" in row:
            print(f"{name:58} skipped: {row['skipped']}")
            continue
        print(f"{name:58} {pct(row['err_act_lmforge']):>12} {pct(row['err_act_seed']):>9} | "
              f"{pct(row.get('err_peak_lmforge')):>13} {pct(row.get('err_peak_seed')):>9} "
              f"{pct(row.get('err_peak_accelerate')):>10}", flush=True)
    done = [r for r in rows if "skipped" not in r]
    exact = [r for r in done if not r["approximate"]]
    print("-" * len(header))
    for label, subset in (("faithfully replayed families", exact), ("all families (* = approximate replay)", done)):
        if not subset:
            continue
        for key in ("err_act_lmforge", "err_act_seed", "err_peak_lmforge", "err_peak_seed", "err_peak_accelerate"):
            vals = [abs(r[key]) for r in subset if r.get(key) is not None]
            if vals:
                print(f"{label:40} {key:22} median |error| {statistics.median(vals):7.1%}  max {max(vals):8.1%}"
                      f"  (n={len(vals)})")
    print(f"{len(done)} cases in {time.time() - t0:.0f} s; {len(rows) - len(done)} skipped")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
