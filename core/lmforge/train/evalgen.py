"""``eval_with_generation: true``: generation metrics at every evaluation (PaddleNLP's ``eval_with_do_generation``).

At each evaluation the model being trained greedily answers up to
``eval_generation.max_examples`` validation prompts, and exact match, BLEU-4 and
ROUGE-1/2/L (:mod:`lmforge.inference.metrics`) against their answers are logged as
``eval_exact_match``, ``eval_bleu-4``, ``eval_rouge-l`` ... beside ``eval_loss``:
into ``train_log.jsonl``, TensorBoard and the dict ``trainer.evaluate()`` returns.
"""

from __future__ import annotations

from typing import Any

from lmforge.config.spec import JobSpec
from lmforge.errors import ConfigError


def check(spec: JobSpec) -> None:
    """Refuse combinations that cannot work, before any work is done."""
    if not spec.eval.with_generation:
        return
    if not spec.data.valid_file:
        raise ConfigError("eval_with_generation: needs data.valid_file (the prompts and answers to score)")
    if spec.packing.enabled:
        raise ConfigError("eval_with_generation: not available with packing: true (training patches the "
                          "attention for packed rows); evaluate afterwards with `lmforge predict`")
    for mod in ("jieba", "rouge_chinese", "nltk"):
        try:
            __import__(mod)
        except ImportError:
            raise ConfigError(f"eval_with_generation: needs {mod}: pip install 'lmforge[metrics]'") from None


def callback(spec: JobSpec, family, tokenizer, registry):
    """The TrainerCallback, or ``None`` when ``eval_with_generation`` is off. Attach ``.trainer`` after building it."""
    opts = spec.eval
    if not opts.with_generation:
        return None
    from transformers import TrainerCallback

    from lmforge.data.readers import expand_paths, iter_examples
    from lmforge.inference.predict import to_item

    limit = opts.max_examples
    items = []
    for path in expand_paths(spec.data.valid_file, "data.valid_file"):
        for k, ex in enumerate(iter_examples(path, spec.data.format, registry, on_error="skip")):
            if ex.messages and ex.messages[-1].role == "assistant":
                items.append(to_item(f"{path}:{k}", ex))
            if len(items) >= limit:
                break
        if len(items) >= limit:
            break
    if not items:
        raise ConfigError("eval_with_generation: data.valid_file has no examples with an answer to score")

    class GenerationMetricsCallback(TrainerCallback):
        trainer: Any = None

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            import torch

            from lmforge.inference.generation import Completion, Request, SamplingParams
            from lmforge.inference.metrics import corpus_scores

            model = model if model is not None else self.trainer.model
            was_training = model.training
            comp = Completion.from_model(model, tokenizer, family, template=spec.data.template)
            params = SamplingParams(max_new_tokens=opts.max_new_tokens)
            preds = []
            bs = opts.batch_size
            with torch.no_grad():
                for i in range(0, len(items), bs):
                    chunk = items[i:i + bs]
                    results = comp.run([Request(comp.encode(it.messages), params) for it in chunk])
                    preds += [r.text for r in results]
            if was_training:
                model.train()
            scores = corpus_scores(zip(preds, [it.reference for it in items]))
            scores.pop("count")
            out = {f"eval_{k}": v for k, v in scores.items()}
            if metrics is not None:
                metrics.update(out)
            if self.trainer is not None:
                self.trainer.log(out)

    return GenerationMetricsCallback()
