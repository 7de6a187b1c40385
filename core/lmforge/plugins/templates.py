"""Chat templates shared by several families, as :class:`~lmforge.plugins.descriptors.ChatTemplate` data.

A family plugin references one (``chat_template=templates.CHATML``) or derives its own
with :func:`dataclasses.replace`. ``tests/test_chat_template.py`` renders each beside the
released format it follows.
"""

from __future__ import annotations

from lmforge.plugins.descriptors import ChatTemplate, Special

# ChatML (OpenAI; Qwen, MiniCPM3, ...): <|im_start|>role\n...<|im_end|>\n per turn, generation after
# "<|im_start|>assistant\n"; <|im_end|> ends an answer, then "\n" when another turn follows. No BOS.
CHATML = ChatTemplate(
    name="chatml",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    assistant="{content}",
    end_of_turn=Special("<|im_end|>"),
    separator_between="\n",
    add_bos=False,
)

# Llama-2-chat turns as lmforge renders them: [INST] query [/INST] answer </s>, BOS (<s>) first; a system
# message renders before the first [INST] (the released format puts it inside: see the test).
LLAMA2 = ChatTemplate(
    name="llama2",
    system="<<SYS>>\n{content}\n<</SYS>>\n\n",
    user="[INST] {content} [/INST]",
    assistant=" {content}",
)

# Llama 3 instruct: <|begin_of_text|> (BOS), then per message
# <|start_header_id|>role<|end_header_id|>\n\n content <|eot_id|>; generation after the assistant header.
LLAMA3 = ChatTemplate(
    name="llama3",
    system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    observation="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
    assistant="{content}",
    end_of_turn=Special("<|eot_id|>"),
)

# a base model continuing a prompt: lines of text, the answer directly after (BLOOM/BLOOMZ, CPM-Ant, plain LMs)
PLAIN = ChatTemplate(name="plain", system="{content}\n", user="{content}\n", assistant="{content}")

TEMPLATES = {t.name: t for t in (CHATML, LLAMA2, LLAMA3, PLAIN)}
