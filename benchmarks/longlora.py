"""LongLoRA's shifted sparse attention (S2-Attn) against full causal attention: forward + backward time.

    python benchmarks/longlora.py [--length 2048] [--heads 8] [--head-dim 64] [--ratio 0.25] [--repeats 3]

Times one attention call (forward + backward, fp32, batch 1, no padding mask) of
``lmforge.modeling.longlora.shift_attention_forward`` (groups of ``ratio x length`` tokens,
half the heads shifted by half a group) and of transformers' causal SDPA on the same tensors,
alternating the two in one process, and prints the best time of each and their ratio. CPU, one
thread (``torch.set_num_threads(1)``), a few seconds.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lmforge.modeling import longlora

    torch.set_num_threads(1)
    group = longlora.group_size_for(args.length, args.ratio)

    class Layer(torch.nn.Module):  # what the attention functions read from the calling module
        is_causal = True

    layer = Layer().train()
    setattr(layer, longlora.GROUP_ATTR, group)
    g = torch.Generator().manual_seed(0)
    shape = (1, args.heads, args.length, args.head_dim)
    qkv = [torch.randn(shape, generator=g, requires_grad=True) for _ in range(3)]
    scale = args.head_dim ** -0.5

    def full():
        return sdpa_attention_forward(layer, *qkv, None, scaling=scale, is_causal=True)[0]

    def s2():
        return longlora.shift_attention_forward(layer, *qkv, None, scaling=scale)[0]

    best = {"full": float("inf"), "s2": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("full", full), ("s2", s2)):
            start = time.perf_counter()
            fn().sum().backward()
            best[name] = min(best[name], time.perf_counter() - start)
            for t in qkv:
                t.grad = None
    print(f"length {args.length}, {args.heads} heads of {args.head_dim}, group {group}, fp32, 1 thread, "
          f"best of {args.repeats}")
    print(f"full causal SDPA  {best['full'] * 1000:8.1f} ms")
    print(f"S2-Attn           {best['s2'] * 1000:8.1f} ms")
    print(f"S2 / full         {best['s2'] / best['full']:8.2f}")


if __name__ == "__main__":
    main()
