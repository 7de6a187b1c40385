"""A family's :class:`~lmforge.plugins.descriptors.ChatTemplate` as a Jinja ``chat_template``.

Saved tokenizers carry it, so ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True)``, vLLM and OpenAI-compatible servers render the prompt
the model was trained on. The Jinja text is generated from the same template data
:meth:`ChatTemplate.render` uses (nothing is written by hand per family), mirroring
its rules: the optional default system message, BOS when ``add_bos``, the assistant
prefix after every user/observation turn, EOS after every answer, then
``turn_separator`` / the encoder's ``separator_after_eos``.

Every literal is a Jinja string expression (``{{ "..." }}``), never raw template text,
so transformers' ``trim_blocks``/``lstrip_blocks`` cannot eat a newline of the format.
"""

from __future__ import annotations

import json
import string

from lmforge.plugins.descriptors import ChatTemplate


def _lit(text: str) -> str:
    # a Jinja string literal: Jinja unescapes backslash sequences like Python
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _format(fmt: str, content: str | None) -> str:
    """A ``str.format`` template with ``{content}``, ``{round}``, ``{round1}`` as Jinja."""
    out = []
    for literal, name, spec, conv in string.Formatter().parse(fmt):
        out.append(_lit(literal))
        if name is None:
            continue
        if spec or conv:
            raise ValueError(f"format spec in chat template field {{{name}}} has no Jinja equivalent")
        if name == "content":
            out.append("{{ " + (content or "message['content']") + " }}")
        elif name == "round":
            out.append("{{ ns.round }}")
        elif name == "round1":
            out.append("{{ ns.round + 1 }}")
        else:
            raise ValueError(f"unknown chat template field {{{name}}}")
    return "".join(out)


def jinja_from_template(t: ChatTemplate, *, bos: str | None, eos: str | None, separator_after_eos: str = "") -> str:
    """The Jinja ``chat_template`` equal to rendering with ``t`` and the encoder's BOS/EOS rules."""
    parts = ["{%- set ns = namespace(round=0) -%}"]
    if t.add_bos and bos:
        parts.append(_lit(bos))
    parts.append(_lit(t.prefix))
    if t.default_system is not None:
        parts.append("{%- if not (messages | selectattr('role', 'equalto', 'system') | list) -%}")
        parts.append(_format(t.system, json.dumps(t.default_system, ensure_ascii=False)).replace("{{ ns.round }}", "{{ 0 }}")
                     .replace("{{ ns.round + 1 }}", "{{ 1 }}"))
        parts.append("{%- endif -%}")
    parts.append("{%- for message in messages -%}")
    parts.append("{%- if message['role'] == 'system' -%}" + _format(t.system, None))
    for role, fmt in (("user", t.user), ("observation", t.observation)):
        parts.append("{%- elif message['role'] == '" + role + "' -%}" + _format(fmt, None)
                     + "{%- if not loop.last or add_generation_prompt -%}" + _format(t.assistant_prefix, None)
                     + "{%- endif -%}")
    assistant = ("{%- elif message['role'] == 'assistant' -%}" + _format(t.assistant, None) + _lit(t.assistant_suffix)
                 + _lit(eos or ""))
    if separator_after_eos:
        assistant += "{%- if not loop.last -%}" + _lit(separator_after_eos) + "{%- endif -%}"
    parts.append(assistant + _lit(t.turn_separator) + "{%- set ns.round = ns.round + 1 -%}")
    parts.append("{%- else -%}{{ raise_exception('unknown message role ' + message['role']) }}")
    parts.append("{%- endif -%}{%- endfor -%}")
    return "".join(p for p in parts if p)


def chat_template_for(encoder) -> str | None:
    """The Jinja template for a job's encoder: its own ``chat_template_jinja()`` when it has one, else
    the generic rendering of its :class:`ChatTemplate`; ``None`` when the prompt has no Jinja form."""
    own = getattr(encoder, "chat_template_jinja", None)
    if own is not None:
        return own()
    t = getattr(encoder, "template", None)
    if not isinstance(t, ChatTemplate) or t.name == "raw":
        return None
    tok = encoder.tokenizer
    return jinja_from_template(t, bos=getattr(tok, "bos_token", None) if getattr(tok, "bos_token_id", None) is not None
                               else None,
                               eos=getattr(tok, "eos_token", None) if getattr(tok, "eos_token_id", None) is not None
                               else None,
                               separator_after_eos=getattr(encoder, "separator_after_eos", ""))


def attach(tokenizer, encoder) -> None:
    """Set ``tokenizer.chat_template`` from the encoder (before the tokenizer is saved)."""
    text = chat_template_for(encoder)
    if text is not None:
        tokenizer.chat_template = text
