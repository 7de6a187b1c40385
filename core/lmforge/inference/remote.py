"""``RemoteCompletion``: the :class:`~lmforge.inference.generation.Completion` API against a deployed model.

Talks to ``lmforge serve`` or any OpenAI-compatible server (vLLM, ...) with the
official ``openai`` client. Every prompt goes to ``/v1/chat/completions`` (a
string is one user turn), which ``lmforge serve`` renders with the family's own
template, so ``RemoteCompletion(url, m).generate(x)`` gives what
``Completion(run).generate(x)`` gives locally; other servers use the chat
template stored in the tokenizer. ``adapter_name`` picks one of the LoRA adapters
the server has loaded (it is the model name of the request).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Mapping, Sequence

from lmforge.plugins.descriptors import Message
from lmforge.errors import LmforgeError
from lmforge.inference.generation import GenerationResult, SamplingParams


class RemoteCompletion:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 600.0,
                 max_concurrency: int = 16) -> None:
        try:
            from openai import OpenAI
        except ImportError:
            raise LmforgeError("RemoteCompletion needs the openai client: pip install openai") from None
        url = base_url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        # the client insists on a key; a server without --api-key ignores it
        self.client = OpenAI(base_url=url, api_key=api_key or "none", timeout=timeout, max_retries=0)
        self.model = model
        self.max_concurrency = max_concurrency

    @staticmethod
    def _messages(prompt: str | Sequence[Message | Mapping[str, Any]]) -> list[dict]:
        if isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        return [{"role": m.role, "content": m.content} if isinstance(m, Message) else dict(m) for m in prompt]

    def _request(self, prompt, params: SamplingParams, adapter_name: str | None, stream: bool = False):
        extra: dict[str, Any] = {}
        if params.top_k:
            extra["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        kwargs: dict[str, Any] = dict(model=adapter_name or self.model, messages=self._messages(prompt),
                                      max_tokens=params.max_new_tokens, temperature=params.temperature,
                                      top_p=params.top_p, n=params.num_return_sequences, stream=stream)
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if extra:
            kwargs["extra_body"] = extra
        return self._call(kwargs)

    def _call(self, kwargs):
        import openai

        try:
            return self.client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            raise LmforgeError(f"{self.client.base_url}: {exc.status_code} {_message(exc)}") from None
        except openai.APIConnectionError as exc:
            raise LmforgeError(f"{self.client.base_url}: cannot connect ({exc})") from None

    def generate(self, text: str | Sequence[Message], *, adapter_name: str | None = None, **kwargs) -> GenerationResult:
        """One prompt; keywords as :meth:`Completion.generate`."""
        params = SamplingParams(**kwargs)
        resp = self._request(text, params, adapter_name)
        choices = sorted(resp.choices, key=lambda c: c.index)
        return GenerationResult(texts=[c.message.content or "" for c in choices],
                                finish_reasons=[c.finish_reason for c in choices], token_ids=[],
                                prompt_tokens=resp.usage.prompt_tokens if resp.usage else 0)

    def generate_batch(self, texts: Sequence[str | Sequence[Message]], *, adapter_name: str | None = None,
                       **kwargs) -> list[GenerationResult]:
        """Several prompts, sent concurrently so the server batches them; one result per prompt."""
        SamplingParams(**kwargs)  # validate once, before any request
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(texts)))) as pool:
            return list(pool.map(lambda t: self.generate(t, adapter_name=adapter_name, **kwargs), texts))

    def stream(self, text: str | Sequence[Message], *, adapter_name: str | None = None, **kwargs) -> Iterator[str]:
        """Yield the answer's text deltas as the server streams them."""
        params = SamplingParams(**kwargs)
        if params.num_return_sequences != 1:
            raise LmforgeError("num_return_sequences: stream() yields one sequence")
        for chunk in self._request(text, params, adapter_name, stream=True):
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    yield choice.delta.content


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return err["message"]
    return str(exc)
