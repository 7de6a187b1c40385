"""P-tuning through peft: virtual prompt tokens produced by a trained prompt encoder (MLP or LSTM).

peft saves a p-tuning adapter as the encoder's *output* (the virtual token
embeddings), which is all inference needs. A Trainer checkpoint saved that way
cannot resume: the encoder's own weights are gone, and loading the output as the
encoder's input embedding would run it through the encoder twice. So
:class:`PromptEncoderStateCallback` also writes the whole encoder into each
``checkpoint-N`` and restores it on resume (prefix tuning with
``prefix_projection`` uses it too).
"""

from __future__ import annotations

import os

from lmforge.plugins.descriptors import Option

from . import prompt
from .checks import fraction, positive, recheck
from .common import peft_adapter_method
from .prompt import VIRTUAL_TOKENS

OPTIONS = (
    VIRTUAL_TOKENS,
    Option("encoder", str, "mlp", "prompt encoder architecture", choices=("mlp", "lstm")),
    Option("encoder_hidden_size", int, None, "prompt encoder hidden size (default: the model's hidden size)"),
    Option("encoder_num_layers", int, 2, "LSTM encoder layers (the MLP encoder always has 2)"),
    Option("encoder_dropout", float, 0.0, "prompt encoder dropout"),
)


def check(options, config) -> None:
    positive(options, "num_virtual_tokens", "encoder_hidden_size", "encoder_num_layers")
    fraction(options, "encoder_dropout")

PROMPT_ENCODER_STATE = "prompt_encoder_state.safetensors"


def apply(model, options, ctx):
    from peft import PromptEncoderConfig, get_peft_model

    recheck(check, options, ctx.config)
    config = PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=options["num_virtual_tokens"],
        encoder_reparameterization_type=options["encoder"].upper(),
        encoder_hidden_size=options["encoder_hidden_size"] or model.config.hidden_size,
        encoder_num_layers=options["encoder_num_layers"],
        encoder_dropout=options["encoder_dropout"],
    )
    model = get_peft_model(model, config)
    ctx.callbacks.append(prompt_encoder_state_callback(model))
    return model


def prompt_encoder_state_callback(peft_model):
    """A TrainerCallback that saves/restores the full prompt encoder with each checkpoint."""
    from transformers import TrainerCallback

    class PromptEncoderStateCallback(TrainerCallback):
        def __init__(self) -> None:
            self.model = peft_model

        def _encoder(self):
            return self.model.prompt_encoder[self.model.active_adapter]

        def save_checkpoint_state(self, model, checkpoint_dir: str) -> None:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self._encoder().state_dict().items()}
            save_file(state, os.path.join(checkpoint_dir, PROMPT_ENCODER_STATE), metadata={"format": "pt"})

        def load_checkpoint_state(self, model, checkpoint_dir: str) -> None:
            from safetensors.torch import load_file

            path = os.path.join(checkpoint_dir, PROMPT_ENCODER_STATE)
            if os.path.isfile(path):
                enc = self._encoder()
                device = next(enc.parameters()).device
                enc.load_state_dict({k: v.to(device) for k, v in load_file(path).items()}, strict=True)

    return PromptEncoderStateCallback()


PTUNING = peft_adapter_method(
    __name__, name="ptuning", options=OPTIONS, load=f"{prompt.__name__}:load", merge=None,
    description="P-tuning (peft): virtual tokens produced by a trained prompt encoder (MLP or LSTM)")

METHODS = (PTUNING,)
