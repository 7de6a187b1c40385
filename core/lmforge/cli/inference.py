"""Inference commands: ``lmforge predict``, ``lmforge serve`` and ``lmforge chat``.

Like the rest of the CLI this module imports click only; torch, FastAPI and
uvicorn are imported inside the command bodies.
"""

from __future__ import annotations

import json
import os
import sys

import click

from lmforge.errors import LmforgeError, user_errors
from lmforge.runtime.threads import click_option as threads_option
from lmforge.runtime.threads import request as request_threads


def sampling_options(fn):
    """``--max-new-tokens --temperature --top-p --top-k --repetition-penalty --stop --seed`` (shared)."""
    options = [
        click.option("--max-new-tokens", type=int, default=128, show_default=True),
        click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy"),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=int, default=0, show_default=True, help="0 = off"),
        click.option("--repetition-penalty", type=float, default=1.0, show_default=True),
        click.option("--stop", multiple=True, help="stop string (repeatable)"),
        click.option("--seed", type=int, default=None),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_params(max_new_tokens, temperature, top_p, top_k, repetition_penalty, stop, seed, n=1):
    from lmforge.errors import ConfigError
    from lmforge.inference.generation import SamplingParams

    try:
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty, num_return_sequences=n, stop=tuple(stop),
                              seed=seed)
    except ConfigError as exc:  # name the flag, not the keyword
        name, _, why = str(exc).partition(": ")
        raise ConfigError(f"--{name.replace('_', '-')}: {why}") from None


def parse_adapters(values) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise LmforgeError(f"--adapter {value}: expected NAME=PATH")
        if not os.path.isdir(path):
            raise LmforgeError(f"--adapter {value}: {path} is not a directory")
        out[name] = path
    return out


# ------------------------------------------------------------------ predict
@click.command("predict")
@click.argument("model")
@click.option("--data", required=True, help="input file, in any data format lmforge trains on")
@click.option("--output", "-o", required=True, help="JSONL predictions; a re-run skips ids already in it")
@click.option("--format", "fmt", default="auto", show_default=True, help="data format name")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--num-return-sequences", "n", type=int, default=1, show_default=True)
@sampling_options
@click.option("--adapter", default=None, help="apply this adapter (or run directory) on top")
@click.option("--no-metrics", is_flag=True, help="do not write metrics.json")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@click.option("--trust-remote-code", is_flag=True)
@threads_option
@user_errors
def predict_cmd(model, data, output, fmt, batch_size, n, max_new_tokens, temperature, top_p, top_k,
                repetition_penalty, stop, seed, adapter, no_metrics, quiet, trust_remote_code, threads) -> None:
    """Generate for every record of --data with MODEL (run directory, checkpoint or preset)."""
    request_threads(threads)
    params = make_params(max_new_tokens, temperature, top_p, top_k, repetition_penalty, stop, seed, n)
    from lmforge.inference.predict import check_args, metrics_path, predict

    check_args(data, output, batch_size)  # before the model loads
    from lmforge.inference.generation import Completion

    comp = Completion(model, adapter=adapter, trust_remote_code=trust_remote_code)
    summary = predict(comp, data, output, fmt=fmt, batch_size=batch_size, params=params, metrics=not no_metrics,
                      progress=not quiet)
    msg = f"[lmforge] {summary['written']} predictions written to {output}"
    if summary["skipped"]:
        msg += f" ({summary['skipped']} already there, skipped)"
    click.echo(msg, err=True)
    if summary["metrics"]:
        click.echo(f"[lmforge] metrics ({metrics_path(output)}): " + json.dumps(summary["metrics"]), err=True)


# ------------------------------------------------------------------ serve
@click.command("serve")
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", default=None, envvar="LMFORGE_API_KEY",
              help="require 'Authorization: Bearer KEY' (or set LMFORGE_API_KEY)")
@click.option("--served-model-name", default=None, help="model name clients use (default: the directory name)")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=PATH",
              help="also serve this LoRA adapter on the same base, as model NAME (repeatable)")
@click.option("--max-batch-size", type=int, default=16, show_default=True, help="sequences per generate call")
@click.option("--max-queue", type=int, default=256, show_default=True, help="waiting requests before 503")
@click.option("--max-tokens-default", type=int, default=256, show_default=True,
              help="max_tokens of a chat request that sets none")
@click.option("--ui", is_flag=True, help="serve a chat page at /")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default="transformers", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
@click.option("--trust-remote-code", is_flag=True)
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@threads_option
@user_errors
def serve_cmd(model, host, port, api_key, served_model_name, adapters, max_batch_size, max_queue,
              max_tokens_default, ui, backend, dtype, device, trust_remote_code, log_level, threads) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (see docs/inference.md)."""
    request_threads(threads)
    adapter_map = parse_adapters(adapters)
    if max_batch_size < 1:
        raise LmforgeError(f"--max-batch-size: must be >= 1 (got {max_batch_size})")
    if max_queue < 1:
        raise LmforgeError(f"--max-queue: must be >= 1 (got {max_queue})")
    if backend == "vllm":
        from lmforge.inference.serve import vllm_command, vllm_missing

        if ui:
            raise LmforgeError("--ui: the chat page is served by the transformers backend only")
        missing = vllm_missing()
        if missing:
            raise LmforgeError(f"--backend vllm: {missing}; use --backend transformers (the default) instead")
        cmd = vllm_command(model, host=host, port=port, api_key=api_key, served_model_name=served_model_name,
                           adapters=adapter_map, max_batch_size=max_batch_size)
        click.echo(f"[lmforge] exec: {' '.join(c if c != api_key else '***' for c in cmd)}", err=True)
        os.execv(cmd[0], cmd)
    for mod in ("fastapi", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            raise LmforgeError(f"lmforge serve needs {mod}: pip install 'lmforge[serve]'") from None
    from lmforge.inference.serve import load_server, run_server

    server = load_server(model, adapters=adapter_map, served_model_name=served_model_name, api_key=api_key,
                         max_batch_size=max_batch_size, max_queue=max_queue, dtype=dtype, device=device,
                         trust_remote_code=trust_remote_code, default_max_tokens=max_tokens_default)
    names = ", ".join(server.models.names)
    where = f"http://{host}:{port}"
    click.echo(f"[lmforge] serving {names} at {where}/v1" + (f" (chat page: {where}/)" if ui else "")
               + (" (API key required)" if api_key else ""), err=True)
    run_server(server, host, port, ui=ui, log_level=log_level)
    click.echo("[lmforge] server stopped", err=True)


# ------------------------------------------------------------------ chat
@click.command("chat")
@click.argument("model")
@click.option("--adapter", default=None, help="apply this adapter (or run directory) on top")
@click.option("--system", default=None, help="system prompt")
@sampling_options
@click.option("--trust-remote-code", is_flag=True)
@threads_option
@user_errors
def chat_cmd(model, adapter, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty, stop, seed,
             trust_remote_code, threads) -> None:
    """Chat with MODEL in the terminal, with history and the family's chat template.

    Commands: /clear forgets the history, /system TEXT sets the system prompt,
    /exit (or Ctrl-D) quits.
    """
    from lmforge.plugins.descriptors import Message
    from lmforge.inference.generation import Completion

    params = make_params(max_new_tokens, temperature, top_p, top_k, repetition_penalty, stop, seed)
    request_threads(threads)
    comp = Completion(model, adapter=adapter, trust_remote_code=trust_remote_code)
    kwargs = dict(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                  top_k=params.top_k, repetition_penalty=params.repetition_penalty, stop=params.stop,
                  seed=params.seed)
    history: list[Message] = []
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo("[lmforge] chat: /clear, /system TEXT, /exit", err=True)
    while True:
        try:
            line = input(">>> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/clear":
            history = []
            click.echo("[history cleared]")
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            history = []
            click.echo("[system prompt set; history cleared]")
            continue
        messages = ([Message("system", system)] if system else []) + history + [Message("user", text)]
        answer = []
        try:
            for delta in comp.stream(messages, **kwargs):
                answer.append(delta)
                click.echo(delta, nl=False)
        except KeyboardInterrupt:  # stop this answer, keep the session
            click.echo(" [interrupted]", nl=False)
        click.echo()
        history += [Message("user", text), Message("assistant", "".join(answer))]


COMMANDS = (predict_cmd, serve_cmd, chat_cmd)
