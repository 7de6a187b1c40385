"""Generation from a run directory, a checkpoint or a preset: ``Completion``.

Prompts are rendered by the same family encoder that training used
(:meth:`~lmforge.data.encoding.Encoder.encode_prompt`), so a fine-tuned model
sees at inference exactly the prompt shape it was trained on; chat messages go
through the family's chat template. Batches are left padded; each result says
why generation stopped (``"stop"``: an end token or a stop string, ``"length"``:
``max_new_tokens`` reached).

One ``transformers`` ``generate`` call serves a batch of *different* requests
(the server batches concurrent clients this way): :class:`RowSampling` applies
each row's own temperature / top-k / top-p / repetition penalty with
transformers' own logits processors, and :class:`RowStopper` ends each row at its
own ``max_new_tokens``, stop strings or cancellation and streams its text.
transformers has no per-row sampling parameters, so this dispatch is the only
part written here.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from lmforge.plugins.descriptors import Message
from lmforge.errors import ConfigError

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one prompt. ``temperature=0`` is greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise ConfigError(f"{name}: {why}")

        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            bad("max_new_tokens", f"must be an integer >= 1 (got {self.max_new_tokens!r})")
        if not _number(self.temperature) or self.temperature < 0:
            bad("temperature", f"must be a number >= 0 (got {self.temperature!r})")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1] (got {self.top_p!r})")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", f"must be an integer >= 0, 0 = off (got {self.top_k!r})")
        if not _number(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", f"must be a number > 0 (got {self.repetition_penalty!r})")
        if not isinstance(self.num_return_sequences, int) or self.num_return_sequences < 1:
            bad("num_return_sequences", f"must be an integer >= 1 (got {self.num_return_sequences!r})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")
        if self.seed is not None and not isinstance(self.seed, int):
            bad("seed", f"must be an integer (got {self.seed!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class GenerationResult:
    """One prompt's output: ``texts`` and ``finish_reasons`` (one per returned sequence)."""

    texts: list[str]
    finish_reasons: list[str]
    token_ids: list[list[int]] = field(default_factory=list)
    prompt_tokens: int = 0

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def finish_reason(self) -> str:
        return self.finish_reasons[0]

    @property
    def completion_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)


@dataclass
class Request:
    """One prompt for :meth:`Completion.run`; ``on_delta(index, text)`` receives streamed text of sequence ``index``."""

    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    on_delta: Callable[[int, str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


def as_messages(prompt: str | Sequence[Message | Mapping[str, Any]]) -> str | list[Message]:
    """A prompt string, or messages given as :class:`Message` or ``{"role", "content"}`` dicts."""
    if isinstance(prompt, str):
        return prompt
    out = []
    for i, m in enumerate(prompt):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConfigError(f"messages[{i}]: expected {{'role': str, 'content': str}}, got {m!r}")
        if m["role"] not in ("system", "user", "assistant", "observation"):
            raise ConfigError(f"messages[{i}].role: {m['role']!r} is not one of system, user, assistant, observation")
        out.append(Message(m["role"], m["content"]))
    if not out:
        raise ConfigError("messages: at least one message is required")
    return out


class Completion:
    """Load a model once and generate from it.

    ``Completion(run_or_model_dir)`` accepts an lmforge run directory (base +
    adapter picked up from ``lmforge.yaml``), a checkpoint directory, or a preset;
    ``adapter`` applies an adapter directory or adapter run on top. ``long_context``
    (a ``long_context:`` mapping) or AntLLM's ``use_long_glm=True`` (the family's method
    at ``long_glm_factor`` times the model's positions) extends the positions on load; a
    run trained with an extension reloads with it without either (docs/long-context.md).
    """

    def __init__(self, model: str, adapter: str | None = None, use_long_glm: bool = False, *,
                 trust_remote_code: bool = False, dtype: str = "auto", device: str | None = None,
                 raw: bool | None = None, long_context: Mapping[str, Any] | None = None,
                 long_glm_factor: int = 2) -> None:
        import torch

        from lmforge.config.spec import LongContextSpec

        from lmforge.data.encoding import make_encoder
        from lmforge.modeling.loading import family_of_run, load, read_run_config
        from lmforge.plugins.registry import get_registry
        from lmforge.runtime.threads import apply as apply_threads

        apply_threads()  # torch CPU threads: OMP_NUM_THREADS, else --threads, else the cores not busy
        reg = get_registry()
        self.source = model
        if use_long_glm and long_context is not None:
            raise ConfigError("use_long_glm: pass either use_long_glm (AntLLM's spelling) or long_context, not both")
        # use_long_glm: the family's own method at long_glm_factor x the model's positions (AntLLM's window)
        lc = LongContextSpec.of({"method": "family", "factor": float(long_glm_factor)} if use_long_glm
                                else long_context)
        self.model, self.tokenizer = load(model, adapter=adapter, trust_remote_code=trust_remote_code, dtype=dtype,
                                          long_context=lc)
        self.family = family_of_run(model, reg)
        run_cfg = read_run_config(model) or {}
        template = (run_cfg.get("data") or {}).get("template", "family")
        if raw is not None:
            template = "raw" if raw else "family"
        self.encoder = make_encoder(self.tokenizer, self.family, max_length=10**9, template=template)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.model.eval()
        self._setup()

    @classmethod
    def from_model(cls, model, tokenizer, family, *, template: str = "family") -> "Completion":
        """Generate with a model already in memory (e.g. during training), without loading anything."""
        from lmforge.data.encoding import make_encoder

        self = cls.__new__(cls)
        self.source, self.model, self.tokenizer, self.family = None, model, tokenizer, family
        self.encoder = make_encoder(tokenizer, family, max_length=10**9, template=template)
        self.device = next(model.parameters()).device
        self._setup()
        return self

    def _setup(self) -> None:
        self.stop_ids = list(self.encoder.stop_token_ids())
        self.context_length = context_length(self.model.config)
        self._lock = threading.Lock()  # one generate call at a time on this model
        self._raw_encoder = None

    # --------------------------------------------------------------- prompts
    def encode(self, prompt: str | Sequence[Message | Mapping[str, Any]]) -> list[int]:
        """Prompt ids exactly as training rendered them (a string is one user turn)."""
        return self.encoder.encode_prompt(as_messages(prompt))

    def encode_raw(self, text: str) -> list[int]:
        """Prompt ids of plain text (no chat template), as a run trained with ``template: raw`` sees it."""
        from lmforge.data.encoding import make_encoder

        if self._raw_encoder is None:
            self._raw_encoder = make_encoder(self.tokenizer, self.family, max_length=10**9, template="raw")
        return self._raw_encoder.encode_prompt(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoder.decode_response(list(ids))  # e.g. drops ChatGLM3's metadata line

    def prepare_batch(self, prompts: list[list[int]]) -> dict:
        """Left-padded model inputs for prompt ids, on the model's device."""
        batch = self.encoder.collate_prompts(prompts)
        return {k: v.to(self.device) for k, v in batch.items()}

    # --------------------------------------------------------------- API
    def generate(self, text: str | Sequence[Message], **kwargs) -> GenerationResult:
        """Generate for one prompt (a string, or a list of messages)."""
        return self.generate_batch([text], **kwargs)[0]

    def generate_batch(self, texts: Sequence[str | Sequence[Message]], **kwargs) -> list[GenerationResult]:
        """Generate for several prompts in one batch; one result per prompt.

        Keywords: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
        ``repetition_penalty``, ``num_return_sequences``, ``stop`` (strings),
        ``seed``. Under greedy decoding a batch gives what each prompt gives alone.
        """
        params = SamplingParams(**kwargs)
        return self.run([Request(self.encode(t), params) for t in texts])

    def stream(self, text: str | Sequence[Message], **kwargs) -> Iterator[str]:
        """Yield the answer's text as it is generated (deltas; their concatenation is ``generate(...).text``)."""
        import queue

        params = SamplingParams(**kwargs)
        if params.num_return_sequences != 1:
            raise ConfigError("num_return_sequences: stream() yields one sequence; use generate() for several")
        deltas: queue.Queue = queue.Queue()
        done = object()
        request = Request(self.encode(text), params, on_delta=lambda i, d: deltas.put(d))
        errors: list[BaseException] = []

        def work():
            try:
                self.run([request])
            except BaseException as exc:  # handed to the consumer below
                errors.append(exc)
            finally:
                deltas.put(done)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while (item := deltas.get()) is not done:
                yield item
        finally:
            request.cancelled.set()  # the consumer stopped early: end the row
            worker.join()
        if errors:
            raise errors[0]

    # --------------------------------------------------------------- engine
    def check_prompt(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Refuse a prompt that cannot fit the model's context with its ``max_new_tokens``."""
        if self.context_length and len(prompt_ids) + params.max_new_tokens > self.context_length:
            raise ConfigError(
                f"prompt: {len(prompt_ids)} prompt tokens + max_new_tokens {params.max_new_tokens} exceed the "
                f"model's context of {self.context_length} tokens"
            )

    def run(self, requests: Sequence[Request]) -> list[GenerationResult]:
        """Generate for requests that may each have their own sampling parameters, in one ``generate`` call."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        if getattr(self.model, "lmforge_generate_unpadded", False) and len({len(r.prompt_ids) for r in requests}) > 1:
            # padding would shift this model's positions (prompt tuning): batch equal-length prompts only
            groups: dict[int, list[int]] = {}
            for idx, req in enumerate(requests):
                groups.setdefault(len(req.prompt_ids), []).append(idx)
            merged: list[GenerationResult | None] = [None] * len(requests)
            for idxs in groups.values():
                for idx, res in zip(idxs, self.run([requests[i] for i in idxs])):
                    merged[idx] = res
            return merged  # type: ignore[return-value]

        rows: list[tuple[int, int]] = []  # (request, sequence) per batch row
        prompts: list[list[int]] = []
        for r, req in enumerate(requests):
            if not req.prompt_ids:
                raise ConfigError("prompt: empty after tokenization")
            self.check_prompt(req.prompt_ids, req.params)
            for j in range(req.params.num_return_sequences):
                rows.append((r, j))
                prompts.append(list(req.prompt_ids))
        params = [requests[r].params for r, _ in rows]
        batch = self.prepare_batch(prompts)
        stopper = RowStopper(self, requests, rows, batch["input_ids"].shape[1])
        sampling = RowSampling(params)
        do_sample = not all(p.greedy for p in params)
        seeds = {p.seed for p in params if p.seed is not None}
        gen_kwargs = dict(
            max_new_tokens=max(p.max_new_tokens for p in params), do_sample=do_sample,
            eos_token_id=self.stop_ids or None, pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([sampling]) if sampling.active else None,
            stopping_criteria=StoppingCriteriaList([stopper]),
            # every sampling choice is made per row by RowSampling; switch transformers' own off
            temperature=1.0 if do_sample else None, top_p=None, top_k=None, repetition_penalty=None,
        )
        with self._lock, torch.no_grad():
            generator_state = None
            if seeds:
                generator_state = torch.random.get_rng_state()
                torch.manual_seed(min(seeds))
            try:
                self.model.generate(**batch, **gen_kwargs)
            finally:
                if generator_state is not None:
                    torch.random.set_rng_state(generator_state)
        return stopper.results()


def context_length(config) -> int | None:
    """The longest sequence a model config says it handles (its max positions, times the factor of dynamic
    NTK scaling), or ``None`` when it does not say."""
    from lmforge.modeling.longctx import window

    return window(config)


class RowSampling:
    """Each row's temperature, top-k, top-p and repetition penalty, with transformers' processors.

    Greedy rows keep only their arg-max, so a sampled batch can hold greedy rows
    and a greedy row decodes exactly as it does alone.
    """

    def __init__(self, params: Sequence[SamplingParams]) -> None:
        from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                            TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)

        self.sampled = not all(p.greedy for p in params)
        self.per_row = []
        for p in params:
            chain = []
            if p.repetition_penalty != 1.0:
                chain.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
            if not p.greedy:
                if p.temperature != 1.0:
                    chain.append(TemperatureLogitsWarper(p.temperature))
                if p.top_k:
                    chain.append(TopKLogitsWarper(p.top_k))
                if p.top_p < 1.0:
                    chain.append(TopPLogitsWarper(p.top_p))
            self.per_row.append((p.greedy, chain))
        self.active = self.sampled or any(chain for _, chain in self.per_row)

    def __call__(self, input_ids, scores):
        import torch

        out = scores.clone()
        for i, (greedy, chain) in enumerate(self.per_row):
            row = scores[i:i + 1]
            for proc in chain:
                row = proc(input_ids[i:i + 1], row)
            if greedy and self.sampled:
                keep = row.argmax(-1, keepdim=True)
                row = torch.full_like(row, -math.inf).scatter(-1, keep, row.gather(-1, keep))
            out[i:i + 1] = row
        return out


class RowStopper:
    """Ends each batch row on its own: stop token, stop string, ``max_new_tokens`` or cancellation.

    Also collects the generated ids and streams text deltas per row, holding back
    text that may still turn out to be the start of a stop string or an
    incomplete UTF-8 character.
    """

    def __init__(self, comp: Completion, requests: Sequence[Request], rows: list[tuple[int, int]], width: int) -> None:
        self.comp, self.requests, self.rows, self.width = comp, requests, rows, width
        self.ids: list[list[int]] = [[] for _ in rows]
        self.reason: list[str | None] = [None] * len(rows)
        self.sent: list[int] = [0] * len(rows)  # characters streamed per row
        self.text: list[str] = [""] * len(rows)
        self.stop_ids = set(comp.stop_ids)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for i, (r, j) in enumerate(self.rows):
            if self.reason[i] is None:
                self._step(i, r, j, last[i])
            done[i] = self.reason[i] is not None
        return done

    def _step(self, i: int, r: int, j: int, token: int) -> None:
        req = self.requests[r]
        params = req.params
        if req.cancelled.is_set():
            self.reason[i] = FINISH_CANCELLED
            return
        if token in self.stop_ids:
            self.reason[i] = FINISH_STOP
        else:
            self.ids[i].append(token)
            text = self.comp.decode(self.ids[i]) if (params.stop or req.on_delta) else ""
            if params.stop:
                hits = [text.find(s) for s in params.stop if s in text]
                if hits:
                    text = text[:min(hits)]
                    self.reason[i] = FINISH_STOP
            self.text[i] = text
            if self.reason[i] is None and len(self.ids[i]) >= params.max_new_tokens:
                self.reason[i] = FINISH_LENGTH
        if req.on_delta is not None:
            self._emit(i, j, req)

    def _emit(self, i: int, j: int, req: Request) -> None:
        text = self.text[i]
        if self.reason[i] is None:
            safe = len(text)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character
                safe = len(text.rstrip("\ufffd"))
            for s in req.params.stop:  # a suffix that may grow into a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
        else:
            safe = len(text)
        if safe > self.sent[i]:
            req.on_delta(j, text[self.sent[i]:safe])
            self.sent[i] = safe

    def results(self) -> list[GenerationResult]:
        out = [GenerationResult([], [], [], len(req.prompt_ids)) for req in self.requests]
        for i, (r, _) in enumerate(self.rows):
            req = self.requests[r]
            reason = self.reason[i] or FINISH_LENGTH
            text = self.text[i] if (req.params.stop or req.on_delta) else self.comp.decode(self.ids[i])
            if req.on_delta is not None and self.reason[i] is None:  # generate ended the row (max length)
                self.reason[i] = reason
                self._emit(i, self.rows[i][1], req)
            out[r].texts.append(text)
            out[r].finish_reasons.append(reason)
            out[r].token_ids.append(self.ids[i])
        return out


__all__ = ["Completion", "GenerationResult", "SamplingParams", "Request", "as_messages", "context_length"]
