"""The job pipeline: config -> family -> peft -> data -> engine -> output.

:func:`run_training` is what ``lmforge train`` and ``FineTune.train_local`` run
in every worker process. It takes the job's :class:`~lmforge.config.spec.JobSpec`
(built once, at the top: by the CLI, the API or the worker) and reads its typed
sections; nothing here validates the config again. Everything that can be checked
without weights (config, plugin names, capabilities, data records) is checked
before the model is loaded, so mistakes fail in seconds.

The engine is ``transformers.Trainer``; lmforge adds an atomic checkpoint save
(a crash mid-save never leaves a half-written ``checkpoint-N``), a JSONL step
log and the run outputs described in DESIGN.md §4.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Mapping

from lmforge.config.schema import to_yaml
from lmforge.config.spec import JobSpec, build_spec, thaw
from lmforge.plugins.descriptors import PeftContext, resolve_ref
from lmforge.errors import ConfigError, LmforgeError
from lmforge.runs import rundir
from lmforge.data.collate import ListDataset, make_collator
from lmforge.modeling.loading import BASE_MODEL_DIR, RUN_CONFIG, LoadOptions, ModelSource, load_model, resolve_model, save_model

from lmforge.train.job import (GENERATION_METRIC_KEYS, PARAMS_REPORT, TRAIN_LOG, TrainResult,  # noqa: F401
                               check_capabilities, log, resolved_run_config)


# --------------------------------------------------------------------------
# engine pieces


def parameter_report(model) -> dict:
    """Trainable / total parameter counts and the trainable names."""
    total = trainable = 0
    names = []
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        # 4-bit params store two values per byte
        if p.__class__.__name__ == "Params4bit":
            n = n * 2
        total += n
        if p.requires_grad:
            trainable += n
            names.append(name)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
        "trainable_names": names,
    }


def _trainer_classes():
    from transformers import Trainer, TrainerCallback

    class JsonlLogCallback(TrainerCallback):
        """Appends one JSON line per logging step: step, loss, lr, tokens/s, memory."""

        def __init__(self, path: str, loss_offset: float = 0.0) -> None:
            self.path = path
            self.last_time: float | None = None
            self.last_tokens = 0
            self.loss_offset = loss_offset  # loss sum of the steps before a resume
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kw):
            self.last_time = time.time()
            self.last_tokens = state.num_input_tokens_seen or 0
            self.first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            now = time.time()
            tokens = state.num_input_tokens_seen or 0
            row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch}
            for key in ("loss", "learning_rate", "grad_norm", "eval_loss", "train_loss"):
                if key in logs:
                    row["lr" if key == "learning_rate" else key] = logs[key]
            for key in GENERATION_METRIC_KEYS:  # eval_with_generation
                if key in logs:
                    row[key] = logs[key]
            if "train_loss" in row and self.first_step:  # Trainer averages only this call's steps
                row["train_loss"] = whole_run_loss(self.loss_offset, row["train_loss"], self.first_step,
                                                   state.global_step)
            if "loss" in logs and self.last_time is not None:
                dt = max(now - self.last_time, 1e-9)
                row["tokens_per_second"] = round((tokens - self.last_tokens) / dt, 1)
                self.last_time, self.last_tokens = now, tokens
            row["memory_mb"] = _memory_mb()
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    class LmforgeTrainer(Trainer):
        """``Trainer`` whose checkpoints appear atomically.

        Each checkpoint is written into ``OUTPUT_DIR/.staging/`` and renamed to
        ``checkpoint-N`` only once complete, so a kill during a save leaves the
        previous checkpoint as the latest valid one.
        """

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            for cb in self.callback_handler.callbacks:
                if hasattr(cb, "load_checkpoint_state"):
                    cb.load_checkpoint_state(self.model, resume_from_checkpoint)

        def _save_checkpoint(self, model, trial):
            run_dir = self._get_output_dir(trial=trial)
            staging_root = os.path.join(run_dir, ".staging")
            name = f"checkpoint-{self.state.global_step}"
            if self.args.should_save:
                shutil.rmtree(os.path.join(staging_root, name), ignore_errors=True)
                os.makedirs(staging_root, exist_ok=True)
            original = self._get_output_dir
            limit = self.args.save_total_limit
            self._get_output_dir = lambda trial=None: staging_root  # type: ignore[method-assign]
            self.args.save_total_limit = None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._get_output_dir = original  # type: ignore[method-assign]
                self.args.save_total_limit = limit
            _barrier()
            if self.args.should_save:
                # PEFT methods may keep state their save_pretrained misses (see PeftContext.callbacks)
                for cb in self.callback_handler.callbacks:
                    if hasattr(cb, "save_checkpoint_state"):
                        cb.save_checkpoint_state(self.model, os.path.join(staging_root, name))
                _write_loss_state(self, os.path.join(staging_root, name))
                final = os.path.join(run_dir, name)
                rundir.fsync_tree(os.path.join(staging_root, name))
                if os.path.exists(final):
                    rundir._remove_tree(final)
                os.replace(os.path.join(staging_root, name), final)
                try:
                    os.rmdir(staging_root)
                except OSError:
                    pass
                if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging_root):
                    self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(staging_root, run_dir, 1)
                rundir.rotate_checkpoints_safely(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
            _barrier()

    return LmforgeTrainer, JsonlLogCallback


def _write_loss_state(trainer, ckpt_dir: str) -> None:
    """Save the sum of step losses so far, so the ``train_loss`` of a resumed run covers the whole run."""
    pending = getattr(trainer, "_tr_loss", None)
    total = getattr(trainer, "_lmforge_loss_offset", 0.0) + getattr(trainer, "_total_loss_scalar", 0.0)
    total += float(pending.item()) if pending is not None else 0.0
    _write_atomic(os.path.join(ckpt_dir, rundir.LOSS_STATE),
                  json.dumps({"loss_sum": total, "global_step": trainer.state.global_step}))


def read_loss_offset(ckpt_dir: str | None) -> float:
    """The loss sum a checkpoint saved (0.0 for checkpoints written without one)."""
    if not ckpt_dir:
        return 0.0
    try:
        with open(os.path.join(ckpt_dir, rundir.LOSS_STATE), encoding="utf-8") as f:
            return float(json.load(f)["loss_sum"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def whole_run_loss(offset: float, call_loss: float | None, first_step: int, last_step: int) -> float | None:
    """Mean step loss over a whole run from the saved sum and ``Trainer``'s mean over this call's steps."""
    if call_loss is None or last_step <= 0:
        return call_loss
    return (offset + call_loss * (last_step - first_step)) / last_step


def _barrier() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    except Exception:  # noqa: BLE001
        pass


def _memory_mb() -> float:
    try:
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except Exception:  # noqa: BLE001
        pass
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except Exception:  # noqa: BLE001
        return 0.0


def _write_atomic(path: str, text: str) -> None:
    rundir.write_atomic(path, text)


# --------------------------------------------------------------------------
# the job


def run_training(job: JobSpec | Mapping, registry=None) -> TrainResult:
    """Run one training job in this process; returns a :class:`TrainResult`.

    ``job`` is the :class:`JobSpec` (or a raw config, validated here by
    :func:`~lmforge.config.spec.build_spec`). Raises
    :class:`~lmforge.errors.LmforgeError` subclasses for every user mistake
    (config, capability, data), before any weights are loaded.
    """
    from lmforge.plugins.registry import get_registry

    reg = registry or get_registry()
    spec = job if isinstance(job, JobSpec) else build_spec(job, reg)
    from lmforge.train.runstart import PREPARED_ENV

    # a second run into a busy directory fails before any work (rank 0 only; the ranks of a
    # launched job, and the workers of other nodes, run under the lock their launcher holds)
    out_dir = spec.run.output_dir
    if int(os.environ.get("RANK", "0")) == 0 and os.environ.get(PREPARED_ENV) != os.path.abspath(out_dir):
        rundir.refuse_if_locked(out_dir)
    from lmforge.runtime.threads import apply as apply_threads

    apply_threads(spec.run.threads, log)  # before any torch work: never oversubscribe a shared CPU
    import torch

    from lmforge.runtime.quiet import configure_for_training

    configure_for_training(torch.cuda.is_available())  # no library noise unless --verbose
    source = resolve_model(spec.model.name, family=spec.model.family, registry=reg)
    check_capabilities(spec, source, reg)
    from lmforge.train import evalgen

    evalgen.check(spec)
    # every check that needs no weights and no tokenization, before anything is written (rundir.py)
    from lmforge.train.runstart import disk_error, preflight

    resolved = resolved_run_config(spec, source, reg)
    start = preflight(spec, source, reg, log, resolved)
    if start.plan.action == "complete":
        return start.completed_result()

    # data records are read, validated and tokenized (through the token cache) before the model is loaded
    from lmforge.data.prepare import prepare_job_data

    job_data = prepare_job_data(spec.config, source, reg, log, seed=spec.train.arguments["seed"])
    start.begin()  # the exclusive lock on output_dir; --overwrite / --resume applied under it
    try:
        return _train_in_dir(spec, source, reg, job_data, start)
    except LmforgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - only a write failure (full disk, permissions) is rewritten
        err = disk_error(exc, out_dir)
        if err is None:
            raise
        raise err from None
    finally:
        start.release()


def _train_in_dir(spec: JobSpec, source: ModelSource, reg, job_data, start) -> TrainResult:
    out_dir = spec.run.output_dir
    import torch
    from transformers import TrainingArguments

    method = reg.peft_method(spec.peft.method)
    targs_kwargs = thaw(spec.train.arguments)  # training_arguments(spec), made once by build_spec
    from lmforge.modeling import longlora

    # long_context.shift_attn: LongLoRA's S2-Attn while training (None: off); refused with packing or a bad ratio
    # before any weights load. The group size follows spec.model.max_length, the length the job trains at.
    s2_group = longlora.check_shift_attn(spec)
    # memory estimate (OUTPUT_DIR/memory_estimate.json); dynamic_batch sets the micro-batch and
    # accumulation here, and a job that cannot fit stops before any weights load
    from lmforge.modeling.memory import plan_for_training

    plan_for_training(spec.config, source, targs_kwargs, reg, log)
    try:
        targs = TrainingArguments(**targs_kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"train: {exc}") from None

    options = LoadOptions(dtype=spec.model.dtype, attn_implementation=spec.model.attn_implementation,
                          trust_remote_code=spec.model.trust_remote_code, for_training=True,
                          long_context=spec.long_context)
    peft_options = thaw(spec.peft.options)
    if method.model_load_kwargs is not None:
        options.model_kwargs.update(resolve_ref(method.model_load_kwargs)(peft_options))
    torch.manual_seed(targs.seed)
    model, tokenizer = load_model(source, options)
    if s2_group is not None:
        previous = longlora.enable_shift_attn(model, s2_group, source.family.name)
        log(f"shifted sparse attention (LongLoRA): groups of {s2_group} tokens while training; "
            f"evaluation, generation and the saved model use {previous}")
    if spec.model.gradient_checkpointing and hasattr(model, "config"):
        model.config.use_cache = False
    ctx = PeftContext(family=source.family, tokenizer=tokenizer, config=spec.config)
    model = resolve_ref(method.apply)(model, peft_options, ctx)
    params = parameter_report(model)
    log(f"peft {method.name}: trainable params {params['trainable_params']:,} / {params['total_params']:,} "
        f"({params['trainable_percent']:.4f}%)")

    from lmforge.data.encoding import make_encoder

    encoder = make_encoder(tokenizer, source.family, max_length=spec.model.max_length,
                           train_on_prompt=spec.data.train_on_prompt, template=spec.data.template)
    from lmforge.plugins.chat_jinja import attach as attach_chat_template

    attach_chat_template(tokenizer, encoder)  # saved tokenizers render the training prompt (apply_chat_template)
    # memory-mapped datasets; tokenized again only if the model's tokenizer differs from the one loaded alone
    train_feats, valid_feats = job_data.datasets_for(encoder)
    train_groups = None
    if spec.packing.enabled and not spec.packing.online:
        train_groups = train_feats.line_groups()  # the samples of one offline-packed line stay one row

    LmforgeTrainer, JsonlLogCallback = _trainer_classes()
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
    resume = start.resume_checkpoint
    loss_offset = read_loss_offset(resume)
    log_path = os.path.join(out_dir, TRAIN_LOG)
    train_dataset, collator, packed = ListDataset(train_feats), make_collator(encoder, tokenizer), None
    if spec.packing.enabled:
        from lmforge.packing import prepare_packed_training

        packed = prepare_packed_training(model, encoder, tokenizer, train_feats, spec.model.max_length,
                                         groups=train_groups, fallback=collator,
                                         attn_requested=spec.model.attn_implementation)
        log(f"{packed.stats.summary()}; attention: {packed.attention}")
        train_dataset, collator = packed.dataset, packed.collator
    trainer = LmforgeTrainer(
        model=model,
        args=targs,
        train_dataset=train_dataset,
        eval_dataset=ListDataset(valid_feats) if valid_feats else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(log_path, loss_offset), *ctx.callbacks],
    )
    from lmforge.train import evalgen
    from lmforge.runs import files as runfiles

    runfiles.pin_tensorboard_dir(trainer, out_dir)  # before the first evaluate() logs anything
    trainer.add_callback(runfiles.callback())
    from lmforge.runtime.quiet import quiet_progress

    quiet_progress(trainer)  # one progress bar on stderr while training (eval bars with --verbose)
    generation_metrics = evalgen.callback(spec, source.family, tokenizer, reg)
    if generation_metrics is not None:
        generation_metrics.trainer = trainer
        trainer.add_callback(generation_metrics)
    trainer._lmforge_loss_offset = loss_offset
    if is_main:
        _write_atomic(os.path.join(out_dir, RUN_CONFIG), to_yaml(start.run_config))
        _write_atomic(os.path.join(out_dir, PARAMS_REPORT), json.dumps(params, indent=1))

    eval_before = None
    if valid_feats and resume is None:
        eval_before = float(trainer.evaluate()["eval_loss"])
        log(f"eval loss before training: {eval_before:.4f}")
    start.training()
    resumed_step = _checkpoint_global_step(resume)
    if resume is not None and targs.max_steps > 0 and resumed_step >= targs.max_steps:
        # the checkpoint is the last step (the kill came during the final save): load it, train nothing more
        # (Trainer.train would run one step past max_steps)
        from transformers import TrainerState

        log(f"{os.path.basename(resume)} is the last step ({resumed_step}); saving it as the final model")
        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(os.path.join(resume, "trainer_state.json"))
        train_loss = loss_offset / resumed_step if loss_offset else None
    else:
        try:
            result = trainer.train(resume_from_checkpoint=resume)
        except Exception as exc:
            import pickle

            if resume is not None and isinstance(exc, pickle.UnpicklingError):
                from lmforge.runs.artefacts import unpickling_message

                raise LmforgeError(unpickling_message(resume, exc)) from None
            raise
        train_loss = whole_run_loss(loss_offset, result.training_loss, resumed_step if resume else 0,
                                    trainer.state.global_step)
    eval_after = None
    if valid_feats:
        eval_after = float(trainer.evaluate()["eval_loss"])
        log(f"eval loss after training: {eval_after:.4f}")
    if packed is not None:
        packed.restore(trainer.model)
    if s2_group is not None:
        longlora.disable_shift_attn(trainer.model)  # the saved config.json names the family's own attention

    # the final model is staged and moved into place; lmforge_run.json says "complete" only after
    staged = start.staging_dir() if is_main else None
    with gathered_for_save(trainer):  # ZeRO-3: every rank takes part in gathering the full weights
        if is_main:
            save_outputs(trainer.model, tokenizer, source, method, staged, ctx)
            runfiles.remove_peft_cards(staged)
    if is_main:
        summary = {"global_step": trainer.state.global_step, "train_loss": train_loss,
                   "eval_loss_before": eval_before, "eval_loss_after": eval_after, **params}
        summary.pop("trainable_names")
        if resume is not None:
            summary["resumed_from"] = resume
        if packed is not None:
            summary["packing"] = packed.stats.to_json()
        start.finish(staged, summary)
        log(f"saved to {out_dir}")
    _barrier()
    return TrainResult(output_dir=out_dir, global_step=trainer.state.global_step, train_loss=train_loss,
                       eval_loss_before=eval_before, eval_loss_after=eval_after, params=params,
                       model=trainer.model, tokenizer=tokenizer)


def gathered_for_save(trainer):
    """Under DeepSpeed ZeRO-3 a context in which every parameter is whole on every rank (a
    collective: all ranks enter it); otherwise a no-op. Saving inside it writes the real weights,
    not the empty per-rank placeholders, for full fine-tunes and adapters alike."""
    import contextlib

    if not getattr(trainer, "is_deepspeed_enabled", False):
        return contextlib.nullcontext()
    plugin = trainer.accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None)


def _checkpoint_global_step(ckpt: str | None) -> int:
    if not ckpt:
        return 0
    try:
        with open(os.path.join(ckpt, "trainer_state.json"), encoding="utf-8") as f:
            return int(json.load(f).get("global_step", 0))
    except (OSError, ValueError, TypeError):
        return rundir.checkpoint_step(ckpt) or 0


def save_outputs(model, tokenizer, source: ModelSource, method, out_dir: str, ctx: PeftContext) -> None:
    """Write the final model: a full checkpoint, or the method's trained part (+ the base for presets)."""
    if hasattr(model, "module") and not hasattr(model, "save_pretrained"):
        model = model.module
    if method.save is not None:
        resolve_ref(method.save)(model, tokenizer, out_dir, ctx)
    elif method.load is not None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    else:
        save_model(model, tokenizer, source.family, out_dir)
    if method.load is not None and source.preset is not None:
        # a preset has no directory to reload the base from; keep the exact base weights
        base = model.get_base_model() if hasattr(model, "get_base_model") else None
        _save_preset_base(source, out_dir, base)


def _save_preset_base(source: ModelSource, out_dir: str, trained_base) -> None:
    """Save the untouched preset base model next to the adapter so the run reloads anywhere."""
    from lmforge.modeling.loading import LoadOptions as _LO

    base_dir = os.path.join(out_dir, BASE_MODEL_DIR)
    fresh, tok = load_model(source, _LO(dtype="fp32"))
    save_model(fresh, tok, source.family, base_dir)
    from lmforge.runs.files import relative_base_reference

    relative_base_reference(out_dir, base_dir)  # "base_model": the run directory stays relocatable
