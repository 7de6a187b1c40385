"""``lmforge serve``: an OpenAI-compatible HTTP server on FastAPI + uvicorn.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST
/v1/chat/completions`` (both with ``stream: true`` as server-sent events ending
in ``data: [DONE]``), ``GET /health``, and with ``--ui`` a chat page at ``/``.
Concurrent requests are batched by :class:`~lmforge.inference.batching.Batcher`. Errors
use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``, with
401 (API key), 400 (bad request), 404 (unknown model or path) and 503 (queue
full or shutting down).

Prompts: chat messages go through the family's chat template, as in training;
a ``/v1/completions`` prompt is rendered the way ``lmforge generate`` renders it
(the run's template: a user turn for chat-tuned runs, plain text for runs trained
with ``template: raw``); ``"raw": true`` in the body sends it as plain text.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import Any

from starlette.requests import Request as HttpRequest  # module level: FastAPI resolves annotations here

from lmforge.inference.batching import Batcher, Job, QueueFull, ServedModels, UnknownModel
from lmforge.errors import ConfigError, LmforgeError
from lmforge.inference.generation import GenerationResult, Request, SamplingParams, as_messages

UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "tools", "functions", "logit_bias",
               "response_format")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _field(body: dict, name: str, kinds, default=None, *, check=None, what: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise ApiError(400, f"{name}: expected {what or _kind_name(kinds)}, got {json.dumps(value)[:60]}", param=name)
    if check is not None and not check(value):
        raise ApiError(400, f"{name}: {what} (got {json.dumps(value)[:60]})", param=name)
    return value


def _as_tuple(kinds):
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_name(kinds) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kinds))


class Server:
    """The request handling behind the FastAPI routes (kept apart from them so it reads top to bottom)."""

    def __init__(self, models: ServedModels, batcher: Batcher, *, api_key: str | None = None,
                 default_max_tokens: int = 256) -> None:
        self.models, self.batcher, self.api_key = models, batcher, api_key
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())

    # -------------------------------------------------------------- checks
    def authorize(self, header: str | None) -> None:
        if self.api_key is None:
            return
        if not header:
            raise ApiError(401, "missing API key: send it as 'Authorization: Bearer <key>'", code="invalid_api_key")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    def params(self, body: dict, *, chat: bool) -> SamplingParams:
        for name in UNSUPPORTED:
            if body.get(name) not in (None, False, 0, [], {}):
                raise ApiError(400, f"{name}: not supported by lmforge serve", param=name)
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
            raise ApiError(400, "stop: expected a string or a list of non-empty strings", param="stop")
        if stop is not None and len(stop) > 4:
            raise ApiError(400, "stop: at most 4 stop sequences", param="stop")
        max_key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        default_max = self.default_max_tokens if chat else 16  # OpenAI's default for completions
        max_tokens = _field(body, max_key, int, default_max, check=lambda v: v >= 1, what="an integer >= 1")
        temperature = _field(body, "temperature", (int, float), 1.0, check=lambda v: 0 <= v <= 2,
                             what="a number between 0 and 2")
        top_p = _field(body, "top_p", (int, float), 1.0, check=lambda v: 0 < v <= 1, what="a number in (0, 1]")
        top_k = _field(body, "top_k", int, 0, check=lambda v: v >= 0, what="an integer >= 0")
        n = _field(body, "n", int, 1, check=lambda v: 1 <= v <= 128, what="an integer between 1 and 128")
        seed = _field(body, "seed", int, None)
        rep = _field(body, "repetition_penalty", (int, float), 1.0, check=lambda v: v > 0, what="a number > 0")
        if body.get("frequency_penalty") not in (None, 0) or body.get("presence_penalty") not in (None, 0):
            raise ApiError(400, "frequency_penalty/presence_penalty: not supported; use repetition_penalty",
                           param="frequency_penalty")
        try:
            return SamplingParams(max_new_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p),
                                  top_k=top_k, repetition_penalty=float(rep), num_return_sequences=n,
                                  stop=tuple(stop or ()), seed=seed)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None

    def model_name(self, body: dict) -> str:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model: required (one of: " + ", ".join(self.models.names) + ")", param="model")
        if name not in self.models.routes:
            raise ApiError(404, f"the model {name!r} does not exist; served: {', '.join(self.models.names)}",
                           param="model", code="model_not_found")
        return name

    def prompt_ids(self, body: dict, *, chat: bool) -> list[list[int]]:
        comp = self.models.completion
        try:
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise ApiError(400, "messages: expected a non-empty list of {role, content}", param="messages")
                norm = []
                for i, m in enumerate(messages):
                    if isinstance(m, dict) and isinstance(m.get("content"), list):  # content parts: text only
                        parts = m["content"]
                        if not all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
                            raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                                           param="messages")
                        m = {**m, "content": "".join(p.get("text", "") for p in parts)}
                    if isinstance(m, dict) and m.get("role") == "developer":
                        m = {**m, "role": "system"}
                    norm.append(m)
                return [comp.encode(as_messages(norm))]
            prompt = body.get("prompt")
            raw = bool(body.get("raw", False))
            if isinstance(prompt, str):
                prompts = [prompt]
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                prompts = prompt
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                return [list(prompt)]
            else:
                raise ApiError(400, "prompt: expected a string, a list of strings or a list of token ids",
                               param="prompt")
            encode = comp.encode_raw if raw else comp.encode
            return [encode(p) for p in prompts]
        except ConfigError as exc:
            raise ApiError(400, str(exc), param="messages" if chat else "prompt") from None

    # -------------------------------------------------------------- run
    def submit(self, model: str, prompts: list[list[int]], params: SamplingParams, loop,
               on_delta=None) -> tuple[list[Request], list[asyncio.Future]]:
        requests, futures = [], []
        for ids in prompts:
            if not ids:
                raise ApiError(400, "prompt: empty after tokenization", param="prompt")
            try:
                self.models.completion.check_prompt(ids, params)
            except ConfigError as exc:
                raise ApiError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        for k, ids in enumerate(prompts):
            fut = loop.create_future()
            delta = None if on_delta is None else (lambda j, text, k=k: on_delta(k, j, text))
            req = Request(ids, params, on_delta=delta)

            def done(result, error, fut=fut):
                loop.call_soon_threadsafe(_resolve, fut, result, error)

            try:
                self.batcher.submit(Job(model, req, done))
            except QueueFull as exc:
                for r in requests:
                    r.cancelled.set()
                raise ApiError(503, f"server overloaded: {exc}; retry later", type_="server_error",
                               code="queue_full") from None
            except UnknownModel as exc:
                raise ApiError(404, str(exc), param="model", code="model_not_found") from None
            except LmforgeError as exc:
                raise ApiError(400, str(exc)) from None
            requests.append(req)
            futures.append(fut)
        return requests, futures


class _Deltas:
    """Streamed text handed from the generation thread to the event loop, coalesced.

    The generation thread appends; the loop is woken once per burst, not once
    per token, and sends everything that arrived meanwhile as one chunk per
    sequence. Under load a chunk may carry several tokens (as OpenAI's may);
    without load it carries one.
    """

    def __init__(self, loop) -> None:
        import threading

        self.loop = loop
        self.ready = asyncio.Event()
        self._lock = threading.Lock()
        self._items: list[tuple[int, str]] = []
        self._woken = False

    def put(self, index: int, text: str) -> None:  # generation thread
        with self._lock:
            self._items.append((index, text))
            if self._woken:
                return
            self._woken = True
        self.loop.call_soon_threadsafe(self.ready.set)

    def take(self) -> list[tuple[int, str]]:  # event loop
        with self._lock:
            items, self._items, self._woken = self._items, [], False
            self.ready.clear()
        merged: dict[int, list[str]] = {}
        for index, text in items:
            merged.setdefault(index, []).append(text)
        return [(index, "".join(parts)) for index, parts in merged.items()]


def _resolve(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    elif result is None:
        fut.set_exception(asyncio.CancelledError())
    else:
        fut.set_result(result)


def _usage(prompts: list[list[int]], results: list[GenerationResult]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def build_app(server: Server, *, ui: bool = False):
    """The FastAPI application for ``server``."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="lmforge serve", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_, exc: ApiError):
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc):
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, exc):
        return JSONResponse(ApiError(400, str(exc)).body(), status_code=400)

    async def read_body(request: HttpRequest) -> dict:
        server.authorize(request.headers.get("authorization"))
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object", code="invalid_json")
        return body

    @app.get("/health")
    async def health():
        b = server.batcher
        return {"status": "ok", "queued": b.queued(), "batches": b.batches_run, "sequences": b.rows_run}

    @app.get("/v1/models")
    async def list_models(request: HttpRequest):
        server.authorize(request.headers.get("authorization"))
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": server.created, "owned_by": "lmforge",
             "root": server.models.name} for name in server.models.names]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str, request: HttpRequest):
        server.authorize(request.headers.get("authorization"))
        if name not in server.models.routes:
            raise ApiError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
        return {"id": name, "object": "model", "created": server.created, "owned_by": "lmforge"}

    async def handle(request: HttpRequest, chat: bool):
        body = await read_body(request)
        model = server.model_name(body)
        params = server.params(body, chat=chat)
        prompts = server.prompt_ids(body, chat=chat)
        stream = _field(body, "stream", bool, False)
        loop = asyncio.get_running_loop()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        n = params.num_return_sequences
        if not stream:
            requests, futures = server.submit(model, prompts, params, loop)
            try:
                results = await asyncio.gather(*futures)
            except asyncio.CancelledError:
                for r in requests:
                    r.cancelled.set()
                raise
            choices = []
            for k, res in enumerate(results):
                for j, (text, reason) in enumerate(zip(res.texts, res.finish_reasons)):
                    index = k * n + j
                    if chat:
                        choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                        "finish_reason": _finish(reason), "logprobs": None})
                    else:
                        choices.append({"index": index, "text": text, "finish_reason": _finish(reason),
                                        "logprobs": None})
            return {"id": rid, "object": kind, "created": created, "model": model, "choices": choices,
                    "usage": _usage(prompts, results)}

        deltas = _Deltas(loop)

        def on_delta(k, j, text):
            deltas.put(k * n + j, text)

        requests, futures = server.submit(model, prompts, params, loop, on_delta=on_delta)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index, text=None, finish=None, role=False):
            if chat:
                delta = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
            return "data: " + json.dumps({"id": rid, "object": chunk_kind, "created": created, "model": model,
                                          "choices": [choice]}, ensure_ascii=False) + "\n\n"

        async def sse():
            try:
                if chat:
                    for index in range(len(prompts) * n):
                        yield chunk(index, role=True, text="")
                pending = set(futures)
                while pending:
                    waiter = asyncio.ensure_future(deltas.ready.wait())
                    await asyncio.wait(pending | {waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    for index, text in deltas.take():
                        yield chunk(index, text=text)
                    pending = {f for f in pending if not f.done()}
                for index, text in deltas.take():
                    yield chunk(index, text=text)
                results = [f.result() for f in futures]
                for k, res in enumerate(results):
                    for j, reason in enumerate(res.finish_reasons):
                        yield chunk(k * n + j, finish=_finish(reason))
                if include_usage:
                    usage = {"id": rid, "object": chunk_kind, "created": created, "model": model, "choices": [],
                             "usage": _usage(prompts, results)}
                    yield "data: " + json.dumps(usage) + "\n\n"
                yield "data: [DONE]\n\n"
            except Exception as exc:  # the status line is sent already: report in the stream
                err = ApiError(500, f"generation failed: {exc}", type_="server_error").body()
                yield "data: " + json.dumps(err) + "\n\n"
            finally:  # the client went away (or we are done): free its rows
                for r in requests:
                    r.cancelled.set()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await handle(request, chat=True)

    if ui:
        from lmforge.inference.webui import page

        html = page(server.models.names, auth=server.api_key is not None)

        @app.get("/", response_class=HTMLResponse)
        async def index():
            return html

    return app


def load_server(model: str, *, adapters: dict[str, str] | None = None, served_model_name: str | None = None,
                api_key: str | None = None, max_batch_size: int = 16, max_queue: int = 256,
                dtype: str = "auto", device: str | None = None, trust_remote_code: bool = False,
                default_max_tokens: int = 256) -> Server:
    """Load the model and adapters and start the batcher (no HTTP yet)."""
    import os

    from lmforge.inference.generation import Completion

    comp = Completion(model, trust_remote_code=trust_remote_code, dtype=dtype, device=device)
    name = served_model_name or os.path.basename(os.path.normpath(model))
    models = ServedModels(comp, name, adapters)
    batcher = Batcher(models, max_batch_size=max_batch_size, max_queue=max_queue)
    return Server(models, batcher, api_key=api_key, default_max_tokens=default_max_tokens)


def run_server(server: Server, host: str, port: int, *, ui: bool = False, log_level: str = "warning") -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn's signal handling), then stop the batcher."""
    import signal
    import threading

    import uvicorn

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    app = build_app(server, ui=ui)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal it caught
    # through the previous handler: make that a KeyboardInterrupt for SIGTERM too, and end quietly.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass
    finally:
        server.batcher.stop()


def vllm_command(model: str, *, host: str, port: int, api_key: str | None, served_model_name: str | None,
                 adapters: dict[str, str] | None, max_batch_size: int) -> list[str]:
    """The vLLM OpenAI server command for an lmforge run (a full run is an HF checkpoint; an adapter run is base + LoRA)."""
    import os
    import sys

    from lmforge.modeling.loading import base_model_path, read_run_config

    run_cfg = read_run_config(model) if os.path.isdir(model) else None
    lora: dict[str, str] = dict(adapters or {})
    name = served_model_name or os.path.basename(os.path.normpath(model))
    target = model
    if run_cfg is not None and not os.path.isfile(os.path.join(model, "config.json")):
        method = (run_cfg.get("peft") or {}).get("method", "full")
        if not os.path.isfile(os.path.join(model, "adapter_config.json")):
            raise LmforgeError(f"{model}: a {method!r} run is not a peft adapter; merge it first "
                               f"(lmforge merge) to serve it with vLLM")
        target = base_model_path(model, run_cfg)
        lora = {name: model, **lora}
        name = os.path.basename(os.path.normpath(target))
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", target, "--host", host,
           "--port", str(port), "--served-model-name", name, "--max-num-seqs", str(max_batch_size)]
    if api_key:
        cmd += ["--api-key", api_key]
    if lora:
        cmd += ["--enable-lora", "--lora-modules", *[f"{k}={v}" for k, v in lora.items()]]
    return cmd


def vllm_missing() -> str | None:
    """Why ``--backend vllm`` cannot run here, or ``None``."""
    import importlib.util

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package is not installed (pip install vllm)")
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    except ImportError:
        missing.append("torch is not installed")
    return "; ".join(missing) or None
