"""Run directories: one run at a time, never reused by accident, never half-written.

What a training run does with its ``output_dir``, in order (see
:func:`lmforge.train.pipeline.run_training`):

1. :func:`check_output_dir_writable` and :func:`inspect_run_dir` /
   :func:`plan_run_dir` decide, *before anything is written*, whether the
   directory may be used: a directory that holds a previous run is refused
   unless ``--resume`` (continue it; the saved ``lmforge.yaml`` must be
   compatible, see :func:`config_differences`) or ``--overwrite`` (remove it)
   is given. A complete run asked to resume does nothing.
2. :class:`RunLock` takes an exclusive OS lock (``flock``) on
   ``OUTPUT_DIR/.lmforge.lock`` and writes the holder (pid, host, start time)
   into it. The kernel drops the lock when the holder dies, however it dies, so
   a crash never leaves a stale lock; a second run into the same directory
   fails at once, naming the holder.
3. ``OUTPUT_DIR/lmforge_run.json`` (:func:`write_run_state`) records the
   run's status: ``preparing`` -> ``training`` -> ``complete``. The final model
   is written into ``.staging/final`` and moved into place
   (:func:`publish_staged`) before the status becomes ``complete``.

:func:`check_run_complete` is what every consumer of a run directory
(``generate``, ``merge``, ``predict``, ``serve``, ``lmforge.load``) calls
first: an interrupted run is reported as such, with the ``--resume`` command,
instead of failing later on a half-written file.

Pure standard library: nothing here imports torch.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import shutil
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from lmforge.errors import LmforgeError

LOCK_FILE = ".lmforge.lock"
RUN_STATE = "lmforge_run.json"
RUN_CONFIG = "lmforge.yaml"
TRAIN_LOG = "train_log.jsonl"
STAGING = ".staging"
TRASH_PREFIX = ".trash-"
LOSS_STATE = "lmforge_loss.json"  # inside checkpoint-N: the loss sum so far, so train_loss covers resumed runs

# Files a run writes before its first training step. A directory holding only these (and a
# run state that says "preparing") is the leftover of an attempt that failed before training:
# it is reused without --overwrite.
PREPARE_FILES = frozenset({LOCK_FILE, RUN_STATE, RUN_CONFIG, "memory_estimate.json", "launch_config.yaml",
                           "trainable_params.json", STAGING})

# Config keys whose change makes a resumed run a different run (the optimizer state, data
# order and example shapes in the checkpoint no longer match). Prefixes match whole sections.
TRAJECTORY_KEYS = (
    "model", "family", "dtype", "max_length", "packing", "dynamic_batch", "peft",
    "data.train_file", "data.mix", "data.mix_samples", "data.format", "data.template", "data.train_on_prompt",
    "data.online_packing", "long_context",
    "train.per_device_train_batch_size", "train.gradient_accumulation_steps", "train.seed", "train.data_seed",
    "train.optim", "launcher.nproc_per_node", "launcher.nnodes",
)
# Keys that say how a run was started, not what it is: never compared, never saved.
START_KEYS = ("overwrite", "force_resume", "train.resume_from_checkpoint", "plugins", "lmforge_version")

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class RunDirError(LmforgeError):
    """An output directory cannot be used as asked (in use, holds another run, not writable)."""


class RunIncompleteError(RunDirError):
    """A run directory was read whose run did not finish."""


# --------------------------------------------------------------------------
# the lock


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _holder_text(holder: Mapping | None) -> str:
    if not holder:
        return "a process that has not written its details yet"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _read_holder(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        return json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None


class RunLock:
    """An exclusive ``flock`` on ``OUTPUT_DIR/.lmforge.lock``, held for the whole run.

    Hand-written on :func:`fcntl.flock` rather than the ``filelock`` package:
    ``filelock`` opens the lock file with ``O_TRUNC`` on every attempt, which
    would erase the holder's pid/host/start time that the refused run reports.
    The lock file itself is never deleted (deleting a lock file another process
    has open would let two runs hold "the" lock).
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunDirError` naming the holder. Creates ``out_dir``."""
        import fcntl

        os.makedirs(self.out_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(in_use_message(self.out_dir, holder)) from None
            raise RunDirError(f"{self.path}: cannot lock the output directory: {exc.strerror}") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                  "argv": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def in_use_message(out_dir: str, holder: Mapping | None) -> str:
    return (f"{out_dir}: another run is using this output directory ({_holder_text(holder)}); "
            "wait for it to finish or choose another output_dir")


def lock_holder(out_dir: str) -> dict | None:
    """The holder of ``out_dir``'s lock while one is held, else ``None``. Writes nothing.

    The probe takes and drops the lock on a read-only descriptor, so it never
    creates or changes the lock file.
    """
    import fcntl

    path = os.path.join(out_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_locked(out_dir: str) -> None:
    """Raise :class:`RunDirError` naming the holder if another process holds ``out_dir``'s lock."""
    if os.path.isdir(out_dir) and os.environ.get("LMFORGE_RUN_PREPARED") != os.path.abspath(out_dir):
        holder = lock_holder(out_dir)
        if holder is not None:
            raise RunDirError(in_use_message(out_dir, holder))


# --------------------------------------------------------------------------
# run state


def read_run_state(run_dir: str) -> dict | None:
    """``lmforge_run.json`` of ``run_dir``, or ``None`` when there is none (not a run, or an older lmforge)."""
    path = os.path.join(run_dir, RUN_STATE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # written atomically, so unreadable means tampered with or a failing disk
        return {"status": "unreadable"}
    return state if isinstance(state, dict) else {"status": "unreadable"}


def write_run_state(run_dir: str, status: str, **extra: Any) -> dict:
    """Record ``status`` (``preparing``, ``training``, ``complete``) atomically; returns the state."""
    state = read_run_state(run_dir) or {}
    if state.get("status") == "unreadable":
        state = {}
    state.update(extra)
    state["status"] = status
    state.setdefault("created", _now())
    state["updated"] = _now()
    if status == "complete":
        state["completed"] = state["updated"]
    write_atomic(os.path.join(run_dir, RUN_STATE), json.dumps(state, indent=1) + "\n")
    return state


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name and ``os.replace`` (readers see old or new)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RunDirError(f"{path}: cannot write: {exc.strerror or exc}") from None


def checkpoints(run_dir: str) -> list[str]:
    """``checkpoint-N`` directory names in ``run_dir``, oldest step first."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    found = [n for n in names if _CHECKPOINT_RE.match(n) and os.path.isdir(os.path.join(run_dir, n))]
    return sorted(found, key=lambda n: int(_CHECKPOINT_RE.match(n).group(1)))


def checkpoint_step(path: str) -> int | None:
    m = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def resume_command(run_dir: str) -> str:
    return f"lmforge train {os.path.join(run_dir, RUN_CONFIG)} --resume"


def check_run_complete(path: str) -> None:
    """Raise :class:`RunIncompleteError` if ``path`` is an lmforge run directory whose run did not finish.

    Called before reading a run directory for inference (``lmforge.load``,
    ``generate``, ``merge``, ``predict``, ``serve``). A directory without
    ``lmforge_run.json`` (a plain checkpoint, a ``checkpoint-N``, a run made by an
    lmforge without run states) passes. The message says whether the run is
    still in progress (naming its holder) or was interrupted, and how to resume.
    """
    if not os.path.isdir(path):
        return
    state = read_run_state(path)
    if state is None or state.get("status") == "complete":
        return
    holder = lock_holder(path)
    if holder is not None:
        raise RunIncompleteError(f"{path}: this run is still training ({_holder_text(holder)}); "
                                 "its final model is not written yet; wait for it to finish")
    ckpts = checkpoints(path)
    last = f"last checkpoint: {ckpts[-1]}" if ckpts else "no checkpoint was written"
    raise RunIncompleteError(
        f"{path}: this run did not finish (status: {state.get('status')}; {last}), so its final model is "
        f"missing or incomplete; continue it with `{resume_command(path)}`"
        + (f", or load {os.path.join(path, ckpts[-1])} directly"
           if ckpts and os.path.isfile(os.path.join(path, ckpts[-1], "config.json")) else "")
    )


# --------------------------------------------------------------------------
# deciding what a new run may do with a directory


@dataclass
class RunDirState:
    """What :func:`inspect_run_dir` found in an output directory."""

    path: str
    exists: bool
    entries: list[str] = field(default_factory=list)
    state: dict | None = None
    checkpoints: list[str] = field(default_factory=list)

    @property
    def is_run(self) -> bool:
        """Holds lmforge run files (a state, a saved config or checkpoints)."""
        return self.state is not None or RUN_CONFIG in self.entries or bool(self.checkpoints)

    @property
    def leftover_of_failed_start(self) -> bool:
        """Only what an attempt that failed before its first step leaves behind."""
        if not set(self.entries) <= PREPARE_FILES:
            return False
        return self.state is None or self.state.get("status") == "preparing"

    @property
    def is_empty(self) -> bool:
        return not self.entries or self.leftover_of_failed_start

    @property
    def complete(self) -> bool:
        return (self.state or {}).get("status") == "complete"


# written by a launcher into output_dir before its workers start (the workers read them, a scheduler
# appends its log): not a previous run's files, never removed by --overwrite
LAUNCHER_FILES = ("launch_config.yaml", "deepspeed.json", "slurm.sbatch", "pytorchjob.yaml")


def is_launcher_file(name: str) -> bool:
    return name in LAUNCHER_FILES or (name.startswith("slurm-") and name.endswith(".out"))


def inspect_run_dir(path: str) -> RunDirState:
    """Look at ``path`` without writing anything."""
    if not os.path.exists(path):
        return RunDirState(path, exists=False)
    if not os.path.isdir(path):
        raise RunDirError(f"output_dir: {path} exists and is not a directory")
    try:
        entries = sorted(e for e in os.listdir(path)
                         if not e.startswith(TRASH_PREFIX) and e != LOCK_FILE and not is_launcher_file(e))
    except OSError as exc:
        raise RunDirError(f"output_dir: cannot read {path}: {exc.strerror}") from None
    return RunDirState(path, exists=True, entries=entries, state=read_run_state(path), checkpoints=checkpoints(path))


def check_output_dir_writable(path: str) -> None:
    """Raise :class:`RunDirError` unless ``path`` (or the directory that would hold it) is writable."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise RunDirError(f"output_dir: {probe} is not a directory, so {path} cannot be created")
    what = "is not writable" if probe == os.path.abspath(path) else f"cannot be created: {probe} is not writable"
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"output_dir: {path} {what}")
    # os.access says yes to root even on a read-only file system: try it (the probe file is removed at once)
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".lmforge-write-test-", dir=probe)
    except OSError as exc:
        raise RunDirError(f"output_dir: {path} {what} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


def _listing(entries: Iterable[str], n: int = 6) -> str:
    entries = list(entries)
    more = f", ... ({len(entries) - n} more)" if len(entries) > n else ""
    return ", ".join(entries[:n]) + more


@dataclass
class RunPlan:
    """What the new run will do: ``fresh`` (empty dir), ``overwrite``, ``resume`` or ``complete`` (nothing)."""

    action: str
    previous: RunDirState
    differences: list[tuple[str, Any, Any]] = field(default_factory=list)


def plan_run_dir(out_dir: str, resume: bool, overwrite: bool, force_resume: bool = False,
                 new_config: Mapping | None = None, saved_config: Mapping | None = None) -> RunPlan:
    """Decide what a run may do with ``out_dir``; raises :class:`RunDirError` when it may not start.

    ``new_config``/``saved_config`` are the resolved configs of this run and of
    the one in ``lmforge.yaml`` (compared only for ``resume``). Writes nothing.
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other (resume continues the run in "
                          "output_dir, overwrite deletes it); give one")
    prev = inspect_run_dir(out_dir)
    holder = lock_holder(out_dir) if prev.exists else None
    if holder is not None:
        raise RunDirError(in_use_message(out_dir, holder))
    if prev.is_empty:
        return RunPlan("fresh", prev)
    if not prev.is_run:
        raise RunDirError(
            f"output_dir: {out_dir} is not empty and holds no lmforge run ({_listing(prev.entries)}); "
            "choose an empty or new output_dir (--overwrite only replaces lmforge runs)")
    if overwrite:
        return RunPlan("overwrite", prev)
    if not resume:
        status = (prev.state or {}).get("status", "unknown")
        what = "a complete run" if prev.complete else f"an unfinished run (status: {status})"
        raise RunDirError(
            f"output_dir: {out_dir} already holds {what} ({_listing(prev.entries)}); pass --resume to continue "
            "it, --overwrite to delete it and start again (config keys train.resume_from_checkpoint / "
            "overwrite, or train_local(resume=True / overwrite=True)), or choose another output_dir")
    if prev.complete:
        return RunPlan("complete", prev)
    diffs: list[tuple[str, Any, Any]] = []
    if saved_config is not None and new_config is not None:
        diffs = config_differences(saved_config, new_config)
        blocking = [d for d in diffs if is_trajectory_key(d[0])]
        if blocking and not force_resume:
            raise RunDirError(
                f"--resume: {os.path.join(out_dir, RUN_CONFIG)} differs from this config in keys that change "
                f"the training trajectory: {describe_differences(blocking)}"
                + (f" (other differences: {describe_differences([d for d in diffs if d not in blocking])})"
                   if len(blocking) < len(diffs) else "")
                + "; resume with the saved config, start a new output_dir, or pass --force-resume "
                "(force_resume: true) to continue anyway")
    return RunPlan("resume", prev, diffs)


def is_trajectory_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in TRAJECTORY_KEYS)


def describe_differences(diffs: Iterable[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in diffs)


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


_MISSING = "<not set>"


def _flatten(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _schema_default(key: str) -> Any:
    """The default of a dotted config key (``None`` for the optional ``long_context`` section), else missing."""
    from lmforge.config.schema import SCHEMA, Key
    from lmforge.config.spec import OPTIONAL_SECTIONS

    if key in OPTIONAL_SECTIONS:
        return None
    node: Any = SCHEMA
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node.default if isinstance(node, Key) else _MISSING


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return False


def config_differences(saved: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """Every key whose value differs between two resolved configs: ``[(dotted.key, saved, new)]``.

    The ``train:`` sections are compared with lmforge's defaults filled in, so a
    value given explicitly equal to the default is not a difference. Keys in
    :data:`START_KEYS` and ``output_dir`` are ignored.
    """
    from lmforge.config.trainargs import with_train_defaults

    def norm(cfg: Mapping) -> dict[str, Any]:
        c = dict(cfg)
        c["train"] = with_train_defaults(c.get("train"))
        flat = _flatten(c)
        return {k: v for k, v in flat.items()
                if k != "output_dir" and not any(k == s or k.startswith(s + ".") for s in START_KEYS)}

    a, b = norm(saved), norm(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        # a key one side lacks (a run saved before the key existed) reads as its schema default
        va, vb = (_schema_default(key) if v is _MISSING else v for v in (va, vb))
        if not _same(va, vb):
            diffs.append((key, va, vb))
    return diffs


def strip_start_keys(cfg: Mapping) -> dict:
    """``cfg`` without the keys that only say how this run was started (what ``lmforge.yaml`` keeps)."""
    out = {k: v for k, v in cfg.items() if k not in ("overwrite", "force_resume")}
    if isinstance(out.get("train"), Mapping):
        out["train"] = {k: v for k, v in out["train"].items() if k != "resume_from_checkpoint"}
    return out


# --------------------------------------------------------------------------
# writing: clearing, staging, rotating


def _remove_tree(path: str) -> None:
    """Rename ``path`` to a ``.trash-`` name, then delete it: a kill midway never leaves a half-deleted
    directory under its real name (where it would look like a valid checkpoint)."""
    parent, name = os.path.split(os.path.normpath(path))
    trash = os.path.join(parent, f"{TRASH_PREFIX}{name}.{os.getpid()}")
    if os.path.isdir(path) and not os.path.islink(path):
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def clean_leftovers(run_dir: str) -> None:
    """Delete what killed runs leave behind: ``.staging/`` and ``.trash-*`` (called under the lock)."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return
    for name in names:
        if name.startswith(TRASH_PREFIX):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    if os.path.isdir(os.path.join(run_dir, STAGING)):
        _remove_tree(os.path.join(run_dir, STAGING))


def clear_run_dir(run_dir: str) -> list[str]:
    """``--overwrite``: delete the previous run's files (everything but the lock); returns the names removed.

    The run state and ``lmforge.yaml`` go last, so a kill midway leaves a directory
    that is still recognised as a run (and can be overwritten again).
    """
    names = [n for n in os.listdir(run_dir) if n != LOCK_FILE and not is_launcher_file(n)]
    last = [n for n in (RUN_CONFIG, RUN_STATE) if n in names]
    for name in [n for n in names if n not in last] + last:
        _remove_tree(os.path.join(run_dir, name))
    return names


def publish_staged(staged: str, run_dir: str) -> None:
    """Move every entry of ``staged`` into ``run_dir``, each with one atomic rename.

    Files replace files with ``os.replace``; a directory that exists already is
    renamed away first and deleted after. Readers never see a half-written file;
    the run state (written after) says whether the whole set is in place.
    """
    fsync_tree(staged)
    for name in sorted(os.listdir(staged)):
        src, dst = os.path.join(staged, name), os.path.join(run_dir, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            _remove_tree(dst)
        os.replace(src, dst)
    fsync_dir(run_dir)
    shutil.rmtree(staged, ignore_errors=True)


def rotate_checkpoints_safely(run_dir: str, save_total_limit: int | None, best_model_checkpoint: str | None) -> None:
    """``transformers.trainer_utils.rotate_checkpoints`` with rename-then-delete.

    The same choice of what to keep (the newest and the best checkpoint, then the
    newest up to the limit, by step); re-implemented because the transformers
    version deletes in place with ``shutil.rmtree``, and a kill during that leaves
    a half-deleted ``checkpoint-N`` that still looks like a checkpoint.
    """
    if not save_total_limit or save_total_limit <= 0:
        return
    ckpts = [os.path.join(run_dir, n) for n in checkpoints(run_dir)]
    if len(ckpts) <= save_total_limit:
        return
    protected = {os.path.normpath(ckpts[-1])}
    if best_model_checkpoint:
        protected.add(os.path.normpath(best_model_checkpoint))
    keep = max(save_total_limit, len(protected))
    remaining = len(ckpts)
    for ckpt in ckpts:
        if remaining <= keep:
            break
        if os.path.normpath(ckpt) not in protected:
            _remove_tree(ckpt)
            remaining -= 1


def fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# the step log across resumes


def truncate_train_log(run_dir: str, step: int) -> int:
    """Drop ``train_log.jsonl`` rows after ``step`` (what a resumed run will log again); returns rows kept.

    A torn last line (the kill hit mid-write) is dropped too.
    """
    path = os.path.join(run_dir, TRAIN_LOG)
    if not os.path.isfile(path):
        return 0
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step \
                    and "train_loss" not in row:
                kept.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(kept))
    return len(kept)
