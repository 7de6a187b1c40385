"""Helpers shared by the GLM plugin tests (imported by name; fixtures live in conftest.py)."""

from __future__ import annotations

VARIANTS = ("glm", "chatglm", "chatglm2", "chatglm3", "glm4")
PRESET = {v: f"tiny-{v}" for v in VARIANTS}
PROMPTS = ["What is 2 plus 3?", "小明有5个苹果，又买了3个。现在有几个？", "What is 7 times 6?\nAnswer briefly."]


def load_preset(variant: str):
    """``(model, tokenizer, family)`` of a tiny preset through lmforge's resolution and the family loader."""
    import lmforge
    from lmforge.modeling.loading import resolve_model

    model, tok = lmforge.load(PRESET[variant])
    return model, tok, resolve_model(PRESET[variant]).family


def encoder_for(tokenizer, family, **kw):
    from lmforge.data.encoding import make_encoder

    return make_encoder(tokenizer, family, max_length=kw.pop("max_length", 256), **kw)


def generate_ids(model, encoder, prompts, max_new_tokens: int = 6) -> list[list[int]]:
    """What ``lmforge.Completion.generate_batch`` does: encoder prompts, left padding, greedy ``generate``."""
    import torch

    batch = encoder.collate_prompts([encoder.encode_prompt(p) for p in prompts])
    stop = encoder.stop_token_ids()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                             pad_token_id=encoder.pad_token_id())
    width = batch["input_ids"].shape[1]
    rows = []
    for row in out[:, width:].tolist():
        cut = next((k for k, t in enumerate(row) if t in stop), len(row))
        rows.append(row[:cut])
    return rows
