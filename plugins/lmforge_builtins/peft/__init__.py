"""Built-in PEFT methods: registration only (pure Python), and the ``lmforge merge`` command.

Each method's implementation lives in its own module in this package and is
referenced by a ``"module:attr"`` string, so registering costs no torch import.

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
from lmforge.plugins.descriptors import Option, PeftMethod

_P = "lmforge_builtins.peft"

TARGETS_HELP = "module names to adapt: 'default' (the family's choice), 'all-linear', or a list"

LORA_OPTIONS = (
    Option("r", int, 8, "rank of the update matrices"),
    Option("alpha", float, 16.0, "scaling numerator: the update is scaled by alpha / r"),
    Option("dropout", float, 0.05, "dropout on the LoRA input"),
    Option("target_modules", (str, list), "default", TARGETS_HELP),
    Option("bias", str, "none", "which biases train", choices=("none", "all", "lora_only")),
    Option("modules_to_save", list, None, "extra modules trained fully and saved with the adapter"),
    Option("use_rslora", bool, False, "rank-stabilised scaling alpha / sqrt(r)"),
)

QLORA_OPTIONS = LORA_OPTIONS + (
    Option("quant_type", str, "nf4", "4-bit data type of the frozen base weights", choices=("nf4", "fp4")),
    Option("double_quant", bool, True, "also quantize the quantization constants (saves ~0.4 bit/param)"),
    Option("compute_dtype", str, "auto", "dtype the 4-bit weights are dequantized to for matmuls "
           "(auto: fp32 on CPU, bf16 on GPUs that support it)", choices=("auto", "fp32", "bf16", "fp16")),
)

ADALORA_OPTIONS = (
    Option("init_r", int, 12, "initial rank of every adapted matrix"),
    Option("target_r", int, 4, "average rank left after reallocation"),
    Option("tinit", int, None, "warm-up steps before ranks are pruned (default: 10% of the steps)"),
    Option("tfinal", int, None, "final steps with ranks fixed (default: 20% of the steps)"),
    Option("deltaT", int, 1, "reallocate ranks every deltaT steps"),
    Option("beta1", float, 0.85, "EMA coefficient of the sensitivity"),
    Option("beta2", float, 0.85, "EMA coefficient of the uncertainty"),
    Option("orth_reg_weight", float, 0.5, "weight of the orthogonality regulariser on P and Q"),
    Option("alpha", float, 32.0, "scaling numerator (lora_alpha)"),
    Option("dropout", float, 0.05, "dropout on the adapter input"),
    Option("target_modules", (str, list), "default", TARGETS_HELP),
)

IA3_OPTIONS = (
    Option("target_modules", (str, list), "default",
           "modules whose activations are rescaled: 'default' (peft's choice for the architecture) or a list"),
    Option("feedforward_modules", (str, list), "default",
           "which target_modules are feed-forward layers (their input is rescaled); 'default' with default targets"),
)

VIRTUAL_TOKENS = Option("num_virtual_tokens", int, 16, "number of virtual tokens")

PREFIX_OPTIONS = (
    VIRTUAL_TOKENS,
    Option("prefix_projection", bool, False, "reparameterise the prefixes through a two-layer MLP"),
    Option("encoder_hidden_size", int, None, "hidden size of that MLP (default: the model's hidden size)"),
)

PROMPT_OPTIONS = (
    VIRTUAL_TOKENS,
    Option("init", str, "vocab", "initial virtual token embeddings: embeddings of random vocabulary tokens, "
           "random vectors, or the embeddings of init_text", choices=("vocab", "random", "text")),
    Option("init_text", str, None, "text whose token embeddings start the prompt (init: text)"),
)

PTUNING_OPTIONS = (
    VIRTUAL_TOKENS,
    Option("encoder", str, "mlp", "prompt encoder architecture", choices=("mlp", "lstm")),
    Option("encoder_hidden_size", int, None, "prompt encoder hidden size (default: the model's hidden size)"),
    Option("encoder_num_layers", int, 2, "LSTM encoder layers (the MLP encoder always has 2)"),
    Option("encoder_dropout", float, 0.0, "prompt encoder dropout"),
)

FREEZE_OPTIONS = (
    Option("trainable_layers", int, 2, "train the last N transformer blocks (negative: the first |N|; 0: none)"),
    Option("trainable_modules", list, None,
           "inside those blocks, train only these submodules (e.g. [mlp] or [self_attn]); default: whole blocks"),
    Option("extra_modules", list, None, "also train these modules outside the blocks (e.g. [lm_head, norm])"),
)

BITFIT_OPTIONS = (
    Option("add_biases", bool, False, "for models without biases (LLaMA): add zero-initialised biases to the "
           "linear layers of every block and train those"),
    Option("modules", list, None, "train only the biases of these modules (default: every bias)"),
)

UNIPELT_OPTIONS = (
    Option("r", int, 8, "LoRA rank"),
    Option("alpha", float, 16.0, "LoRA scaling numerator (alpha / r)"),
    Option("dropout", float, 0.0, "dropout on the LoRA input"),
    Option("lora_targets", list, ["q_proj", "v_proj"], "linear layers that get a gated LoRA update"),
    Option("prefix_tokens", int, 10, "prefix length per layer"),
    Option("adapter_size", int, 48, "bottleneck width of the adapter after the feed-forward block"),
    Option("adapter_act", str, "relu", "adapter activation", choices=("relu", "gelu", "silu", "tanh")),
    Option("ffn_module", str, "mlp", "name of the feed-forward module inside each block"),
    Option("attention_module", str, "auto",
           "name of the attention module inside each block (auto: the one whose class is an Attention)"),
)

_PEFT_LOAD = f"{_P}.common:load_peft_adapter"
_PEFT_MERGE = f"{_P}.common:merge_peft"

FULL = PeftMethod(
    name="full",
    description="full fine-tuning: every parameter trains; saves a complete checkpoint",
    apply=f"{_P}.full:apply",
    saves="full",
)

FREEZE = PeftMethod(
    name="freeze",
    description="freeze tuning: only the last (or first) N blocks and named modules train",
    apply=f"{_P}.freeze:apply",
    options=FREEZE_OPTIONS,
    load=f"{_P}.freeze:load",
    save=f"{_P}.freeze:save",
    merge=f"{_P}.freeze:merge",
    saves="trained-tensors",
    check=f"{_P}.checks:check_freeze",
)

LORA = PeftMethod(
    name="lora",
    description="LoRA (peft): low-rank updates on the target linear layers",
    apply=f"{_P}.lora:apply",
    options=LORA_OPTIONS,
    load=_PEFT_LOAD,
    merge=_PEFT_MERGE,
    saves="peft-adapter",
    requires=("peft",),
    check=f"{_P}.checks:check_lora",
)

DORA = PeftMethod(
    name="dora",
    description="DoRA (peft): LoRA with a separately trained magnitude per output feature",
    apply=f"{_P}.lora:apply_dora",
    options=LORA_OPTIONS,
    load=_PEFT_LOAD,
    merge=_PEFT_MERGE,
    saves="peft-adapter",
    requires=("peft",),
    check=f"{_P}.checks:check_lora",
)

QLORA = PeftMethod(
    name="qlora",
    description="QLoRA: base linear layers quantized to 4-bit NF4 (bitsandbytes) + LoRA (peft)",
    apply=f"{_P}.qlora:apply",
    options=QLORA_OPTIONS,
    load=f"{_P}.qlora:load",
    merge=f"{_P}.qlora:merge",
    model_load_kwargs=f"{_P}.qlora:model_load_kwargs",
    saves="peft-adapter",
    requires=("peft", "bitsandbytes"),
    check=f"{_P}.checks:check_lora",
)

ADALORA = PeftMethod(
    name="adalora",
    description="AdaLoRA (peft): SVD-form LoRA whose rank budget is reallocated during training",
    apply=f"{_P}.adalora:apply",
    options=ADALORA_OPTIONS,
    load=_PEFT_LOAD,
    merge=_PEFT_MERGE,
    saves="peft-adapter",
    requires=("peft",),
    check=f"{_P}.checks:check_adalora",
)

IA3 = PeftMethod(
    name="ia3",
    description="(IA)^3 (peft): learned rescaling of keys, values and feed-forward activations",
    apply=f"{_P}.ia3:apply",
    options=IA3_OPTIONS,
    load=_PEFT_LOAD,
    merge=_PEFT_MERGE,
    saves="peft-adapter",
    requires=("peft",),
    check=f"{_P}.checks:check_ia3",
)

PREFIX = PeftMethod(
    name="prefix",
    description="prefix tuning / P-tuning v2 (peft): trained key/value prefixes in every layer",
    apply=f"{_P}.prefix:apply",
    options=PREFIX_OPTIONS,
    load=_PEFT_LOAD,
    saves="peft-adapter",
    requires=("peft",),
    check=f"{_P}.checks:check_prefix",
)

PROMPT = PeftMethod(
    name="prompt",
    description="prompt tuning (peft): trained virtual token embeddings before the input",
    apply=f"{_P}.prompt:apply",
    options=PROMPT_OPTIONS,
    load=f"{_P}.prompt:load",
    saves="peft-adapter",
    requires=("peft",),
    check=f"{_P}.checks:check_prompt",
)

PTUNING = PeftMethod(
    name="ptuning",
    description="P-tuning (peft): virtual tokens produced by a trained prompt encoder (MLP or LSTM)",
    apply=f"{_P}.ptuning:apply",
    options=PTUNING_OPTIONS,
    load=f"{_P}.prompt:load",
    saves="peft-adapter",
    requires=("peft",),
    check=f"{_P}.checks:check_ptuning",
)

BITFIT = PeftMethod(
    name="bitfit",
    description="BitFit: only bias terms train (refused on models without biases unless add_biases)",
    apply=f"{_P}.bitfit:apply",
    options=BITFIT_OPTIONS,
    load=f"{_P}.bitfit:load",
    save=f"{_P}.bitfit:save",
    saves="trained-tensors",
)

UNIPELT = PeftMethod(
    name="unipelt",
    description="UniPELT: gated LoRA (q, v) + gated prefix tuning + gated bottleneck adapter in every block",
    apply=f"{_P}.unipelt:apply",
    options=UNIPELT_OPTIONS,
    load=f"{_P}.unipelt:load",
    save=f"{_P}.unipelt:save",
    saves="trained-tensors",
    check=f"{_P}.checks:check_unipelt",
)

METHODS = (FULL, FREEZE, LORA, DORA, QLORA, ADALORA, IA3, PREFIX, PROMPT, PTUNING, BITFIT, UNIPELT)


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
