"""``lmforge predict``: batch generation over a data file, resumable, with metrics.

Reads any data format lmforge trains on (the same readers), streams records in
batches through :class:`~lmforge.inference.generation.Completion`, and appends one JSON line
per input to the output: ``id`` (``file:line``, ``#k`` for the k-th example of a
packed line), ``prompt``, ``prediction``, ``finish_reason`` and, where the record
has an answer, ``reference``. Each batch is flushed and fsync'ed, so a re-run
after a kill skips every id already in the output (a torn last line is dropped)
and continues. When references exist, ``metrics.json`` (beside the output) holds
exact match, BLEU-4 and ROUGE over every scored line (:mod:`lmforge.inference.metrics`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Iterator

from lmforge.plugins.descriptors import Example, Message
from lmforge.errors import DataError, LmforgeError


@dataclass
class Item:
    id: str
    prompt: str | list[dict]
    messages: list[Message] | None
    text: str | None
    reference: str | None


def items(path: str, fmt: str = "auto") -> Iterator[Item]:
    """Prediction items of a data file: the conversation up to its last answer, and that answer."""
    from lmforge.data.readers import read_examples

    name = os.path.basename(path)
    for line, examples in read_examples(path, fmt):
        for k, ex in enumerate(examples):
            iid = f"{name}:{line}" + (f"#{k}" if len(examples) > 1 else "")
            yield to_item(iid, ex)


def to_item(iid: str, ex: Example) -> Item:
    if ex.text is not None:
        return Item(iid, ex.text, None, ex.text, None)
    msgs = list(ex.messages)
    reference = None
    if msgs and msgs[-1].role == "assistant":
        reference = msgs[-1].content
        msgs = msgs[:-1]
    if not msgs:
        raise DataError(f"{iid}: no prompt before the answer")
    if len(msgs) == 1 and msgs[0].role == "user":
        prompt: str | list[dict] = msgs[0].content
    else:
        prompt = [{"role": m.role, "content": m.content} for m in msgs]
    return Item(iid, prompt, msgs, None, reference)


def done_ids(output: str) -> set[str]:
    """Ids already written to ``output``; a torn last line (a kill mid-write) is cut off."""
    if not os.path.exists(output):
        return set()
    ids: set[str] = set()
    good = 0
    with open(output, "rb") as f:
        data = f.read()
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict) or "id" not in row:
            raise LmforgeError(f"{output}: line {len(ids) + 1} is not a prediction row; choose another --output")
        ids.add(row["id"])
        good += len(raw)
    if good < len(data):
        with open(output, "r+b") as f:
            f.truncate(good)
    return ids


def write_metrics(output: str) -> dict | None:
    """Score every row of ``output`` that has a reference; write ``metrics.json`` beside it."""
    from lmforge.inference.metrics import corpus_scores

    pairs = []
    with open(output, encoding="utf-8") as f:
        for raw in f:
            row = json.loads(raw)
            if row.get("reference") is not None:
                pairs.append((row["prediction"], row["reference"]))
    if not pairs:
        return None
    result = corpus_scores(pairs)
    path = metrics_path(output)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return result


def metrics_path(output: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(output)), "metrics.json")


def check_args(data: str, output: str, batch_size: int) -> None:
    """The checks on predict's inputs, cheap enough to run before the model loads."""
    if batch_size < 1:
        raise LmforgeError(f"--batch-size: must be >= 1 (got {batch_size})")
    if not os.path.isfile(data):
        raise LmforgeError(f"--data: {data}: no such file")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise LmforgeError(f"--output: directory {out_dir} does not exist")


def predict(completion, data: str, output: str, *, fmt: str = "auto", batch_size: int = 8, params=None,
            metrics: bool = True, progress: bool = True) -> dict:
    """Run prediction (module doc); returns ``{"written", "skipped", "tokens", "seconds", "metrics"}``."""
    from lmforge.inference.generation import Request, SamplingParams

    check_args(data, output, batch_size)
    params = params or SamplingParams()
    seen = done_ids(output)
    bar = _progress(progress)
    written = tokens = 0
    start = time.perf_counter()

    def flush(batch: list[Item], f) -> None:
        nonlocal written, tokens
        requests = [Request(completion.encode(it.messages) if it.messages is not None
                            else completion.encode_raw(it.text), params) for it in batch]
        results = completion.run(requests)
        for it, res in zip(batch, results):
            row = {"id": it.id, "prompt": it.prompt, "prediction": res.text, "finish_reason": res.finish_reason}
            if params.num_return_sequences > 1:
                row["predictions"] = res.texts
            if it.reference is not None:
                row["reference"] = it.reference
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            tokens += res.completion_tokens
        f.flush()
        os.fsync(f.fileno())
        written += len(batch)
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):.1f} tok/s")

    skipped = 0
    with open(output, "a", encoding="utf-8") as f:
        batch: list[Item] = []
        for it in items(data, fmt):
            if it.id in seen:
                skipped += 1
                continue
            batch.append(it)
            if len(batch) == batch_size:
                flush(batch, f)
                batch = []
        if batch:
            flush(batch, f)
    if bar is not None:
        bar.close()
    summary = {"written": written, "skipped": skipped, "tokens": tokens,
               "seconds": round(time.perf_counter() - start, 3), "metrics": None}
    if metrics:
        summary["metrics"] = write_metrics(output)
    return summary


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="predict", unit="rec", dynamic_ncols=True)
