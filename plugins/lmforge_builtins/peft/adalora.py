"""AdaLoRA through peft, with the rank allocator actually run during training.

peft's AdaLoRA only reallocates ranks when the training loop calls
``update_and_allocate(step)`` after each optimizer step, before the gradients
are cleared; ``transformers.Trainer`` does not. :class:`RankAllocatorCallback`
does it in ``on_optimizer_step`` (gradients are still present there), and fixes
the schedule (``total_step``, ``tinit``, ``tfinal``) from the real number of
steps when training begins.

Checkpoints: peft saves AdaLoRA adapters shrunk to the current rank pattern,
which a resumed run (whose fresh adapter still has ``init_r`` ranks) cannot load.
So ``checkpoint-N`` keeps the full-rank tensors (pruned triplets are zero, so
the adapter computes the same function) and the allocator's state, and a resume
restores both. The final run directory is peft's ordinary shrunk adapter.
"""

from __future__ import annotations

import json
import os

from lmforge.errors import ConfigError
from lmforge.plugins.descriptors import Option

from .checks import fraction, max_steps, positive, recheck
from .common import peft_adapter_method
from .lora import TARGETS_HELP

ALLOCATOR_STATE = "adalora_allocator.safetensors"
ALLOCATOR_META = "adalora_allocator.json"
PLACEHOLDER_STEPS = 10_000  # AdaLoraConfig needs a total before the Trainer knows it

OPTIONS = (
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


def check(options, config) -> None:
    """Ranks only shrink, and the schedule leaves steps to reallocate them in (when max_steps is known)."""
    positive(options, "init_r", "target_r", "deltaT")
    fraction(options, "dropout")
    if options["target_r"] > options["init_r"]:
        raise ValueError(f"peft.target_r: {options['target_r']} is above init_r ({options['init_r']}); "
                         "AdaLoRA only removes rank")
    for name in ("tinit", "tfinal"):
        if options[name] is not None and options[name] < 0:
            raise ValueError(f"peft.{name}: must be >= 0, got {options[name]}")
    steps = max_steps(config)
    if steps is not None:
        tinit = options["tinit"] if options["tinit"] is not None else int(0.1 * steps)
        tfinal = options["tfinal"] if options["tfinal"] is not None else int(0.2 * steps)
        if tinit + tfinal >= steps:
            raise ValueError(f"peft.tinit/peft.tfinal: tinit ({tinit}) + tfinal ({tfinal}) must be below "
                             f"train.max_steps ({steps}), or no step is left to reallocate ranks")


def adalora_config(options: dict, ctx, total_step: int):
    from peft import AdaLoraConfig

    tinit, tfinal = schedule(options, total_step)
    return AdaLoraConfig(
        init_r=options["init_r"],
        target_r=options["target_r"],
        tinit=tinit,
        tfinal=tfinal,
        deltaT=options["deltaT"],
        beta1=options["beta1"],
        beta2=options["beta2"],
        orth_reg_weight=options["orth_reg_weight"],
        total_step=total_step,
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=ctx.lora_targets(options["target_modules"]),
        task_type="CAUSAL_LM",
    )


def schedule(options: dict, total_step: int) -> tuple[int, int]:
    """``(tinit, tfinal)``: the options, or 10% / 20% of the steps when unset."""
    tinit = options["tinit"] if options["tinit"] is not None else int(0.1 * total_step)
    tfinal = options["tfinal"] if options["tfinal"] is not None else int(0.2 * total_step)
    if tinit + tfinal >= total_step:
        raise ConfigError(
            f"peft.tinit/peft.tfinal: tinit ({tinit}) + tfinal ({tfinal}) must be below the number of "
            f"training steps ({total_step}), or no step is left to reallocate ranks"
        )
    return tinit, tfinal


def apply(model, options, ctx):
    from peft import get_peft_model

    recheck(check, options, ctx.config)
    max_steps = (ctx.config.get("train") or {}).get("max_steps") or 0
    total = max_steps if max_steps and max_steps > 0 else PLACEHOLDER_STEPS
    model = get_peft_model(model, adalora_config(options, ctx, total))
    ctx.callbacks.append(_make_callback(model, options))
    return model


def _make_callback(peft_model, options: dict):
    from transformers import TrainerCallback

    class RankAllocatorCallback(TrainerCallback):
        """Runs AdaLoRA's budget schedule and rank masking after every optimizer step."""

        def __init__(self) -> None:
            self.model = peft_model
            self.options = options

        @property
        def tuner(self):
            return self.model.base_model

        def on_train_begin(self, args, state, control, **kwargs):
            cfg = self.model.peft_config[self.tuner.trainable_adapter_name]
            tinit, tfinal = schedule(self.options, state.max_steps)
            cfg.total_step, cfg.tinit, cfg.tfinal = state.max_steps, tinit, tfinal

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.tuner.update_and_allocate(state.global_step)

        # checkpoint-N: full-rank tensors + allocator state (see the module docstring)
        def save_checkpoint_state(self, model, checkpoint_dir: str) -> None:
            from peft import get_peft_model_state_dict
            from safetensors.torch import save_file

            name = self.tuner.trainable_adapter_name
            cfg = self.model.peft_config[name]
            pattern = cfg.rank_pattern
            cfg.rank_pattern = None
            try:
                full = get_peft_model_state_dict(self.model, adapter_name=name)
            finally:
                cfg.rank_pattern = pattern
            save_file({k: v.contiguous() for k, v in full.items()},
                      os.path.join(checkpoint_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
            acfg_path = os.path.join(checkpoint_dir, "adapter_config.json")
            if os.path.isfile(acfg_path):
                with open(acfg_path, encoding="utf-8") as f:
                    acfg = json.load(f)
                acfg["rank_pattern"] = None  # the tensors above are full rank
                with open(acfg_path, "w", encoding="utf-8") as f:
                    json.dump(acfg, f, indent=2)
            alloc = self.tuner.rankallocator
            tensors = {}
            for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
                for key, t in getattr(alloc, kind).items():
                    tensors[f"{kind}::{key}"] = t.detach().cpu().contiguous()
            if tensors:
                save_file(tensors, os.path.join(checkpoint_dir, ALLOCATOR_STATE))
            meta = {"rank_pattern": _jsonable(pattern)}
            with open(os.path.join(checkpoint_dir, ALLOCATOR_META), "w", encoding="utf-8") as f:
                json.dump(meta, f)

        def load_checkpoint_state(self, model, checkpoint_dir: str) -> None:
            from safetensors.torch import load_file

            meta_path = os.path.join(checkpoint_dir, ALLOCATOR_META)
            if not os.path.isfile(meta_path):
                return
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            name = self.tuner.trainable_adapter_name
            self.model.peft_config[name].rank_pattern = meta.get("rank_pattern")
            alloc = self.tuner.rankallocator
            alloc.reset_ipt()
            path = os.path.join(checkpoint_dir, ALLOCATOR_STATE)
            if os.path.isfile(path):
                device = next(self.model.parameters()).device
                for key, t in load_file(path).items():
                    kind, _, pname = key.partition("::")
                    getattr(alloc, kind)[pname] = t.to(device)

    return RankAllocatorCallback()


def _jsonable(pattern):
    if pattern is None:
        return None
    out = {}
    for k, v in pattern.items():
        out[k] = v.view(-1).tolist() if hasattr(v, "view") else list(v)
    return out


def current_ranks(model) -> dict[str, int]:
    """Rank per adapted module: the non-zero entries of ``lora_E`` (pruned triplets are zeroed)."""
    out = {}
    for name, p in model.named_parameters():
        if ".lora_E." in name:
            out[name.split(".lora_E.")[0]] = int((p.detach() != 0).sum().item())
    return out


ADALORA = peft_adapter_method(
    __name__, name="adalora", options=OPTIONS,
    description="AdaLoRA (peft): SVD-form LoRA whose rank budget is reallocated during training")

METHODS = (ADALORA,)
