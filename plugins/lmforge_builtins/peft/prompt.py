"""Prompt tuning through peft: trained virtual token embeddings prepended to every input.

peft handles the shift the virtual tokens cause: it prepends them to the
embeddings, extends the attention mask and pads the labels with -100 for them,
and in ``generate`` injects them once before the prompt.
"""

from __future__ import annotations

from lmforge.errors import ConfigError
from lmforge.plugins.descriptors import Option

from .checks import positive, recheck
from .common import peft_adapter_method

VIRTUAL_TOKENS = Option("num_virtual_tokens", int, 16, "number of virtual tokens")  # prompt, ptuning, prefix

OPTIONS = (
    VIRTUAL_TOKENS,
    Option("init", str, "vocab", "initial virtual token embeddings: embeddings of random vocabulary tokens, "
           "random vectors, or the embeddings of init_text", choices=("vocab", "random", "text")),
    Option("init_text", str, None, "text whose token embeddings start the prompt (init: text)"),
)


def check(options, config) -> None:
    positive(options, "num_virtual_tokens")
    if options["init"] == "text" and not options["init_text"]:
        raise ValueError("peft.init_text: required when init is 'text'")


def apply(model, options, ctx):
    import torch
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    recheck(check, options, ctx.config)
    init = options["init"]
    peft_init = {"vocab": PromptTuningInit.SAMPLE_VOCAB, "random": PromptTuningInit.RANDOM,
                 "text": PromptTuningInit.RANDOM}[init]
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options["num_virtual_tokens"],
                                prompt_tuning_init=peft_init)
    model = get_peft_model(model, config)
    if init == "text":
        # peft's TEXT init loads a tokenizer by hub name; the job's tokenizer is already here
        ids = ctx.tokenizer.encode(options["init_text"], add_special_tokens=False)
        if not ids:
            raise ConfigError("peft.init_text: tokenizes to nothing")
        n = options["num_virtual_tokens"]
        ids = (ids * (n // len(ids) + 1))[:n]
        emb = model.word_embeddings
        with torch.no_grad():
            vectors = emb(torch.tensor(ids, device=emb.weight.device)).float()
            model.prompt_encoder[model.active_adapter].embedding.weight.copy_(vectors)
    return model


def load(base_model, run_dir, options):
    """The peft adapter, with left-padded batched generation made exact (see below)."""
    from .common import load_peft_adapter

    return generate_rows_unpadded(load_peft_adapter(base_model, run_dir, options))


def generate_rows_unpadded(model):
    """Make ``model.generate`` run each left-padded row of a batch without its padding.

    peft puts the virtual tokens in front of the whole row and ignores
    ``position_ids`` for prompt learning, so left padding sits between the virtual
    tokens and the prompt and shifts the prompt's positions: a padded row would
    generate something else than the same prompt alone. Rows are generated one
    at a time and re-assembled into the usual ``[padding, prompt, new tokens,
    pad...]`` layout. Returns ``model``; ``model.lmforge_generate_unpadded`` tells
    :class:`~lmforge.inference.generation.Completion` to batch only prompts of equal length.
    """
    import torch

    original = model.generate

    def generate(*args, **kwargs):
        input_ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if (args or input_ids is None or mask is None or input_ids.shape[0] == 1 or bool(mask.all())
                or kwargs.get("return_dict_in_generate")):
            return original(*args, **kwargs)
        pad = kwargs.get("pad_token_id")
        if pad is None:
            pad = model.generation_config.pad_token_id or 0
        rest = {k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")}
        pieces = []
        for i in range(input_ids.shape[0]):
            keep = mask[i].bool()
            ids = input_ids[i][keep].unsqueeze(0)
            pieces.append((int((~keep).sum()), original(input_ids=ids, attention_mask=torch.ones_like(ids), **rest)))
        width = max(p + out.shape[1] for p, out in pieces)
        rows = sum(out.shape[0] for _, out in pieces)
        result = torch.full((rows, width), pad, dtype=input_ids.dtype, device=input_ids.device)
        r = 0
        for p, out in pieces:
            result[r:r + out.shape[0], p:p + out.shape[1]] = out
            r += out.shape[0]
        return result

    model.generate = generate
    model.lmforge_generate_unpadded = True
    return model


PROMPT = peft_adapter_method(
    __name__, name="prompt", options=OPTIONS, load=f"{__name__}:load", merge=None,
    description="prompt tuning (peft): trained virtual token embeddings before the input")

METHODS = (PROMPT,)
