"""Built-in PEFT methods: the registration hook (pure Python) and the ``lmforge merge`` command.

Each method lives in its own module of this package, which owns its options
(``OPTIONS``), its cross-option ``check``, its implementation and its
:class:`~lmforge.plugins.descriptors.PeftMethod` descriptor (``METHODS``); this
module only collects them. The modules import torch/peft inside functions only
and the descriptors reference the code by ``"module:attr"`` strings, so
registering costs no torch import. Shared pieces: :mod:`.common` (peft-adapter
load/merge, trained-tensor save/load, finding the decoder layers) and
:mod:`.checks` (option rules).

| method | implementation | saves |
|---|---|---|
| ``full`` | every parameter trains | full checkpoint |
| ``freeze`` | last/first N blocks and named modules train | trained tensors |
| ``lora``, ``dora`` | peft ``LoraConfig`` (``use_dora``) | peft adapter |
| ``qlora`` | 4-bit NF4 base (bitsandbytes) + peft LoRA | peft adapter |
| ``adalora`` | peft ``AdaLoraConfig`` + rank allocator callback | peft adapter |
| ``ia3`` | peft ``IA3Config`` | peft adapter |
| ``prefix`` | peft ``PrefixTuningConfig`` (P-tuning v2) | peft adapter |
| ``prompt`` | peft ``PromptTuningConfig`` | peft adapter |
| ``ptuning`` | peft ``PromptEncoderConfig`` | peft adapter |
| ``bitfit`` | biases only | trained tensors |
| ``unipelt`` | gated LoRA + prefix + adapter, written here | trained tensors |
"""

from __future__ import annotations

from lmforge import hookimpl

from . import adalora, bitfit, freeze, full, ia3, lora, prefix, prompt, ptuning, qlora, unipelt

# the order ``lmforge plugins`` and error messages list the methods in
METHODS = (*full.METHODS, *freeze.METHODS, *lora.METHODS, *qlora.METHODS, *adalora.METHODS, *ia3.METHODS,
           *prefix.METHODS, *prompt.METHODS, *ptuning.METHODS, *bitfit.METHODS, *unipelt.METHODS)


@hookimpl
def register_peft_methods(register):
    for method in METHODS:
        register(method)


@hookimpl
def register_commands(cli):
    import click

    from lmforge.errors import user_errors

    @cli.command("merge")
    @click.argument("run_dir", type=click.Path(file_okay=False))
    @click.option("--output-dir", "-o", required=True, help="where the merged checkpoint goes")
    @click.option("--dtype", default="fp32", type=click.Choice(["fp32", "bf16", "fp16"]),
                  help="dtype of the saved weights")
    @user_errors
    def merge_cmd(run_dir: str, output_dir: str, dtype: str) -> None:
        """Fold a run's adapter into its base model and save a plain transformers checkpoint.

        Works for runs of lora, dora, ia3, adalora, qlora (dequantized first) and freeze.
        Given a DeepSpeed ``checkpoint-N`` instead, writes one plain checkpoint rebuilt from
        its ZeRO shards (see docs/distributed.md).
        """
        from .merge import merge_run

        out = merge_run(run_dir, output_dir, dtype=dtype)
        click.echo(out)
