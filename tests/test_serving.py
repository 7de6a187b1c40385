"""``lmforge serve`` through the official ``openai`` client over loopback, plus plain HTTP for malformed cases.

One in-process server (uvicorn in a thread) serves the trained tiny-llama base
and two LoRA adapters trained on top of it; results are compared with
:class:`~lmforge.inference.generation.Completion` on the same directories.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lmforge_testing import torch_threads  # noqa: E402
from serving_testing import LiveServer, free_port  # noqa: E402

pytestmark = pytest.mark.latest

KEY = "sk-test-0123456789"
QUESTIONS = ["What is 2 plus 3?", "小红有4个苹果，又买了3个。现在有多少个苹果？", "What is 9 plus 1?",
             "Tom has 5 pens and buys 2 more. How many pens?"]


def _lora_run(base: str, out: str, seed: int) -> str:
    from lmforge import FineTune

    with torch_threads(1):
        FineTune(model=base).train_local(
            train_fpath=os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "data", "train.jsonl"),
            output_dir=out, peft="lora", max_steps=4, max_length=48, per_device_train_batch_size=8,
            learning_rate=5e-2, report_to=[], save_strategy="no", logging_steps=4, disable_tqdm=True, seed=seed,
            peft_options={"r": 4},
        )
    return out


@pytest.fixture(scope="module")
def adapters(trained_tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-adapters")
    return {"alpha": _lora_run(trained_tiny_llama, str(root / "alpha"), 1),
            "beta": _lora_run(trained_tiny_llama, str(root / "beta"), 2)}


@pytest.fixture(scope="module")
def live(trained_tiny_llama, adapters):
    from lmforge.inference.serve import load_server

    server = load_server(trained_tiny_llama, adapters=adapters, served_model_name="base", api_key=KEY,
                         max_batch_size=16, max_queue=64, dtype="float32")
    srv = LiveServer(server, ui=True)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(trained_tiny_llama):
    from lmforge import Completion

    return Completion(trained_tiny_llama, dtype="float32")


def _chat(client, q, model="base", **kw):
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], **kw)


# ---------------------------------------------------------------- happy paths
def test_models_lists_base_and_adapters(client):
    assert sorted(m.id for m in client.models.list().data) == ["alpha", "base", "beta"]


def test_chat_equals_local_completion_and_reports_usage(client, local):
    resp = _chat(client, QUESTIONS[0])
    want = local.generate(QUESTIONS[0], max_new_tokens=16)
    assert resp.choices[0].message.content == want.text
    assert resp.choices[0].finish_reason == want.finish_reason
    assert resp.usage.prompt_tokens == want.prompt_tokens
    assert resp.usage.completion_tokens == want.completion_tokens
    assert resp.usage.total_tokens == want.prompt_tokens + want.completion_tokens


def test_completions_endpoint_renders_the_prompt_like_generate(client, local):
    resp = client.completions.create(model="base", prompt=QUESTIONS[1], max_tokens=12, temperature=0)
    assert resp.choices[0].text == local.generate(QUESTIONS[1], max_new_tokens=12).text
    raw = client.completions.create(model="base", prompt="3 + 4 =", max_tokens=6, temperature=0,
                                    extra_body={"raw": True})
    assert raw.usage.prompt_tokens == len(local.encode_raw("3 + 4 ="))


def test_streaming_chat_and_completion_concatenate_to_the_full_answer(client, local):
    want = local.generate(QUESTIONS[3], max_new_tokens=20).text
    chunks = list(_chat(client, QUESTIONS[3], max_tokens=20, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    comp_chunks = list(client.completions.create(model="base", prompt=QUESTIONS[3], max_tokens=20, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].text for c in comp_chunks) == want


def test_stream_ends_with_done_over_plain_http(live):
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_n_stop_seed_and_sampling(client, local):
    resp = _chat(client, QUESTIONS[0], n=3, temperature=1.0, seed=7, max_tokens=12)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    again = _chat(client, QUESTIONS[0], n=3, temperature=1.0, seed=7, max_tokens=12)
    assert [c.message.content for c in resp.choices] == [c.message.content for c in again.choices]
    full = local.generate(QUESTIONS[0], max_new_tokens=16).text
    stop = full.strip()[2:4]
    assert stop
    cut = _chat(client, QUESTIONS[0], stop=[stop])
    assert cut.choices[0].message.content == full[:full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_adapters_are_selected_by_model_name(client, adapters, trained_tiny_llama):
    from lmforge import Completion

    for name, run in adapters.items():
        want = Completion(run, dtype="float32").generate(QUESTIONS[2], max_new_tokens=12).text
        assert _chat(client, QUESTIONS[2], model=name, max_tokens=12).choices[0].message.content == want
    base = Completion(trained_tiny_llama, dtype="float32").generate(QUESTIONS[2], max_new_tokens=12).text
    assert _chat(client, QUESTIONS[2], max_tokens=12).choices[0].message.content == base


def test_sixteen_concurrent_clients_are_batched(live, client, local):
    prompts = [QUESTIONS[i % 4] + (" " * (i // 4)) for i in range(16)]
    before = live.server.batcher.batches_run
    barrier = threading.Barrier(16)

    def ask(q):
        c = openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        barrier.wait()
        return _chat(c, q, max_tokens=12).choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == [local.generate(q, max_new_tokens=12).text for q in prompts]
    batches = live.server.batcher.batches_run - before
    assert batches < 16, f"16 concurrent requests ran in {batches} generate calls: not batched"


# ---------------------------------------------------------------- errors
def test_missing_or_wrong_api_key_is_401_with_an_openai_error(live):
    wrong = openai.OpenAI(base_url=live.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        _chat(wrong, "hi")
    assert exc.value.status_code == 401 and exc.value.body["code"] == "invalid_api_key"
    r = httpx.post(live.url + "/v1/chat/completions", json={"model": "base", "messages": []})
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert httpx.get(live.url + "/v1/models").status_code == 401


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        _chat(client, "hi", model="gpt-4")
    assert "gpt-4" in exc.value.message and exc.value.body["code"] == "model_not_found"


def test_invalid_parameters_are_400_naming_the_parameter(client):
    for kwargs, param in [({"temperature": 5}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
                          ({"top_p": 0}, "top_p"), ({"n": 0}, "n"), ({"logprobs": True}, "logprobs")]:
        with pytest.raises(openai.BadRequestError) as exc:
            _chat(client, "hi", **kwargs)
        assert exc.value.body["param"] == param, (kwargs, exc.value.body)
        assert param in exc.value.message


def test_prompt_longer_than_the_context_is_400(client, local):
    long = "one two three " * (local.context_length // 2)
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, long)
    assert exc.value.body["code"] == "context_length_exceeded"
    assert str(local.context_length) in exc.value.message


def test_malformed_requests_over_plain_http(live):
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "must be an object"),
        (json.dumps({"model": "base"}).encode(), 400, "messages"),
        (json.dumps({"model": "base", "messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (json.dumps({"model": "base", "messages": [{"role": "user", "content": "x"}], "stop": 3}).encode(), 400,
         "stop"),
    ]
    for raw, status, words in cases:
        r = httpx.post(live.url + "/v1/chat/completions", content=raw, headers=h)
        assert r.status_code == status, (raw, r.text)
        err = r.json()["error"]
        assert words in err["message"] and err["type"] == "invalid_request_error", (raw, err)
    r = httpx.get(live.url + "/v1/nothing", headers=h)
    assert r.status_code == 404 and "error" in r.json()


def test_disconnect_mid_stream_frees_the_rows(live, local):
    batcher = live.server.batcher
    before = batcher.rows_cancelled
    body = {"model": "base", "messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True,
            "max_tokens": local.context_length - 64, "temperature": 0.9, "seed": 1}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        for line in r.iter_lines():
            if '"content"' in line and '"content": ""' not in line:
                break  # got a token: hang up
    deadline = time.monotonic() + 20
    while batcher.rows_cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batcher.rows_cancelled == before + 1, "the abandoned stream kept generating"


def test_full_queue_answers_503(trained_tiny_llama):
    from lmforge.inference.serve import load_server

    server = load_server(trained_tiny_llama, max_batch_size=1, max_queue=1, dtype="float32")
    srv = LiveServer(server)
    try:
        def ask(_):
            r = httpx.post(srv.url + "/v1/completions", timeout=120,
                           json={"model": os.path.basename(trained_tiny_llama), "prompt": "hi", "max_tokens": 40})
            return r.status_code, r.json()

        with ThreadPoolExecutor(8) as pool:
            out = list(pool.map(ask, range(8)))
        codes = [c for c, _ in out]
        assert 200 in codes and 503 in codes, codes
        busy = next(body for c, body in out if c == 503)
        assert busy["error"]["code"] == "queue_full"
    finally:
        srv.close()


# ---------------------------------------------------------------- RemoteCompletion
def test_remote_completion_matches_local(live, local):
    from lmforge import RemoteCompletion

    remote = RemoteCompletion(live.url, "base", api_key=KEY)
    one = remote.generate(QUESTIONS[0], max_new_tokens=14)
    want = local.generate(QUESTIONS[0], max_new_tokens=14)
    assert (one.text, one.finish_reason) == (want.text, want.finish_reason)
    batch = remote.generate_batch(QUESTIONS, max_new_tokens=10)
    assert [r.text for r in batch] == [r.text for r in local.generate_batch(QUESTIONS, max_new_tokens=10)]
    assert "".join(remote.stream(QUESTIONS[1], max_new_tokens=14)) == local.generate(QUESTIONS[1], max_new_tokens=14).text
    assert "".join(local.stream(QUESTIONS[1], max_new_tokens=14)) == local.generate(QUESTIONS[1], max_new_tokens=14).text
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTIONS[2]}]
    assert remote.generate(messages, max_new_tokens=8).text == local.generate(messages, max_new_tokens=8).text


def test_remote_completion_adapter_name_and_errors(live, adapters):
    from lmforge import Completion, RemoteCompletion
    from lmforge.errors import LmforgeError

    remote = RemoteCompletion(live.url, "base", api_key=KEY)
    want = Completion(adapters["beta"], dtype="float32").generate(QUESTIONS[0], max_new_tokens=10).text
    assert remote.generate(QUESTIONS[0], max_new_tokens=10, adapter_name="beta").text == want
    with pytest.raises(LmforgeError, match="401"):
        RemoteCompletion(live.url, "base", api_key="bad").generate("hi", max_new_tokens=2)
    with pytest.raises(LmforgeError, match="404"):
        remote.generate("hi", max_new_tokens=2, adapter_name="gamma")
    with pytest.raises(LmforgeError, match="cannot connect"):
        RemoteCompletion(f"http://127.0.0.1:{free_port()}", "base").generate("hi", max_new_tokens=2)


# ---------------------------------------------------------------- the command
def test_serve_command_starts_answers_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", "tiny-llama", "--port", str(port),
                             "--api-key", KEY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        assert c.models.list().data[0].id == "tiny-llama"
        assert c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=3).usage.completion_tokens >= 1
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "server stopped" in err


def test_vllm_backend_says_what_is_missing():
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli
    from lmforge.inference.serve import vllm_missing

    reason = vllm_missing()
    if reason is None:
        pytest.skip("vLLM and a GPU are present")
    res = CliRunner().invoke(build_cli(), ["serve", "tiny-llama", "--backend", "vllm"])
    assert res.exit_code == 2
    assert res.output.startswith("error: --backend vllm:") and reason in res.output


def test_vllm_command_for_full_and_adapter_runs(trained_tiny_llama, adapters):
    from lmforge.inference.serve import vllm_command

    full = vllm_command(trained_tiny_llama, host="0.0.0.0", port=9000, api_key="k", served_model_name="m",
                        adapters=None, max_batch_size=8)
    assert full[full.index("--model") + 1] == trained_tiny_llama and full[full.index("--api-key") + 1] == "k"
    lora = vllm_command(adapters["alpha"], host="0.0.0.0", port=9000, api_key=None, served_model_name=None,
                        adapters={"beta": adapters["beta"]}, max_batch_size=8)
    assert "--enable-lora" in lora
    mods = lora[lora.index("--lora-modules") + 1:]
    assert mods == [f"alpha={adapters['alpha']}", f"beta={adapters['beta']}"]
