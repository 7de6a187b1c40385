"""Starting, resuming and finishing a run in its output directory (called by :mod:`lmforge.train.pipeline`).

:func:`preflight` runs every check that needs no weights and no tokenization
(batch sizes and other ``train:`` values, the model directory's files, the
data files, whether ``output_dir`` is writable, what is already in it) and
writes nothing. :meth:`RunStart.begin` then takes the directory's lock,
re-checks under it, applies ``--overwrite`` or prepares ``--resume``, and
records the run as ``preparing``. :meth:`RunStart.finish` publishes the final
model atomically and marks the run ``complete``.

Only global rank 0 touches the directory; with a multi-process launcher the
``lmforge train`` parent does the checks and holds the lock (see
:func:`launch_workers_config`), and the workers find ``LMFORGE_RUN_PREPARED`` set.
Both read the job's :class:`~lmforge.config.spec.JobSpec`.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from lmforge.config.spec import JobSpec
from lmforge.runs import rundir
from lmforge.errors import ConfigError, LmforgeError

PREPARED_ENV = "LMFORGE_RUN_PREPARED"
RESULTS = "train_results.json"
FINAL_STAGING = os.path.join(rundir.STAGING, "final")

# train: keys that must be positive integers, and ones that must be non-negative numbers
# (save_steps before eval_steps: without an eval_steps of its own, evaluation runs every save_steps)
_POSITIVE_INT = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "eval_accumulation_steps", "logging_steps", "save_steps", "eval_steps")
_NON_NEGATIVE = ("learning_rate", "weight_decay", "warmup_steps", "warmup_ratio", "max_grad_norm",
                 "save_total_limit", "dataloader_num_workers")


def check_train_values(targs: Mapping[str, Any]) -> None:
    """Batch sizes, step counts and rates that ``TrainingArguments`` would accept but training cannot use."""
    for key in _POSITIVE_INT:
        v = targs.get(key)
        if v is None or isinstance(v, float) and key in ("logging_steps", "eval_steps", "save_steps") and 0 < v < 1:
            continue  # None = not used; transformers takes a ratio < 1 for *_steps
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"train.{key}: must be a positive integer, got {v!r}")
    for key in _NON_NEGATIVE:
        v = targs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ConfigError(f"train.{key}: must be a non-negative number, got {v!r}")
    ms = targs.get("max_steps", -1)
    if isinstance(ms, bool) or not isinstance(ms, int) or (ms <= 0 and ms != -1):
        raise ConfigError(f"train.max_steps: must be a positive integer (or -1 to train by epochs), got {ms!r}")
    ep = targs.get("num_train_epochs", 1)
    if ms == -1 and (isinstance(ep, bool) or not isinstance(ep, (int, float)) or ep <= 0):
        raise ConfigError(f"train.num_train_epochs: must be positive when train.max_steps is not set, got {ep!r}")


def _check_data_paths(spec: JobSpec) -> None:
    from lmforge.data.readers import expand_paths

    for split, files in (("train", spec.data.train_file), ("valid", spec.data.valid_file)):
        if files:
            expand_paths(files, f"data.{split}_file", allow_index=True)
    if spec.data.mix and not os.path.isfile(spec.data.mix):
        raise ConfigError(f"data.mix: {spec.data.mix}: file not found")


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _prepared_by_launcher(out_dir: str) -> bool:
    return os.environ.get(PREPARED_ENV) == os.path.abspath(out_dir)


@dataclass
class RunStart:
    """One run's hold on its output directory, from the checks to ``complete``."""

    spec: JobSpec
    out_dir: str
    plan: rundir.RunPlan
    resume_checkpoint: str | None = None
    log: Callable[[str], None] = print
    run_config: dict = field(default_factory=dict)
    lock: rundir.RunLock | None = None
    loss_offset: float = 0.0

    @property
    def owns_dir(self) -> bool:
        return _is_main() and not _prepared_by_launcher(self.out_dir)

    # ------------------------------------------------------------ results of a complete run
    def completed_result(self):
        from lmforge.train.job import TrainResult

        state = self.plan.previous.state or {}
        summary = {}
        path = os.path.join(self.out_dir, RESULTS)
        if os.path.isfile(path):
            from lmforge.runs.artefacts import check_json_file

            summary = check_json_file(path)
        step = summary.get("global_step", state.get("global_step", 0))
        self.log(f"{self.out_dir}: the run is already complete (global_step {step}, finished "
                 f"{state.get('completed', '?')}); nothing to do (use --overwrite to train it again)")
        return TrainResult(output_dir=self.out_dir, global_step=step, train_loss=summary.get("train_loss"),
                           eval_loss_before=summary.get("eval_loss_before"),
                           eval_loss_after=summary.get("eval_loss_after"))

    # ------------------------------------------------------------ taking the directory
    def begin(self) -> None:
        """Lock the directory, re-plan under the lock, overwrite/clean, record ``preparing``. Rank 0 only."""
        if not self.owns_dir:
            return
        self.lock = rundir.RunLock(self.out_dir).acquire()
        try:
            self._begin_locked()
        except BaseException:
            self.release()
            raise

    def _begin_locked(self) -> None:
        # what another process may have done between the check and the lock
        prev = rundir.inspect_run_dir(self.out_dir)
        if self.plan.action == "fresh" and not prev.is_empty:
            raise rundir.RunDirError(f"output_dir: {self.out_dir}: another run wrote into it while this one "
                                     "was being prepared; choose another output_dir")
        if self.plan.action == "overwrite" or (self.plan.action == "fresh" and prev.entries):
            removed = rundir.clear_run_dir(self.out_dir)
            if self.plan.action == "overwrite":
                self.log(f"--overwrite: removed the previous run's files from {self.out_dir} ({len(removed)} entries)")
        elif self.plan.action == "resume" and self.resume_checkpoint is None:
            self.log(f"--resume: {self.out_dir} holds no checkpoint; starting the run again from step 0")
            rundir.clear_run_dir(self.out_dir)
        rundir.clean_leftovers(self.out_dir)
        step = rundir.checkpoint_step(self.resume_checkpoint) if self.resume_checkpoint else 0
        if self.plan.action == "resume" and self.resume_checkpoint and \
                os.path.dirname(os.path.abspath(self.resume_checkpoint)) == os.path.abspath(self.out_dir):
            kept = rundir.truncate_train_log(self.out_dir, step or 0)
            self.log(f"--resume: continuing from {os.path.basename(self.resume_checkpoint)} "
                     f"({kept} rows of {rundir.TRAIN_LOG} kept, later ones will be logged again)")
        elif os.path.isfile(os.path.join(self.out_dir, rundir.TRAIN_LOG)):
            os.unlink(os.path.join(self.out_dir, rundir.TRAIN_LOG))
        rundir.write_run_state(self.out_dir, "preparing", resumed_from=self.resume_checkpoint)

    def training(self) -> None:
        if self.owns_dir or (_is_main() and _prepared_by_launcher(self.out_dir)):
            rundir.write_run_state(self.out_dir, "training")

    # ------------------------------------------------------------ finishing
    def staging_dir(self) -> str:
        path = os.path.join(self.out_dir, FINAL_STAGING)
        if os.path.isdir(path):
            import shutil

            shutil.rmtree(path)
        os.makedirs(path)
        return path

    def finish(self, staged: str, summary: dict) -> None:
        """Move the staged final model into place, write ``train_results.json``, mark the run complete."""
        rundir.write_run_state(self.out_dir, "saving")
        rundir.publish_staged(staged, self.out_dir)
        try:
            os.rmdir(os.path.join(self.out_dir, rundir.STAGING))
        except OSError:
            pass
        rundir.write_atomic(os.path.join(self.out_dir, RESULTS), json.dumps(summary, indent=1))
        rundir.write_run_state(self.out_dir, "complete", global_step=summary.get("global_step"))

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def preflight(spec: JobSpec, source, registry, log: Callable[[str], None], run_config: Mapping) -> RunStart:
    """Every check that needs neither weights nor tokenization; writes nothing. Returns the run's plan.

    ``run_config`` is what this run would write to ``lmforge.yaml`` (compared
    with the saved one on ``--resume``). Raises :class:`LmforgeError` subclasses.
    """
    from lmforge.runs.artefacts import check_model_dir, check_tokenizer_code

    out_dir = spec.run.output_dir
    check_train_values(spec.train.arguments)
    if source.path is not None:
        check_model_dir(source.path)
        if source.family.tokenizer_loader is None:
            check_tokenizer_code(source.path, spec.model.trust_remote_code)
    _check_data_paths(spec)
    resume_opt = spec.train.args.get("resume_from_checkpoint")
    explicit = resume_opt if isinstance(resume_opt, str) and resume_opt not in ("auto", "latest", "true", "True") \
        else None
    resume = bool(resume_opt) and resume_opt not in ("false", "False")
    overwrite = spec.run.overwrite
    if _prepared_by_launcher(out_dir) or not _is_main():
        # the launcher (or rank 0) owns the directory; workers take the checkpoint the launcher chose
        plan = rundir.RunPlan("resume" if explicit else "fresh", rundir.inspect_run_dir(out_dir))
        ckpt = explicit
        if resume and ckpt is None and os.path.isdir(out_dir):
            names = rundir.checkpoints(out_dir)
            ckpt = os.path.join(out_dir, names[-1]) if names else None
        return RunStart(spec, out_dir, plan, ckpt, log, dict(run_config))
    check_output_dir_writable(out_dir)
    saved = None
    if resume and os.path.isfile(os.path.join(out_dir, rundir.RUN_CONFIG)):
        from lmforge.config.schema import load_yaml

        try:
            saved = load_yaml(os.path.join(out_dir, rundir.RUN_CONFIG))
        except LmforgeError as exc:
            raise rundir.RunDirError(f"--resume: {exc}") from None
    plan = rundir.plan_run_dir(out_dir, resume=resume, overwrite=overwrite,
                               force_resume=spec.run.force_resume, new_config=run_config, saved_config=saved)
    if plan.differences:
        level = "forced past" if any(rundir.is_trajectory_key(k) for k, _, _ in plan.differences) else "allowed"
        log(f"--resume: config differs from {os.path.join(out_dir, rundir.RUN_CONFIG)} ({level}): "
            f"{rundir.describe_differences(plan.differences)}")
    ckpt = None
    if plan.action == "resume":
        names = plan.previous.checkpoints
        ckpt = explicit or (os.path.join(out_dir, names[-1]) if names else None)
    elif explicit:
        ckpt = explicit
    elif resume and plan.action == "fresh":
        log("resume requested but output_dir holds no run; starting from scratch")
    if ckpt is not None:
        from lmforge.runs.artefacts import check_checkpoint

        check_checkpoint(ckpt)
    return RunStart(spec, out_dir, plan, ckpt, log, dict(run_config))


def check_output_dir_writable(out_dir: str) -> None:
    rundir.check_output_dir_writable(out_dir)


LOW_SPACE_BYTES = 16 * 2**20


def disk_error(exc: BaseException, out_dir: str) -> LmforgeError | None:
    """The one-line error for a write that failed for lack of space or permission, else ``None``.

    torch and safetensors report a full disk in their own words (``unexpected
    pos``, ``SafetensorError``), so besides ``errno`` a failure while the output
    file system has under 16 MiB free is reported as a full disk too.
    """
    codes = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
             errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied", errno.EFBIG: "the file size limit is reached"}
    reason = codes.get(getattr(exc, "errno", None)) if isinstance(exc, OSError) else None
    if reason is None and "No space left on device" in str(exc):
        reason = "the disk is full"
    if reason is None:
        try:
            free = __import__("shutil").disk_usage(out_dir).free
        except OSError:
            return None
        if free >= LOW_SPACE_BYTES:
            return None
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        reason = f"the disk is full ({free} bytes free; {type(exc).__name__}: {detail})"
    where = getattr(exc, "filename", None) or out_dir
    return rundir.RunDirError(
        f"{where}: cannot write: {reason}; the run stopped (the last complete checkpoint is kept). "
        f"Free space or fix the permissions, then continue with `{rundir.resume_command(out_dir)}`")


def launch_workers_config(spec: JobSpec) -> tuple[RunStart | None, dict]:
    """``lmforge train`` with a multi-process launcher: check, lock and prepare the directory here, once.

    Returns ``(start, worker_cfg)``: ``start`` holds the lock until
    :meth:`RunStart.release` (``None`` when the run is already complete), and
    ``worker_cfg`` (a plain dict: the launcher's ``prepare`` completes it, then it is
    written for the workers) pins the checkpoint to resume from so every rank uses the same.
    The caller sets ``LMFORGE_RUN_PREPARED`` for the workers.
    """
    from lmforge.modeling.loading import resolve_model
    from lmforge.plugins.registry import get_registry
    from lmforge.train.job import check_capabilities, log, resolved_run_config

    reg = get_registry()
    source = resolve_model(spec.model.name, family=spec.model.family, registry=reg)
    check_capabilities(spec, source, reg)
    resolved = resolved_run_config(spec, source, reg)
    start = preflight(spec, source, reg, log, resolved)
    if start.plan.action == "complete":
        start.completed_result()
        return None, spec.to_dict()
    start.begin()
    worker = rundir.strip_start_keys(spec.to_dict())
    if start.resume_checkpoint:
        worker["train"]["resume_from_checkpoint"] = os.path.abspath(start.resume_checkpoint)
    return start, worker


RunStart.env_key = PREPARED_ENV  # type: ignore[attr-defined]
