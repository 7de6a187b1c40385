"""Serving throughput: ``lmforge serve`` under 1, 4 and 16 concurrent clients vs a sequential ``Completion`` loop.

    python benchmarks/serving.py [--model tiny-llama] [--requests 32] [--max-tokens 64] [--threads 1]

Every request is a greedy chat completion of ``--max-tokens`` tokens on a
different prompt, streamed through the official ``openai`` client, so the server
and the sequential loop generate the same tokens. Prints, per setting:
generated tokens/s, p50/p99 request latency, p50 time to first token, and the
ratio of tokens/s to the sequential loop. The server runs as its own process
(``lmforge serve``) with ``--threads`` torch threads; the loop uses the same.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def prompts(n: int) -> list[str]:
    return [f"Question {i}: what is {i % 9 + 1} plus {(i * 7) % 9 + 1}? Explain step by step." for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def sequential(model: str, qs: list[str], max_tokens: int, threads: int) -> dict:
    import torch

    from lmforge import Completion

    torch.set_num_threads(threads)
    comp = Completion(model, dtype="float32")
    comp.generate(qs[0], max_new_tokens=4)  # warm-up
    lat, tokens = [], 0
    start = time.perf_counter()
    for q in qs:
        t = time.perf_counter()
        res = comp.generate(q, max_new_tokens=max_tokens)
        lat.append(time.perf_counter() - t)
        tokens += res.completion_tokens
    wall = time.perf_counter() - start
    return {"tokens": tokens, "wall": wall, "lat": lat, "ttft": []}


def against_server(url: str, name: str, qs: list[str], max_tokens: int, clients: int) -> dict:
    """Streamed requests from ``clients`` threads; SSE read with httpx (a light client, so the
    client process takes little of the CPU the server needs)."""
    import json

    import httpx

    # one pooled client for all threads: creating an httpx client per request costs tens of ms
    http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients + 1))

    def one(q: str):
        body = {"model": name, "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        t = time.perf_counter()
        first, tokens = None, 0
        with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if first is None and '"content": "' in line and '"content": ""' not in line:
                    first = time.perf_counter() - t
                if '"usage"' in line:
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        tokens = usage["completion_tokens"]
        return time.perf_counter() - t, first or 0.0, tokens

    one(qs[0])  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(one, qs))
    wall = time.perf_counter() - start
    return {"tokens": sum(o[2] for o in out), "wall": wall, "lat": [o[0] for o in out], "ttft": [o[1] for o in out]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clients", default="1,4,16")
    args = ap.parse_args()
    qs = prompts(args.requests)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", args.model, "--port", str(port),
                               "--served-model-name", "m", "--max-batch-size", "16", "--dtype", "float32"],
                              env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start:\n" + server.stderr.read())
            time.sleep(0.2)
        rows = [("sequential Completion loop", sequential(args.model, qs, args.max_tokens, args.threads))]
        for c in [int(x) for x in args.clients.split(",")]:
            before = httpx.get(url + "/health").json()
            r = against_server(url, "m", qs, args.max_tokens, c)
            after = httpx.get(url + "/health").json()
            r["batch"] = (after["sequences"] - before["sequences"]) / max(1, after["batches"] - before["batches"])
            rows.append((f"lmforge serve, {c} concurrent client(s)", r))
    finally:
        server.terminate()
        server.wait(timeout=30)
    base = rows[0][1]["tokens"] / rows[0][1]["wall"]
    print(f"model {args.model}, {args.requests} requests x {args.max_tokens} tokens (greedy), "
          f"{args.threads} torch thread(s)")
    print(f"{'setting':40s} {'tok/s':>8s} {'vs seq':>7s} {'p50 s':>7s} {'p99 s':>7s} {'TTFT p50 s':>11s} "
          f"{'mean batch':>10s}")
    for name, r in rows:
        tps = r["tokens"] / r["wall"]
        ttft = f"{statistics.median(r['ttft']):.3f}" if r["ttft"] else "-"
        print(f"{name:40s} {tps:8.1f} {tps / base:6.2f}x {percentile(r['lat'], 50):7.3f} "
              f"{percentile(r['lat'], 99):7.3f} {ttft:>11s} {r.get('batch', 1):10.1f}")


if __name__ == "__main__":
    main()
