"""Built-in data formats, and the ``lmforge data`` commands.

Each format is a pure-Python ``detect`` and ``convert``; ``convert`` raises
:class:`~lmforge.plugins.descriptors.RecordError` naming the field and the problem, and
the reader (:mod:`lmforge.data.readers`) adds file and line. Detection asks formats in
descending ``priority``, so the more specific shapes come first.

| format | record | becomes |
|---|---|---|
| ``packed`` | ``{"input": [...], "output": [...]}`` | several examples per line |
| ``alpaca`` | ``{"instruction", "input", "output"}`` (+ optional ``history``, ``system``) | one conversation |
| ``messages`` | ``{"messages": [{"role", "content"}]}`` or ``{"conversations": [{"from", "value"}]}`` | one conversation |
| ``src_tgt`` | ``{"src", "tgt"}``, strings or equal-length lists (turns) | one conversation |
| ``instruction`` | ``{"input", "target"}`` | one exchange |
| ``title_content`` | ``{"title", "content"}`` | pretraining text |
| ``input_output`` | ``{"input", "output"}``; empty input = pretraining text | one exchange |
| ``text`` | a ``.txt`` line, or ``{"text"}`` | pretraining text |
"""

from __future__ import annotations

from typing import Any

from lmforge import hookimpl
from lmforge.plugins.descriptors import DataFormat, Example, Message, RecordError


def require_dict(record: Any) -> dict:
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got a JSON {type(record).__name__}")
    return record


def require_str(record: dict, key: str, *, allow_empty: bool = False, where: str = "field") -> str:
    """``record[key]`` as a string, or a RecordError naming the missing/mistyped/empty field."""
    if key not in record:
        raise RecordError(f"missing {where} {key!r}")
    return check_str(record[key], f"{where} {key!r}", allow_empty=allow_empty)


def check_str(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(f"{what} is empty")
    return value


def exchange(prompt: str, response: str, system: str | None = None) -> Example:
    """One prompt/response example; an empty prompt (and no system) makes pretraining text."""
    if not prompt.strip() and not system:
        return Example(text=response)
    msgs = ((Message("system", system),) if system else ()) + (Message("user", prompt), Message("assistant", response))
    return Example(messages=msgs)


def _is_dict_with(record: Any, *keys: str) -> bool:
    return isinstance(record, dict) and all(k in record for k in keys)


# -------------------------------------------------------------- input_output


def _io_detect(record: Any) -> bool:
    return (isinstance(record, dict) and "output" in record and "instruction" not in record
            and not isinstance(record.get("output"), list))


def _io_convert(record: Any) -> list[Example]:
    record = require_dict(record)
    prompt = require_str(record, "input", allow_empty=True)
    response = require_str(record, "output")
    return [exchange(prompt, response)]


INPUT_OUTPUT = DataFormat(
    name="input_output",
    description='{"input": prompt, "output": response}; an empty input makes the output pretraining text',
    required_fields=("input", "output"),
    detect=_io_detect,
    convert=_io_convert,
    priority=10,
)

# -------------------------------------------------------------- packed


def _packed_detect(record: Any) -> bool:
    return isinstance(record, dict) and isinstance(record.get("output"), list) and "instruction" not in record


def _packed_convert(record: Any) -> list[Example]:
    record = require_dict(record)
    if "input" not in record:
        raise RecordError("missing field 'input'")
    inputs, outputs = record["input"], record.get("output")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RecordError("fields 'input' and 'output' must both be lists (one entry per packed sample)")
    if len(inputs) != len(outputs):
        raise RecordError(f"'input' has {len(inputs)} entries but 'output' has {len(outputs)}")
    if not outputs:
        raise RecordError("'input' and 'output' are empty lists")
    return [exchange(check_str(i, f"input[{n}]", allow_empty=True), check_str(o, f"output[{n}]"))
            for n, (i, o) in enumerate(zip(inputs, outputs))]


PACKED = DataFormat(
    name="packed",
    description='{"input": [p1, p2, ...], "output": [r1, r2, ...]}: several samples on one line '
                "(offline-packed files); each pair is one example, an empty input makes pretraining text",
    required_fields=("input", "output"),
    detect=_packed_detect,
    convert=_packed_convert,
    priority=30,
)

# -------------------------------------------------------------- src_tgt


def _st_detect(record: Any) -> bool:
    return isinstance(record, dict) and ("src" in record or "tgt" in record)


def _st_convert(record: Any) -> list[Example]:
    record = require_dict(record)
    for key in ("src", "tgt"):
        if key not in record:
            raise RecordError(f"missing field {key!r}")
    src, tgt = record["src"], record["tgt"]
    if isinstance(src, str) and isinstance(tgt, str):
        return [exchange(src, check_str(tgt, "field 'tgt'"))]
    if not (isinstance(src, list) and isinstance(tgt, list)):
        raise RecordError(f"fields 'src' and 'tgt' must both be strings or both be lists of turns, "
                          f"got {type(src).__name__} and {type(tgt).__name__}")
    if len(src) != len(tgt):
        raise RecordError(f"'src' has {len(src)} turns but 'tgt' has {len(tgt)}: they must pair up")
    if not src:
        raise RecordError("'src' and 'tgt' are empty lists")
    msgs: list[Message] = []
    for n, (s, t) in enumerate(zip(src, tgt)):
        msgs.append(Message("user", check_str(s, f"src[{n}]", allow_empty=True)))
        msgs.append(Message("assistant", check_str(t, f"tgt[{n}]")))
    return [Example(messages=tuple(msgs))]


SRC_TGT = DataFormat(
    name="src_tgt",
    description='{"src": prompt, "tgt": response}; two lists of equal length are a multi-turn dialogue '
                "(src[i] the user's turn i, tgt[i] the answer)",
    required_fields=("src", "tgt"),
    detect=_st_detect,
    convert=_st_convert,
    priority=15,
)

# -------------------------------------------------------------- instruction


def _instr_detect(record: Any) -> bool:
    return isinstance(record, dict) and "target" in record


def _instr_convert(record: Any) -> list[Example]:
    record = require_dict(record)
    prompt = require_str(record, "input", allow_empty=True)
    return [exchange(prompt, require_str(record, "target"))]


INSTRUCTION = DataFormat(
    name="instruction",
    description='{"input": prompt, "target": response}',
    required_fields=("input", "target"),
    detect=_instr_detect,
    convert=_instr_convert,
    priority=15,
)

# -------------------------------------------------------------- alpaca


def _alpaca_detect(record: Any) -> bool:
    return isinstance(record, dict) and "instruction" in record


def _alpaca_convert(record: Any) -> list[Example]:
    record = require_dict(record)
    instruction = require_str(record, "instruction")
    extra = record.get("input", "")
    extra = check_str(extra, "field 'input'", allow_empty=True) if extra is not None else ""
    response = require_str(record, "output")
    system = record.get("system")
    if system is not None:
        system = check_str(system, "field 'system'", allow_empty=True) or None
    msgs: list[Message] = [Message("system", system)] if system else []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordError(f"field 'history' must be a list of [prompt, response] pairs, got {type(history).__name__}")
    for n, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError(f"history[{n}] must be a [prompt, response] pair")
        msgs.append(Message("user", check_str(pair[0], f"history[{n}][0]", allow_empty=True)))
        msgs.append(Message("assistant", check_str(pair[1], f"history[{n}][1]")))
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    msgs += [Message("user", prompt), Message("assistant", response)]
    return [Example(messages=tuple(msgs))]


ALPACA = DataFormat(
    name="alpaca",
    description='{"instruction", "input", "output"} (Stanford Alpaca; input may be empty or absent; optional '
                '"system" and "history": [[prompt, response], ...]); the prompt is instruction + blank line + input',
    required_fields=("instruction", "input", "output"),
    detect=_alpaca_detect,
    convert=_alpaca_convert,
    priority=25,
)

# -------------------------------------------------------------- title_content


def _tc_detect(record: Any) -> bool:
    return _is_dict_with(record, "title", "content")


def _tc_convert(record: Any) -> list[Example]:
    record = require_dict(record)
    title = require_str(record, "title", allow_empty=True).strip()
    content = require_str(record, "content")
    return [Example(text=f"{title}\n{content}" if title else content)]


TITLE_CONTENT = DataFormat(
    name="title_content",
    description='{"title", "content"}: pretraining text, the title and a newline before the content, '
                "every token trained",
    required_fields=("title", "content"),
    detect=_tc_detect,
    convert=_tc_convert,
    priority=15,
)

# -------------------------------------------------------------- text


def _text_detect(record: Any) -> bool:
    return isinstance(record, str) or (isinstance(record, dict) and "text" in record)


def _text_convert(record: Any) -> list[Example]:
    if isinstance(record, str):
        return [Example(text=check_str(record, "the line"))]
    return [Example(text=require_str(require_dict(record), "text"))]


TEXT = DataFormat(
    name="text",
    description="pretraining text: a .txt file, one document a line (or {\"text\": ...} records); "
                "every token trained",
    required_fields=("text",),
    detect=_text_detect,
    convert=_text_convert,
    priority=0,
    suffixes=(".txt", ".jsonl", ".json"),
)

# -------------------------------------------------------------- messages

ROLE_NAMES = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "observation": "observation", "tool": "observation", "function": "observation",
}


def _msg_detect(record: Any) -> bool:
    return isinstance(record, dict) and ("messages" in record or "conversations" in record)


def _content_text(value: Any, what: str, allow_empty: bool) -> str:
    # OpenAI-style content parts: [{"type": "text", "text": ...}, ...]
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        parts = []
        for p in value:
            if p.get("type", "text") != "text":
                raise RecordError(f"{what}: only text content parts are supported, got type {p.get('type')!r}")
            parts.append(check_str(p.get("text"), f"{what} text part", allow_empty=True))
        value = "".join(parts)
    return check_str(value, what, allow_empty=allow_empty)


def _msg_convert(record: Any) -> list[Example]:
    record = require_dict(record)
    key, role_key, content_key = (("messages", "role", "content") if "messages" in record
                                  else ("conversations", "from", "value"))
    turns = record[key]
    if not isinstance(turns, list):
        raise RecordError(f"field {key!r} must be a list of turns, got {type(turns).__name__}")
    if not turns:
        raise RecordError(f"field {key!r} is an empty list")
    msgs: list[Message] = []
    system = record.get("system")
    if system is not None and check_str(system, "field 'system'", allow_empty=True).strip():
        msgs.append(Message("system", system))
    for n, turn in enumerate(turns):
        where = f"{key}[{n}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} must be an object with {role_key!r} and {content_key!r}, "
                              f"got {type(turn).__name__}")
        raw_role = require_str(turn, role_key, where=f"{where} field")
        role = ROLE_NAMES.get(raw_role.strip().lower())
        if role is None:
            raise RecordError(f"{where}: unknown role {raw_role!r} (known: {', '.join(sorted(ROLE_NAMES))})")
        if content_key not in turn:
            raise RecordError(f"missing {where} field {content_key!r}")
        content = _content_text(turn[content_key], f"{where}.{content_key}", allow_empty=role != "assistant")
        msgs.append(Message(role, content))
    if not any(m.role == "assistant" for m in msgs):
        raise RecordError(f"{key!r} has no assistant turn: nothing to train on")
    if msgs[-1].role != "assistant":
        raise RecordError(f"{key!r} ends with a {msgs[-1].role} turn, which has no response to train on")
    return [Example(messages=tuple(msgs))]


MESSAGES = DataFormat(
    name="messages",
    description='{"messages": [{"role", "content"}, ...]} (OpenAI style) or {"conversations": [{"from", "value"}, '
                "...]} (ShareGPT style: human/gpt); rendered with the family's chat template, loss on the "
                "assistant turns",
    required_fields=("messages",),
    detect=_msg_detect,
    convert=_msg_convert,
    priority=20,
)

BUILTIN_FORMATS = (PACKED, ALPACA, MESSAGES, SRC_TGT, INSTRUCTION, TITLE_CONTENT, INPUT_OUTPUT, TEXT)


@hookimpl
def register_data_formats(register):
    for fmt in BUILTIN_FORMATS:
        register(fmt)
