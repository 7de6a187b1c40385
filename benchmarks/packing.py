"""Packed training throughput: padded vs lmforge packed vs the dense ceiling vs other frameworks' methods.

    python benchmarks/packing.py [--steps 30] [--batch 8] [--max-length 1024] [--model tiny-llama]

One process, one model (the preset with LoRA through lmforge's ``lora`` method, fp32,
AdamW), one data set; the methods take turns step by step so that load from other
processes on the machine falls on every method alike. Each step is forward + backward + optimizer
step on one batch. Methods:

padded            batches of ``--batch`` examples right-padded to the longest (attention_mask, sdpa)
lmforge packed    rows of ``--max-length`` slots from lmforge's best-fit-decreasing packing,
                  ``lmforge.packing`` collator, ``lmforge_packed`` attention (causal SDPA per example)
dense ceiling     the same packed rows with plain causal attention over the whole row (no masking,
                  samples see each other): the speed a contamination-free method should reach
neat_packing      LLaMA-Factory's ``neat_packing``: the same packed rows, a dense block-diagonal causal
                  4D mask and restarting positions, sdpa. LLaMA-Factory itself is used when importable
                  (``llamafactory``); otherwise this is a re-implementation of its documented method and
                  is labelled so.
TRL padding_free  ``trl``'s ``DataCollatorForLanguageModeling(padding_free=True)`` (batches of ``--batch``
                  examples flattened into one row with restarting positions, no attention_mask, sdpa,
                  use_cache=False); skipped when trl is not importable.

Data (long-tailed instruction data, generated so the benchmark runs offline): ``--examples``
single-turn examples whose prompt and response lengths in words are log-normal (medians 20 and
45 words, sigma 0.9 and 1.0), words drawn from a fixed list; tokenized with the model's chat
template and truncated at ``--max-length``. The script prints the length percentiles.

Prints, per method, padding % (pad slots / all slots), real (non-pad) tokens/s by wall clock
(total, and the median of per-step rates) and by process CPU time, and the ratios of lmforge
packed to the others. Torch runs one thread unless ``--threads`` says otherwise (see its help).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time

WORDS = ("the of and to in is was for on with as by at from this that which be are an have has not but "
         "or all more one two three four five six seven eight nine ten apples answer question river stone "
         "model data train value number total each price city year people time water light system result "
         "计算 问题 答案 苹果 城市 时间").split()


def make_examples(n: int, seed: int):
    """Long-tailed single-turn instruction examples (see module doc)."""
    from lmforge.plugins.descriptors import Example, Message

    rng = random.Random(seed)

    def text(median: float, sigma: float) -> str:
        k = max(1, int(rng.lognormvariate(math.log(median), sigma)))
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [Example(messages=(Message("user", text(20, 0.9)), Message("assistant", text(45, 1.0))), source=("gen", i))
            for i in range(n)]


def percentiles(values, ps=(50, 90, 99)) -> str:
    s = sorted(values)
    return ", ".join(f"p{p} {s[min(len(s) - 1, int(len(s) * p / 100))]}" for p in ps)


class Method:
    def __init__(self, name: str, attention: str, batches, note: str = "") -> None:
        self.name, self.attention, self.batches, self.note = name, attention, batches, note
        self.times: list[float] = []
        self.reals: list[int] = []
        self.cpu = 0.0
        self.slots = 0
        self.pos = 0

    def next_batch(self):
        b = self.batches[self.pos % len(self.batches)]
        self.pos += 1
        return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 0 = all cores. 1 by default: on a shared machine, with more threads than "
                         "free cores every OpenMP barrier waits for a descheduled thread, which penalises many small "
                         "kernels (per-example attention) far more than a few big ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated subset of methods (padded,packed,ceiling,neat,trl)")
    args = ap.parse_args()

    import torch

    from lmforge.plugins.descriptors import PeftContext, resolve_ref, validate_options
    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import LoadOptions, load_model, resolve_model
    from lmforge.packing import (ATTN_NAME, PackedCollator, pack_features, register_packed_attention,
                                 verify_no_cross_attention)
    from lmforge.plugins.registry import get_registry
    from lmforge.train.pipeline import pad_collate

    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    reg = get_registry()
    source = resolve_model(args.model, registry=reg)
    model, tokenizer = load_model(source, LoadOptions(dtype="fp32"))
    lora = reg.peft_method("lora")
    options = validate_options(lora.options, {}, "peft")
    model = resolve_ref(lora.apply)(model, options, PeftContext(family=source.family, tokenizer=tokenizer))
    model.train()
    base = model.get_base_model()
    base.config.use_cache = False
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pad = tokenizer.pad_token_id

    encoder = make_encoder(tokenizer, source.family, max_length=args.max_length)
    feats = [f for f in (encoder.encode(e) for e in make_examples(args.examples, args.seed)) if f is not None]
    lengths = [len(f["input_ids"]) for f in feats]
    print(f"model {args.model} + LoRA ({options['r']}, default targets), fp32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"data: {len(feats)} examples, tokens {percentiles(lengths)}, max {max(lengths)}, mean "
          f"{statistics.mean(lengths):.0f}; {encoder.stats.truncated} truncated at {args.max_length}")

    rng = random.Random(args.seed)
    order = list(range(len(feats)))
    rng.shuffle(order)
    need = (args.steps + args.warmup) * args.batch
    example_batches = [[feats[i] for i in order[(k * args.batch) % len(order):][: args.batch]]
                       for k in range(need // args.batch)]

    packed_ds, stats = pack_features(feats, args.max_length)
    print(f"packing: {stats.summary()}")
    rows = list(range(len(packed_ds)))
    rng.shuffle(rows)
    row_batches = [[packed_ds[rows[(k * args.batch + j) % len(rows)]] for j in range(args.batch)]
                   for k in range(args.steps + args.warmup)]
    collate = PackedCollator(pad)
    packed_batches = [collate(b) for b in row_batches]

    def ceiling(b):
        return {"input_ids": b["input_ids"], "labels": b["labels"], "use_cache": False}

    def neat(b):
        # LLaMA-Factory neat_packing: a dense (B, 1, L, L) additive mask, block-diagonal and causal
        pos = b["position_ids"]
        seg = torch.cumsum((pos == 0).long(), dim=-1)
        length = pos.shape[1]
        allowed = (seg[:, :, None] == seg[:, None, :]) & torch.ones(length, length, dtype=torch.bool).tril()
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        return {"input_ids": b["input_ids"], "labels": b["labels"], "position_ids": pos,
                "attention_mask": mask[:, None], "use_cache": False}

    methods = {
        "padded": Method("padded", "sdpa", [pad_collate(b, pad) for b in example_batches]),
        "packed": Method("lmforge packed", ATTN_NAME, packed_batches),
        "ceiling": Method("dense ceiling (samples see each other)", "sdpa", [ceiling(b) for b in packed_batches]),
    }
    neat_note = "re-implementation of LLaMA-Factory's documented method"
    try:
        import llamafactory  # noqa: F401

        neat_note = f"block-diagonal mask as built by llamafactory {llamafactory.__version__}"
    except ImportError:
        pass
    methods["neat"] = Method("neat_packing (dense 4D mask)", "sdpa", [neat(b) for b in packed_batches], neat_note)
    try:
        import trl
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        trl_collate = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)
        trl_batches = []
        for b in example_batches:
            out = dict(trl_collate([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in b]))
            out["use_cache"] = False
            trl_batches.append(out)
        methods["trl"] = Method("TRL padding_free", "sdpa", trl_batches, f"trl {trl.__version__}")
    except ImportError:
        print("TRL padding_free: skipped (trl is not importable)")
    if args.only:
        keep = set(args.only.split(","))
        methods = {k: v for k, v in methods.items() if k in keep}

    register_packed_attention()
    base.set_attn_implementation(ATTN_NAME)
    verify_no_cross_attention(model, collate, feats)  # lmforge's own guard, as in a training job

    def step(batch) -> None:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def count(batch) -> tuple[int, int]:
        """(real tokens, slots): padding is the pad id at row tails (or the 2D attention_mask's zeros)."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None and mask.dim() == 2 else int((ids != pad).sum())
        return real, ids.numel()

    for m in methods.values():
        base.set_attn_implementation(m.attention)
        for _ in range(args.warmup):
            step(m.next_batch())
    # round-robin, one step of each method in turn: load from other processes falls on all alike
    for i in range(args.steps):
        for m in methods.values():
            base.set_attn_implementation(m.attention)
            batch = m.next_batch()
            real, slots = count(batch)
            t, c = time.perf_counter(), time.process_time()
            step(batch)
            m.times.append(time.perf_counter() - t)
            m.cpu += time.process_time() - c
            m.reals.append(real)
            m.slots += slots
        if (i + 1) % 5 == 0:
            print(f"step {i + 1}/{args.steps}", file=sys.stderr, flush=True)

    print(f"\n{args.steps} steps per method, batch {args.batch}, max length {args.max_length}\n")
    print("| method | padding | real tokens/s (wall) | real tokens/s (median step) | real tokens/s (CPU time) |")
    print("|---|---|---|---|---|")
    rate = {}
    for key, m in methods.items():
        real = sum(m.reals)
        median = statistics.median(r / t for r, t in zip(m.reals, m.times))
        rate[key] = (real / sum(m.times), median, real / m.cpu)
        label = m.name + (f" ({m.note})" if m.note else "")
        print(f"| {label} | {100 * (1 - real / m.slots):.1f}% | {rate[key][0]:,.0f} | {rate[key][1]:,.0f} | "
              f"{rate[key][2]:,.0f} |")
    if "packed" in rate:
        print("\n| ratio | wall | median step | CPU time |\n|---|---|---|---|")
        for key, label in (("ceiling", "lmforge packed / dense ceiling"), ("neat", "lmforge packed / neat_packing"),
                           ("padded", "lmforge packed / padded"), ("trl", "lmforge packed / TRL padding_free")):
            if key in rate:
                print(f"| {label} | " + " | ".join(f"{rate['packed'][j] / rate[key][j]:.2f}" for j in range(3)) + " |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
