"""Evidence for ChatGLM's rope_ratio extension: a copy task at 2L after a short fine-tune, with and without.

A tiny ChatGLM3 (lmforge's modeling, random init) is trained to copy: ``x, x`` with ``x`` random tokens, loss
on the second half, at length L. Then two copies fine-tune briefly at 2L: one as is, one extended with
``long_context: {method: ntk, factor: 2}`` (``llm_plugins_glm.longctx.extend_chatglm2``: rope_ratio x 2^(d/(d-2))).
Prints the copy loss at 2L before and during the fine-tune. CPU, a few minutes on two cores:

    python llm_plugins_glm/scripts/long_context_copy.py [--steps 800] [--ft-steps 150] [--length 16]
"""

from __future__ import annotations

import argparse
import copy

import torch

from lmforge.config.spec import LongContextSpec as LC


def batch(n: int, half: int, vocab: int, g: torch.Generator):
    x = torch.randint(10, vocab, (n, half), generator=g)
    ids = torch.cat([x, x], dim=1)
    labels = ids.clone()
    labels[:, :half] = -100
    return ids, labels


def copy_loss(model, half, vocab, seed=123, n=32):
    g = torch.Generator().manual_seed(seed)
    ids, labels = batch(n, half, vocab, g)
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


def train(model, steps, half, vocab, lr, seed, every=0):
    """AdamW steps on fresh copy batches; every ``every`` steps, the held-out copy loss (a list)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    curve = []
    model.train()
    for step in range(1, steps + 1):
        ids, labels = batch(16, half, vocab, g)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if every and step % every == 0:
            model.eval()
            curve.append(round(copy_loss(model, half, vocab), 3))
            model.train()
    model.eval()
    return curve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=26, help="token ids 10..vocab-1 are the copied symbols")
    ap.add_argument("--ft-lr", type=float, default=2e-4)
    ap.add_argument("--every", type=int, default=25, help="fine-tune steps between copy-loss evaluations")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    from llm_plugins_glm.configuration import ChatGLM2Config
    from llm_plugins_glm.longctx import extend_chatglm2
    from llm_plugins_glm.modeling_chatglm2 import ChatGLM2ForConditionalGeneration
    from lmforge.modeling.loading import resolve_model

    raw = {k: v for k, v in resolve_model("tiny-chatglm3").config.items() if k not in ("model_type", "_name_or_path")}
    L = args.length
    cfg = ChatGLM2Config(**{**raw, "seq_length": L})
    base = ChatGLM2ForConditionalGeneration(cfg)
    train(base, args.steps, L // 2, args.vocab, 2e-3, seed=1)
    print(f"trained at L={L}: copy loss at L {copy_loss(base, L // 2, args.vocab):.3f}, "
          f"at 2L {copy_loss(base, L, args.vocab):.3f}")
    for name in ("none", "ntk"):
        model = copy.deepcopy(base)
        if name == "ntk":
            ext = copy.deepcopy(cfg)
            extend_chatglm2(ext, LC("ntk", 2.0, L))
            model = ChatGLM2ForConditionalGeneration(ext)
            model.load_state_dict(base.state_dict())
            model.eval()
        before = copy_loss(model, L, args.vocab)
        curve = train(model, args.ft_steps, L, args.vocab, args.ft_lr, seed=2, every=args.every)
        print(f"extension {name:4s} (rope_ratio {model.transformer.rotary_pos_emb.rope_ratio:.3f}): copy loss at 2L "
              f"before fine-tune {before:.3f}, every {args.every} steps {curve}")


if __name__ == "__main__":
    main()
