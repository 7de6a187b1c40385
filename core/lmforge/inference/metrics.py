"""Generation metrics: exact match, BLEU-4 and ROUGE-1/2/L, computed the way the Chinese LLM toolkits do.

The ChatGLM P-tuning and PaddleNLP generation scripts, which the seeds' users
compare against, score a prediction against its reference like this (and so do
we, with the same maintained libraries, so figures are comparable):

* ROUGE-1/2/L F1 (``rouge-chinese``) over **jieba** word segmentation of both texts;
* BLEU-4 (``nltk`` ``sentence_bleu``, smoothing method 3) over **characters**;
* all figures ×100, averaged over examples; exact match compares the stripped texts.

Import cost: jieba's dictionary loads on first use (about a second).
"""

from __future__ import annotations

import logging
from typing import Iterable

from lmforge.errors import LmforgeError

METRIC_NAMES = ("exact_match", "bleu-4", "rouge-1", "rouge-2", "rouge-l")


def _libs():
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as exc:
        raise LmforgeError(f"generation metrics need {exc.name}: pip install 'lmforge[metrics]'") from None
    jieba.setLogLevel(logging.WARNING)
    return jieba, sentence_bleu, SmoothingFunction().method3, Rouge()


def score(prediction: str, reference: str, libs=None) -> dict[str, float]:
    """Metrics of one prediction (×100, exact match 0 or 100)."""
    jieba, sentence_bleu, smooth, rouge = libs or _libs()
    pred, ref = prediction.strip(), reference.strip()
    out = {"exact_match": 100.0 if pred == ref else 0.0}
    hyp_words = [w for w in jieba.cut(pred) if w.strip()]
    ref_words = [w for w in jieba.cut(ref) if w.strip()]
    if hyp_words and ref_words:
        scores = rouge.get_scores(" ".join(hyp_words), " ".join(ref_words))[0]
        out.update({f"rouge-{k}": v["f"] * 100 for k, v in (("1", scores["rouge-1"]), ("2", scores["rouge-2"]),
                                                             ("l", scores["rouge-l"]))})
    else:
        out.update({"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0})
    out["bleu-4"] = sentence_bleu([list(ref)], list(pred), smoothing_function=smooth) * 100 if pred and ref else 0.0
    return out


def corpus_scores(pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    """Average metrics over ``(prediction, reference)`` pairs, plus ``count``."""
    libs = _libs()
    total = dict.fromkeys(METRIC_NAMES, 0.0)
    count = 0
    for pred, ref in pairs:
        for k, v in score(pred, ref, libs).items():
            total[k] += v
        count += 1
    out = {k: round(v / count, 4) if count else 0.0 for k, v in total.items()}
    out["count"] = count
    return out
