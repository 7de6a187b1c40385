"""Prefix tuning / P-tuning v2 through peft: trained key/value prefixes in every layer.

peft hands the prefixes to the model as ``past_key_values`` (a transformers
``Cache``) and extends the attention mask, so a family works when its attention
reads past key/values in the standard way. A family whose attention does not
(GLM's own cache layouts, ALiBi variants ...) declares ``prefix`` unsupported in
its capability map and the job is refused before loading; :func:`apply` also
refuses a model whose ``forward`` takes no KV cache (``past_key_values``, or
``cache`` from transformers 5.24 on).
"""

from __future__ import annotations

from lmforge.errors import CapabilityError
from lmforge.plugins.descriptors import Option

from .checks import positive, recheck
from .common import peft_adapter_method
from .prompt import VIRTUAL_TOKENS
from .ptuning import prompt_encoder_state_callback

OPTIONS = (
    VIRTUAL_TOKENS,
    Option("prefix_projection", bool, False, "reparameterise the prefixes through a two-layer MLP"),
    Option("encoder_hidden_size", int, None, "hidden size of that MLP (default: the model's hidden size)"),
)


def check(options, config) -> None:
    positive(options, "num_virtual_tokens", "encoder_hidden_size")


def apply(model, options, ctx):
    from peft import PrefixTuningConfig, get_peft_model

    from lmforge.modeling.hfcompat import forward_takes_cache

    recheck(check, options, ctx.config)
    if not forward_takes_cache(model.forward):
        raise CapabilityError(
            f"peft.method: prefix tuning passes the prefixes as past_key_values, which "
            f"{type(model).__name__}.forward does not take"
        )
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=options["num_virtual_tokens"],
        prefix_projection=options["prefix_projection"],
        encoder_hidden_size=options["encoder_hidden_size"] or model.config.hidden_size,
    )
    model = get_peft_model(model, config)
    if options["prefix_projection"]:
        ctx.callbacks.append(prompt_encoder_state_callback(model))
    return model


PREFIX = peft_adapter_method(
    __name__, name="prefix", options=OPTIONS, merge=None,
    description="prefix tuning / P-tuning v2 (peft): trained key/value prefixes in every layer")

METHODS = (PREFIX,)
