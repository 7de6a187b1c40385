"""``check_family(name)``: the conformance suite for a model-family plugin.

Built from lmforge's registry-wide tests (tests/test_generation_cache.py,
test_chat_template.py, test_packing.py, the plugins' training tests), run on one
tiny preset of the family:

1. ``registered``: the family is in the registry under ``name``;
2. ``presets``: every preset's ``config.json`` is claimed by this family and
   ``arch_from_config`` reads it; at least one preset is ``tiny`` with a tokenizer;
3. ``load``: the tiny preset builds offline, twice to the same weights, with a
   tokenizer that fits the embedding matrix;
4. ``encoder round trip``: the prompt part of an encoded training example is
   exactly the ids generation starts from;
5. ``template``: the chat template renders single- and multi-turn conversations
   (and, where it has a Jinja form, the tokenizer's ``apply_chat_template`` gives
   the training prompt);
6. ``training``: a few full fine-tuning steps lower the validation loss;
7. ``reload``: the saved run reloads to the logits the trained model had;
8. ``cached generation``: greedy decoding with the KV cache equals decoding
   without it (tokens, and per-step logits within 1e-4), alone and left-padded;
9. ``batched generation``: a batch generates what each prompt generates alone;
10. declared capabilities, where cheap: ``lora`` (the default targets name modules),
    ``gradient_checkpointing`` (same loss with it on) and ``packing`` (lmforge's
    cross-attention probe passes).

Imports torch when called, not at import.
"""

from __future__ import annotations

import os
import tempfile

from lmforge.testing.errors import Report

CONVERSATIONS = [
    [("user", "What is 3 plus 4?")],
    [("system", "You are terse."), ("user", "小明有5个苹果"), ("assistant", "好的 5"), ("user", "再加2个?")],
    [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")],
]
GENERATION_PROMPTS = [["What is 2 plus 3?"], ["Hi", "What is 7 times 6? Answer briefly."]]
TOKEN_TOL = 1e-4  # per-step logits, cached vs uncached (fp32)
RELOAD_TOL = 1e-5


def _messages(turns):
    from lmforge.plugins.descriptors import Message

    return [Message(role, content) for role, content in turns]


def tiny_preset(family) -> str:
    """The family's first ``tiny`` preset (what the suite runs on)."""
    for p in family.presets:
        if p.tiny:
            return p.name
    raise AssertionError(f"the family has no tiny preset (Preset(..., tiny=True, tokenizer=...)); "
                         f"presets: {[p.name for p in family.presets] or 'none'}")


def check_family(name: str, *, preset: str | None = None, workdir: str | None = None, steps: int = 8,
                 lr: float = 3e-3, prefix_lm: bool = False) -> Report:
    """Run the family conformance suite on ``preset`` (default: the family's first tiny preset).

    ``prefix_lm``: the model attends bidirectionally over its prompt (CPM-Ant), so
    recomputing the whole sequence is not its uncached reference; one forward over
    the generated sequence with the answer marked as trained is. ``steps``/``lr``:
    the short full fine-tuning run. Raises :class:`~lmforge.testing.ConformanceError`
    naming the first check that fails; returns a :class:`~lmforge.testing.Report`.
    """
    from lmforge.testing.helpers import single_torch_thread

    with single_torch_thread():
        return _check_family(name, preset=preset, workdir=workdir, steps=steps, lr=lr, prefix_lm=prefix_lm)


def _check_family(name: str, *, preset: str | None = None, workdir: str | None = None, steps: int = 8,
                  lr: float = 3e-3, prefix_lm: bool = False) -> Report:
    """:func:`check_family`'s body, on one torch thread."""
    from lmforge.plugins.registry import get_registry

    report = Report("model family", name)
    reg = get_registry()  # every step (loading, training) uses the process's registry
    with report.check("registered"):
        family = reg.family(name)
    with report.check("presets"):
        _check_presets(family, reg)
        preset = preset or tiny_preset(family)
        assert family.preset(preset) is not None, f"{preset!r} is not one of the family's presets"
    with tempfile.TemporaryDirectory(prefix=f"lmforge-check-{name}-") as tmp:
        _run_model_checks(report, family, preset, workdir or tmp, steps=steps, lr=lr, prefix_lm=prefix_lm)
    return report


def _check_presets(family, reg) -> None:
    from lmforge.plugins.descriptors import ArchSpec

    assert family.presets, "the family declares no presets"
    for p in family.presets:
        claimed = reg.family_for_config(dict(p.config), where=f"preset {p.name}")
        assert claimed.name == family.name, (
            f"preset {p.name!r}: a checkpoint with its config.json would load as family {claimed.name!r}, "
            f"not {family.name!r} (check model_types/architectures/match)")
        arch = family.arch_from_config(p.config)
        assert isinstance(arch, ArchSpec), f"arch_from_config({p.name}) returned {type(arch).__name__}, not ArchSpec"
        for field in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "intermediate_size"):
            assert getattr(arch, field) > 0, f"arch_from_config({p.name}).{field} = {getattr(arch, field)}"
        if p.tiny:
            assert p.tokenizer is not None, f"tiny preset {p.name!r} has no tokenizer= (it must build offline)"


def _run_model_checks(report: Report, family, preset: str, work: str, *, steps: int, lr: float,
                      prefix_lm: bool) -> None:
    import torch

    from lmforge.data.encoding import make_encoder
    from lmforge.modeling.loading import LoadOptions, load_model, resolve_model
    from lmforge.testing.helpers import batched_vs_single, reload_logits, train_run, write_data

    with report.check("load"):
        source = resolve_model(preset)
        assert source.family.name == family.name, f"preset {preset!r} resolves to family {source.family.name!r}"
        model, tokenizer = load_model(source, LoadOptions(dtype="fp32"))
        again, _ = load_model(resolve_model(preset), LoadOptions(dtype="fp32"))
        first, second = model.state_dict(), again.state_dict()
        assert first.keys() == second.keys()
        differ = [k for k in first if not torch.equal(first[k], second[k])]
        assert not differ, f"building {preset!r} twice gives different weights ({differ[:3]}): seed the init"
        rows = model.get_input_embeddings().weight.shape[0]
        assert len(tokenizer) <= rows, f"tokenizer has {len(tokenizer)} tokens, the embedding only {rows} rows"
        assert tokenizer.pad_token_id is not None, "the tokenizer has no pad token after loading"
        del again, first, second

    encoder = make_encoder(tokenizer, family, max_length=512)
    with report.check("encoder round trip"):
        _check_round_trip(model, tokenizer, family, encoder)
    with report.check("template"):
        _check_template(tokenizer, encoder)
    if family.capability("lora").usable and family.default_lora_targets:
        with report.check("capability lora"):
            names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
            # a family may list the names of several layouts (GLM-4: THUDM's and transformers'); peft
            # adapts what matches and refuses a list that matches nothing
            assert names & set(family.default_lora_targets), (
                f"default_lora_targets {list(family.default_lora_targets)} name no module of the model")
    else:
        report.skip("capability lora", "the family does not claim lora or has no default targets")
    if family.capability("gradient_checkpointing").usable:
        with report.check("capability gradient_checkpointing"):
            _check_checkpointing(model, encoder)
    else:
        report.skip("capability gradient_checkpointing", family.capability("gradient_checkpointing").reason)
    if family.capability("packing").usable:
        with report.check("capability packing"):
            _check_packing(model, tokenizer, encoder)
    else:
        report.skip("capability packing", family.capability("packing").reason)
    del model

    data = write_data(os.path.join(work, "data"))
    with report.check("training"):
        run = train_run(preset, "full", os.path.join(work, "run"), data, lr=lr, steps=steps)
        before, after = run.result.eval_loss_before, run.result.eval_loss_after
        assert after < before - 0.05, f"{steps} full fine-tuning steps (lr {lr}) took the eval loss {before:.3f} -> {after:.3f}"
    with report.check("reload"):
        diff = float((reload_logits(run) - run.saved_logits).abs().max())
        assert diff <= RELOAD_TOL, f"the reloaded run's logits differ from the trained model's by {diff:.2e}"
    with report.check("cached generation"):
        _check_cache(run.run_dir, prefix_lm)
    with report.check("batched generation"):
        batched, single = batched_vs_single(run.run_dir)
        assert batched == single, f"batched generation {batched} != one by one {single}"
        assert any(batched), "every prompt generated nothing"


def _check_round_trip(model, tokenizer, family, encoder) -> None:
    from lmforge.data.encoding import IGNORE_INDEX
    from lmforge.inference.generation import Completion
    from lmforge.plugins.descriptors import Example, Message

    comp = Completion.from_model(model, tokenizer, family)
    for prompt, answer in (("What is 2 plus 3?", "5"), ("小明有5个苹果", "好的 5")):
        feats = encoder.encode(Example(messages=(Message("user", prompt), Message("assistant", answer))))
        assert feats is not None, f"encode() dropped a short example ({prompt!r})"
        ids, labels = list(feats["input_ids"]), list(feats["labels"])
        assert len(ids) == len(labels), "input_ids and labels differ in length"
        start = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), None)
        assert start is not None, f"no trained label in an encoded example ({prompt!r} -> {answer!r})"
        want = comp.encode(prompt)
        assert ids[:start] == want, (f"the training prompt of {prompt!r} is {ids[:start]}, generation starts from "
                                     f"{want}: training and inference render the prompt differently")
        answer_ids = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
        assert answer.strip() in comp.decode(answer_ids).strip() or comp.decode(answer_ids).strip() in answer, (
            f"the trained labels decode to {comp.decode(answer_ids)!r}, not the answer {answer!r}")


def _check_template(tokenizer, encoder) -> None:
    from lmforge.plugins.chat_jinja import chat_template_for

    jinja = chat_template_for(encoder)
    for turns in CONVERSATIONS:
        ids = encoder.encode_prompt(_messages(turns))
        assert ids, f"the template renders {turns} to no tokens"
        if jinja is None:
            continue  # no Jinja form (GLM): the encoder is the only renderer, already round-tripped
        got = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in turns], chat_template=jinja,
                                            add_generation_prompt=True, tokenize=True)
        got = list(got["input_ids"] if hasattr(got, "keys") else got)
        assert got == ids, (f"apply_chat_template with the saved chat_template gives {got}, training renders {ids} "
                            f"for {turns}")


def _check_checkpointing(model, encoder) -> None:
    import torch

    from lmforge.data.collate import make_collator
    from lmforge.plugins.descriptors import Example, Message

    ex = Example(messages=(Message("user", "What is 2 plus 3?"), Message("assistant", "2 + 3 = 5.")))
    batch = make_collator(encoder, encoder.tokenizer)([encoder.encode(ex)])
    model.train()
    try:
        torch.manual_seed(0)  # the same dropout masks in both passes
        with torch.no_grad():
            plain = model(**batch, use_cache=False).loss
        # newer transformers call it activation checkpointing (the old names warn); older have only the old names
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(0)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        assert torch.allclose(loss.detach(), plain, atol=1e-5), f"loss {float(loss)} with checkpointing, {float(plain)} without"
        assert any(p.grad is not None for p in model.parameters()), "no gradient reached the parameters"
    finally:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        model.zero_grad(set_to_none=True)
        model.eval()


def _check_packing(model, tokenizer, encoder) -> None:
    from lmforge.data.collate import make_collator
    from lmforge.packing import prepare_packed_training
    from lmforge.plugins.descriptors import Example, Message

    texts = [("What is 2 plus 3?", "2 + 3 = 5."), ("Hi", "Hello! How can I help?"),
             ("Anna has 4 apples and gets 3 more. How many?", "7"), ("你好", "你好！很高兴见到你。")]
    feats = [encoder.encode(Example(messages=(Message("user", q), Message("assistant", a)))) for q, a in texts]
    model.train()
    setup = prepare_packed_training(model, encoder, tokenizer, feats, max_length=256,
                                    fallback=make_collator(encoder, tokenizer))  # raises when samples mix
    setup.restore(model)
    model.eval()


def _greedy(comp, prompts, use_cache: bool, steps: int = 8):
    import torch

    batch = comp.prepare_batch([comp.encode(p) for p in prompts])
    with torch.no_grad():
        out = comp.model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                  use_cache=use_cache, output_logits=True, return_dict_in_generate=True,
                                  pad_token_id=comp.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
    return batch, out.sequences, torch.stack(out.logits, 1).float()


def teacher_forced_logits(comp, batch, seq, steps: int = 8):
    """Per-step logits of one forward over the generated ``seq``, the answer marked as trained.

    The uncached reference of a prefix-LM (CPM-Ant attends bidirectionally over its
    context, so recomputing the whole sequence each step would make the generated
    tokens context too): its labels-driven mask (context = prompt, causal from the
    first trained token) is what its cached decoding must match.
    """
    import torch

    width = batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(seq.shape[0], steps, dtype=torch.long)], 1)
    labels = seq.clone()
    labels[:, :width] = -100
    with torch.no_grad():
        logits = comp.model(input_ids=seq, attention_mask=mask, labels=labels).logits.float()
    return logits[:, width - 1:-1]


def _check_cache(run_dir: str, prefix_lm: bool) -> None:
    import torch

    from lmforge.inference.generation import Completion

    comp = Completion(run_dir, dtype="float32")
    for prompts in GENERATION_PROMPTS:
        batch, seq, logits = _greedy(comp, prompts, use_cache=True)
        if prefix_lm:
            reference = teacher_forced_logits(comp, batch, seq)
            assert torch.equal(reference.argmax(-1), seq[:, -reference.shape[1]:]), (
                f"{prompts}: cached greedy tokens are not the argmax of one forward over the sequence")
        else:
            _, seq_full, reference = _greedy(comp, prompts, use_cache=False)
            assert torch.equal(seq, seq_full), f"{prompts}: cached greedy tokens {seq.tolist()} != uncached {seq_full.tolist()}"
        diff = float((logits - reference).abs().max())
        assert diff <= TOKEN_TOL, f"{prompts}: per-step logits differ by {diff:.2e} between cached and uncached decoding"
