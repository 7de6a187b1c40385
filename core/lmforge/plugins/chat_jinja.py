"""A family's :class:`~lmforge.plugins.descriptors.ChatTemplate` as a Jinja ``chat_template``.

Saved tokenizers carry it, so ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True)``, vLLM and OpenAI-compatible servers render the prompt
the model was trained on. The Jinja text is generated from the same template data
:meth:`ChatTemplate.render` uses (nothing is written by hand per family), mirroring
its three styles (turns, roles, inline history): the optional default system
message, BOS when ``add_bos``, the prefix, each message's pieces, the end token
after every answer, the separators and the generation prefix. :class:`Special`
tokens render as their text (EOS/BOS as the tokenizer's), which the tokenizer maps
back to their ids.

A text piece that follows another text piece starts with ``piece_joiner``: the
encoder tokenizes every text piece on its own, and a sentencepiece tokenizer
prefixes each with a space (the released ChatGLM3 ``chat_template`` writes
``"\\n "`` for the same reason), so the whole rendered string tokenizes to the same ids.

Every literal is a Jinja string expression (``{{ "..." }}``), never raw template text,
so transformers' ``trim_blocks``/``lstrip_blocks`` cannot eat a newline of the format.
"""

from __future__ import annotations

import json
import string

from lmforge.plugins.descriptors import ChatTemplate, Special

_VARS = {"content": "message['content']", "round": "ns.round", "round1": "(ns.round + 1)"}


def _str(text: str) -> str:
    # a Jinja string literal: Jinja unescapes backslash sequences like Python
    return json.dumps(text, ensure_ascii=False)


class _Writer:
    """Builds Jinja expressions for template pieces, tracking where a text piece follows another."""

    def __init__(self, t: ChatTemplate, bos: str | None, eos: str | None, joiner: str) -> None:
        self.t, self.bos, self.eos, self.joiner = t, bos, eos, joiner

    def special(self, p: Special) -> str:
        if p.kind == "eos":
            return _str(self.eos or "")
        if p.kind == "bos":
            return _str(self.bos or "")
        return _str(p.text)

    def text(self, fmt: str, values: dict) -> str:
        """``fmt`` (a ``str.format`` template) as a Jinja expression."""
        out = []
        for literal, name, spec, conv in string.Formatter().parse(fmt):
            if literal:
                out.append(_str(literal))
            if name is None:
                continue
            if spec or conv:
                raise ValueError(f"format spec in chat template field {{{name}}} has no Jinja equivalent")
            if name not in values:
                raise ValueError(f"chat template {self.t.name!r}: unknown field {{{name}}}")
            out.append("(" + values[name] + " | string)")
        return " ~ ".join(out) or '""'

    def pieces(self, pieces, values: dict | None = None, after_text: bool = False) -> str:
        """Output statements for ``pieces``; ``after_text``: the output so far ends with a text piece."""
        values = dict(_VARS, **(values or {}))
        out = []
        for p in pieces:
            if isinstance(p, Special):
                out.append("{{ " + self.special(p) + " }}")
                after_text = False
            else:
                expr = self.text(p, values)
                if after_text and self.joiner:
                    expr = _str(self.joiner) + " ~ " + expr
                out.append("{{ " + expr + " }}")
                after_text = True
        return "".join(out)


def _ends_with_text(pieces) -> bool:
    return bool(pieces) and not isinstance(pieces[-1], Special)


def _starts(t: ChatTemplate, bos: str | None) -> list[str]:
    parts = ["{%- set ns = namespace(round=0) -%}"]
    if t.add_bos and bos:
        parts.append("{{ " + _str(bos) + " }}")
    return parts


def _default_system(w: _Writer, body: str) -> list[str]:
    t = w.t
    if t.default_system is None:
        return []
    return ["{%- if not (messages | selectattr('role', 'equalto', 'system') | list) -%}",
            "{%- set message = {'role': 'system', 'content': " + _str(t.default_system) + "} -%}",
            body, "{%- endif -%}"]


def _turns(w: _Writer) -> list[str]:
    t = w.t
    prefix_text = _ends_with_text(t.prefix)
    parts = [w.pieces(t.prefix)]
    # a text piece after the prefix or the previous message: the encoder tokenizes every piece on its own
    parts += _default_system(w, w.pieces(t.system, after_text=prefix_text))
    parts.append("{%- for message in messages -%}")
    parts.append("{%- if message['role'] == 'system' -%}" + w.pieces(t.system, after_text=True))
    for role, fmt in (("user", t.user), ("observation", t.observation)):
        parts.append("{%- elif message['role'] == '" + role + "' -%}" + w.pieces(fmt, after_text=True)
                     + "{%- if not loop.last or add_generation_prompt -%}"
                     + w.pieces(t.assistant_prefix, after_text=_ends_with_text(fmt)) + "{%- endif -%}")
    parts.append("{%- elif message['role'] == 'assistant' -%}" + w.pieces(t.assistant + t.assistant_suffix,
                                                                         after_text=True)
                 + w.pieces((t.end_of_turn,))
                 + ("{%- if not loop.last -%}" + w.pieces(t.separator_between) + "{%- endif -%}"
                    if t.separator_between else "")
                 + w.pieces(t.turn_separator) + "{%- set ns.round = ns.round + 1 -%}")
    parts.append("{%- else -%}{{ raise_exception('unknown message role ' + message['role']) }}")
    parts.append("{%- endif -%}{%- endfor -%}")
    return parts


def _roles(w: _Writer) -> list[str]:
    t = w.t
    parts = [w.pieces(t.prefix)]
    parts += _default_system(w, w.pieces(t.system))
    parts.append("{%- for message in messages -%}")
    first = True
    for role in ("system", "user", "assistant", "observation"):
        parts.append("{%- " + ("if" if first else "elif") + " message['role'] == '" + role + "' -%}"
                     + w.pieces(t.role_pieces(role)))
        first = False
    parts.append("{%- else -%}{{ raise_exception('unknown message role ' + message['role']) }}")
    parts.append("{%- endif -%}{%- endfor -%}")
    parts.append("{%- if messages and messages[-1]['role'] == 'assistant' -%}" + w.pieces((t.end_of_turn,))
                 + "{%- elif add_generation_prompt -%}" + w.pieces(t.assistant_prefix) + "{%- endif -%}")
    return parts


def _inline(w: _Writer) -> list[str]:
    t = w.t
    hist = {"query": "(ns.pending or '')", "answer": "ans"}
    parts = [w.pieces(t.prefix),
             "{%- set ns = namespace(round=0, text='', pending=none, answer=none) -%}",
             "{%- set msgs = messages -%}",
             "{%- if messages and messages[-1]['role'] == 'assistant' -%}"
             "{%- set ns.answer = messages[-1]['content'] -%}{%- set msgs = messages[:-1] -%}{%- endif -%}",
             "{%- for message in msgs if message['role'] == 'system' -%}"
             "{%- set ns.text = ns.text ~ " + _concat(w, t.system, {}) + " -%}{%- endfor -%}",
             "{%- for message in msgs -%}",
             "{%- if message['role'] in ['user', 'observation'] -%}",
             "{%- if ns.pending is not none -%}{%- set ans = '' -%}"
             "{%- set ns.text = ns.text ~ " + _concat(w, t.history_query if t.history_query is not None
                                                    else t.history_turn, hist) + " -%}"
             "{%- set ns.round = ns.round + 1 -%}{%- endif -%}",
             "{%- set ns.pending = message['content'] -%}",
             "{%- elif message['role'] == 'assistant' -%}{%- set ans = message['content'] -%}"
             "{%- set ns.text = ns.text ~ " + _concat(w, t.history_turn, hist) + " -%}"
             "{%- set ns.round = ns.round + 1 -%}{%- set ns.pending = none -%}",
             "{%- elif message['role'] != 'system' -%}{{ raise_exception('unknown message role ' + message['role']) }}",
             "{%- endif -%}{%- endfor -%}"]
    final = {"content": "(ns.pending or '')"}
    last = _concat(w, t.user + t.assistant_prefix, final)
    if t.first_user is not None:
        parts.append("{%- if ns.round == 0 -%}{%- set ns.text = ns.text ~ " + _concat(w, t.first_user, final)
                     + " -%}{%- else -%}{%- set ns.text = ns.text ~ " + last + " -%}{%- endif -%}")
    else:
        parts.append("{%- set ns.text = ns.text ~ " + last + " -%}")
    joiner = _str(w.joiner) + " ~ " if (w.joiner and _ends_with_text(t.prefix)) else ""
    parts.append("{{ " + joiner + "ns.text }}")
    suffix = t.prompt_suffix
    if t.optional_masks and suffix:
        has = " or ".join(f"({_str(m)} in ns.text)" for m in t.optional_masks)
        parts.append("{%- if not (" + has + ") -%}" + w.pieces(suffix[:1]) + "{%- endif -%}")
        suffix = suffix[1:]
    parts.append(w.pieces(suffix))
    parts.append("{%- if ns.answer is not none -%}{%- set message = {'content': ns.answer} -%}"
                 + w.pieces(t.assistant + t.assistant_suffix, after_text=not suffix and not t.optional_masks)
                 + w.pieces((t.end_of_turn,)) + "{%- endif -%}")
    return parts


def _concat(w: _Writer, pieces, values: dict) -> str:
    """Text-only pieces as one Jinja string expression (the inline style's prompt string)."""
    vals = dict(_VARS, **values)
    return "(" + " ~ ".join(w.text(p, vals) for p in pieces) + ")" if pieces else '""'


def jinja_from_template(t: ChatTemplate, *, bos: str | None, eos: str | None, piece_joiner: str = "") -> str:
    """The Jinja ``chat_template`` equal to rendering with ``t`` (BOS/EOS as the tokenizer's strings)."""
    w = _Writer(t, bos, eos, piece_joiner)
    parts = _starts(t, bos) + {"turns": _turns, "roles": _roles, "inline": _inline}[t.style](w)
    return "".join(p for p in parts if p)


def chat_template_for(encoder) -> str | None:
    """The Jinja template for a job's encoder (:meth:`lmforge.data.encoding.Encoder.chat_template_jinja`);
    ``None`` when the prompt has no Jinja form."""
    return encoder.chat_template_jinja()


def attach(tokenizer, encoder) -> None:
    """Set ``tokenizer.chat_template`` from the encoder (before the tokenizer is saved)."""
    text = chat_template_for(encoder)
    if text is not None:
        tokenizer.chat_template = text
