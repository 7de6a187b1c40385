"""Evidence for long-context extension: a copy task at twice the trained length.

A tiny LLaMA (2 layers, 64 wide, ``max_position_embeddings = L``) is trained at length L on a copy
task (``BOS x_1..x_k SEP x_1..x_k``: the second half repeats the first, so each answer token sits
``k + 1`` positions after its source). It is saved as a checkpoint and loaded twice through
lmforge's loading path (``lmforge.load``): once as it is, once with ``long_context: {method,
factor: 2}``. Both get the same short fine-tune at length 2L (same data, seed and steps), and the
loss on the copied half of held-out 2L sequences is reported before and after it.

The training loops are plain torch (AdamW) to keep this a few CPU minutes; what is measured is the
effect of the extension lmforge writes into the model config.

    python benchmarks/long_context.py                # L=64, linear
    python benchmarks/long_context.py --method yarn
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch


def batch(n: int, length: int, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` copy sequences of ``length`` tokens and their labels (loss on the copied half only)."""
    k = (length - 2) // 2
    bos, sep = 0, 1
    body = torch.randint(2, vocab, (n, k), generator=gen)
    ids = torch.cat([torch.full((n, 1), bos), body, torch.full((n, 1), sep), body], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, k + 2:] = ids[:, k + 2:]
    return ids, labels


def train(model, steps: int, length: int, vocab: int, lr: float, seed: int, batch_size: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    for _ in range(steps):
        ids, labels = batch(batch_size, length, vocab, gen)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()


@torch.no_grad()
def evaluate(model, length: int, vocab: int, n: int = 256) -> float:
    ids, labels = batch(n, length, vocab, torch.Generator().manual_seed(12345))
    model.eval()
    return float(model(input_ids=ids, labels=labels).loss)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=64, help="L: the trained length (= max_position_embeddings)")
    p.add_argument("--method", default="linear", help="long_context.method for the extended model")
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--finetune-steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import lmforge
    from transformers import LlamaConfig, LlamaForCausalLM

    L = args.length
    t0 = time.time()
    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=L,
                         rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    base = LlamaForCausalLM(config)
    train(base, args.pretrain_steps, L, args.vocab, 3e-3, args.seed, args.batch_size)
    result = {"length": L, "method": args.method, "pretrain_steps": args.pretrain_steps,
              "finetune_steps": args.finetune_steps, "eval_loss_at_L": evaluate(base, L, args.vocab)}
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        lmforge.load("tiny-llama")[1].save_pretrained(tmp)  # any tokenizer: the task feeds ids
        runs = {"without": None, "with": {"method": args.method, "factor": 2}}
        for name, lc in runs.items():
            model, _ = lmforge.load(tmp, dtype="fp32", long_context=lc)
            before = evaluate(model, 2 * L, args.vocab)
            train(model, args.finetune_steps, 2 * L, args.vocab, 1e-3, args.seed + 1, args.batch_size)
            result[f"{name}_extension"] = {"eval_loss_at_2L_before": before,
                                           "eval_loss_at_2L_after": evaluate(model, 2 * L, args.vocab),
                                           "rope_parameters": dict(model.config.rope_parameters)}
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    w, wo = result["with_extension"]["eval_loss_at_2L_after"], result["without_extension"]["eval_loss_at_2L_after"]
    print(f"2L eval loss after the fine-tune: with {args.method} {w:.4f}, without {wo:.4f} "
          f"(chance: ln {args.vocab - 2} = {math.log(args.vocab - 2):.2f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
