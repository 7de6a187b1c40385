"""Dynamic batching: concurrent requests share ``generate`` calls.

A worker thread owns the model. Requests wait in a bounded queue; as soon as the
worker is free it takes every waiting request for the same served model (up to
``max_batch_size`` sequences; it first lets a burst arrive: it waits while
requests keep coming, until a ``batch_wait_s`` gap, at most ``max_wait_s``) and runs them as one batch through :meth:`Completion.run`, which gives
each row its own sampling parameters, stop strings and length. Finished or
cancelled rows end early; a request cancelled while still queued never runs.

This is dynamic (request-level) batching, not continuous batching: a request
that arrives while a batch runs waits for the next batch. transformers'
``generate`` cannot admit rows into a running batch; vLLM (``lmforge serve
--backend vllm``) can.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from lmforge.errors import LmforgeError
from lmforge.inference.generation import Completion, GenerationResult, Request


class QueueFull(LmforgeError):
    """More requests are waiting than ``max_queue`` allows."""


class UnknownModel(LmforgeError):
    """The request names a model that is not served."""


@dataclass
class Job:
    model: str
    request: Request
    on_done: Callable[[GenerationResult | None, BaseException | None], None]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return self.request.params.num_return_sequences


class ServedModels:
    """One loaded base model and the names it answers to: the model itself and any LoRA adapters on it.

    ``adapters`` maps a served name to a peft adapter directory (or an lmforge
    adapter run); all of them are loaded onto the same base with peft's
    multi-adapter support and selected per batch.
    """

    def __init__(self, completion: Completion, name: str, adapters: dict[str, str] | None = None) -> None:
        self.completion = completion
        self.name = name
        self.routes: dict[str, str | None] = {}
        model = completion.model
        from_peft = _is_peft(model)
        self.routes[name] = _active_adapter(model) if from_peft else None
        for served, path in (adapters or {}).items():
            if served in self.routes:
                raise LmforgeError(f"--adapter {served}={path}: the name {served!r} is already served")
            peft_dir = _peft_dir(path)
            if not _is_peft(model):
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, peft_dir, adapter_name=served, is_trainable=False)
            else:
                model.load_adapter(peft_dir, adapter_name=served, is_trainable=False)
            self.routes[served] = served
        model.eval()
        completion.model = model

    @property
    def names(self) -> list[str]:
        return list(self.routes)

    def check(self, name: str) -> None:
        if name not in self.routes:
            raise UnknownModel(f"model {name!r} is not served here; served: {', '.join(self.routes)}")

    @contextlib.contextmanager
    def select(self, name: str) -> Iterator[Completion]:
        self.check(name)
        model = self.completion.model
        target = self.routes[name]
        if not _is_peft(model):
            yield self.completion
        elif target is None:
            with model.disable_adapter():
                yield self.completion
        else:
            model.set_adapter(target)
            yield self.completion


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _active_adapter(model) -> str:
    active = model.active_adapter
    return active if isinstance(active, str) else active[0]


def _peft_dir(path: str) -> str:
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise LmforgeError(
            f"--adapter {path}: no adapter_config.json; only peft adapters (LoRA, DoRA, IA3, AdaLoRA ...) "
            f"can share one base model; serve other runs on their own"
        )
    return path


class Batcher:
    """Runs queued requests in batches on a worker thread (module doc)."""

    def __init__(self, models: ServedModels, *, max_batch_size: int = 16, max_queue: int = 256,
                 batch_wait_s: float = 0.01, max_wait_s: float = 0.1) -> None:
        if max_batch_size < 1:
            raise LmforgeError(f"--max-batch-size: must be >= 1 (got {max_batch_size})")
        if max_queue < 1:
            raise LmforgeError(f"--max-queue: must be >= 1 (got {max_queue})")
        self.models = models
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.max_wait_s = max_wait_s
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: list[Job] = []
        self._stopping = False
        self.batches_run = 0
        self.rows_run = 0
        self.rows_cancelled = 0  # rows ended early because their client went away
        self._thread = threading.Thread(target=self._loop, name="lmforge-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ API
    def submit(self, job: Job) -> None:
        self.models.check(job.model)
        job.request.params.validate()
        if job.rows > self.max_batch_size:
            raise LmforgeError(f"n: {job.rows} sequences exceed --max-batch-size {self.max_batch_size}")
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting (--max-queue {self.max_queue})")
            self._queue.append(job)
            self._cond.notify()

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop(self) -> None:
        """Cancel what is queued and running; wait for the worker."""
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            for job in self._running:
                job.request.cancelled.set()
            self._cond.notify_all()
        for job in pending:
            job.on_done(None, QueueFull("the server is shutting down"))
        self._thread.join(timeout=30)

    # ------------------------------------------------------------ worker
    def _take(self) -> list[Job]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
        # let a burst arrive: keep waiting while requests keep coming (a gap of batch_wait_s ends the
        # wait), at most max_wait_s after the first one, and not at all once a batch is full
        start = time.monotonic()
        while True:
            with self._cond:
                seen = len(self._queue)
                if sum(job.rows for job in self._queue) >= self.max_batch_size or self._stopping:
                    break
                left = self.max_wait_s - (time.monotonic() - start)
                if left <= 0:
                    break
                self._cond.wait(timeout=min(self.batch_wait_s, left))
                if len(self._queue) == seen:
                    break
        with self._cond:
            # drop requests whose client has gone before they ran
            alive = deque()
            for job in self._queue:
                if job.request.cancelled.is_set():
                    job.on_done(None, None)
                else:
                    alive.append(job)
            self._queue = alive
            if not self._queue:
                return []
            first = self._queue[0]
            batch, rows, rest = [], 0, deque()
            seeded = first.request.params.seed is not None
            for job in self._queue:
                fits = job.model == first.model and rows + job.rows <= self.max_batch_size
                # a seeded request runs alone, so its samples do not depend on its neighbours
                if seeded and batch:
                    fits = False
                if fits and not seeded and job.request.params.seed is not None:
                    fits = False
                if fits:
                    batch.append(job)
                    rows += job.rows
                else:
                    rest.append(job)
            self._queue = rest
            self._running = batch
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                with self._cond:
                    if self._stopping:
                        return
                continue
            try:
                with self.models.select(batch[0].model) as comp:
                    results = comp.run([job.request for job in batch])
                error: BaseException | None = None
            except BaseException as exc:  # reported to every request of the batch
                results, error = [None] * len(batch), exc
            finally:
                with self._cond:
                    self._running = []
            self.batches_run += 1
            self.rows_run += sum(job.rows for job in batch)
            self.rows_cancelled += sum(r.finish_reasons.count("cancelled") for r in results if r is not None)
            for job, result in zip(batch, results):
                try:
                    job.on_done(result, error)
                except Exception:  # a callback must not kill the worker
                    pass


def stats(batcher: Batcher) -> dict[str, Any]:
    return {"batches": batcher.batches_run, "rows": batcher.rows_run, "queued": batcher.queued()}
