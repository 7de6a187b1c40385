"""The ``lmforge train`` -> ``Trainer`` walk: how many lmforge calls, files and back-and-forths it takes.

    python benchmarks/train_walk.py            # a real tiny run, stopped when Trainer.__init__ is entered
    python benchmarks/train_walk.py --dry-run  # lmforge train --dry-run, to its end

Runs ``lmforge train`` in this process on the tiny random LLaMA (offline) with
``sys.setprofile`` from the CLI command's entry until ``transformers.Trainer.__init__``
is called (the run is stopped there, before any training; about 20 s on 2 CPU cores), and prints:

- ``calls``: calls into lmforge functions (core ``lmforge.*``, ``lmforge_builtins``,
  ``llm_plugins_*``; imports, comprehensions and dataclass-generated methods left out),
  counted once per calling context (the same call site reached by the same chain of
  lmforge calls), so a loop over records counts once but a check run again from
  another place counts again;
- ``cross-file calls``: of those, the ones from one lmforge file into another;
- ``spine_calls``: of those, the ones made by the files that drive the job (``cli/``,
  ``config/``, ``train/``);
- ``files``: lmforge files entered;
- ``back-and-forths``: times control came back to an lmforge file it had already left
  (a return from a cross-file call, or a new call into a file entered before);
- ``layers``, ``layer_crossings``, ``layer_back_and_forths``: the same, counting a core
  subpackage (``lmforge.config``, ``lmforge.train`` ...) or a plugin distribution as one place;
- how often the config checks ran: ``validate``, ``validate_train_section`` / ``JobSpec``
  building, and the ``TrainingArguments`` keyword builders.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHED = ("validate", "validate_train_section", "train_arguments", "run_kwargs", "check_combination",
           "build_spec", "training_arguments", "from_resolved", "_check_section")


# the files that drive the job (the rest do one thing each: read data, load a model, estimate memory)
SPINE = tuple(os.path.join("core", "lmforge", d) + os.sep for d in ("cli", "config", "train"))


class _Stop(BaseException):
    """Raised from the patched ``Trainer.__init__``: the walk is over."""


def _is_lmforge(frame) -> bool:
    name = frame.f_globals.get("__name__", "")
    return name == "lmforge" or name.startswith(("lmforge.", "lmforge_builtins", "llm_plugins_"))


def layer_of(path: str) -> str:
    """``core/lmforge/train/pipeline.py`` -> ``lmforge.train``; plugin files -> their distribution's package."""
    parts = path.split(os.sep)
    if parts[:2] == ["core", "lmforge"]:
        return "lmforge." + parts[2].removesuffix(".py") if len(parts) > 3 else "lmforge"
    return parts[0]  # plugins/ (the built-ins) or llm_plugins_<family>/


class Walk:
    def __init__(self, key=lambda path: path) -> None:
        self.key = key
        self.raw_calls = 0
        self.sites: dict = {}  # (parent call's id, caller, line, callee) -> id: the calling-context tree
        self.cross = 0
        self.back = 0
        self.files: list[str] = []
        self.left: set[str] = set()
        self.stack: list[tuple[str, int, bool]] = []  # (file, call id, whether it was a counted cross-file call)
        self.named = collections.Counter()
        self.importing = 0
        self.edges: list[str] = []  # the counted cross-file calls, in order

    def _file(self, frame) -> str:
        return self.key(os.path.relpath(frame.f_code.co_filename, ROOT))

    def profile(self, frame, event, arg) -> None:
        if event not in ("call", "return"):
            return
        code = frame.f_code
        if code.co_name == "<module>":  # an import: nothing it runs (class bodies ...) is a step of the walk
            self.importing += 1 if event == "call" else -1
            return
        # comprehensions and dataclass-generated methods (<string>) are not steps either
        if self.importing or code.co_name.startswith("<") or code.co_filename.startswith("<") or not _is_lmforge(frame):
            return
        here = self._file(frame)
        if event == "call":
            self.raw_calls += 1
            if code.co_name in WATCHED:
                self.named[f"{frame.f_globals.get('__name__')}.{code.co_name}"] += 1
            caller = frame.f_back
            parent = self.stack[-1][1] if self.stack else -1
            site = (parent, caller.f_code if caller else None, caller.f_lineno if caller else 0, code)
            new = site not in self.sites
            node = self.sites.setdefault(site, len(self.sites))
            came_from = self.stack[-1][0] if self.stack else None
            crossing = came_from is not None and came_from != here
            counted = new and crossing
            if counted:
                self.cross += 1
                self.edges.append(f"{came_from} -> {here}:{code.co_name}")
                self.left.add(came_from)
                if here in self.left:
                    self.back += 1
            if here not in self.files:
                self.files.append(here)
            self.stack.append((here, node, counted))
        elif self.stack:
            _, _, counted = self.stack.pop()
            if counted:  # control goes back to the caller's file, left for this call
                self.left.add(here)
                self.back += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="trace `lmforge train --dry-run` instead")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--edges", action="store_true", help="also list every counted cross-file call, in order")
    args = ap.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("LMFORGE_CACHE_DIR", tempfile.mkdtemp(prefix="lmforge-walk-cache-"))

    import transformers
    from click.testing import CliRunner

    from lmforge.cli.main import build_cli

    walk, layers = Walk(), Walk(layer_of)

    def both(frame, event, arg):
        walk.profile(frame, event, arg)
        layers.profile(frame, event, arg)

    def stop(self, *a, **k):
        sys.setprofile(None)
        raise _Stop

    transformers.Trainer.__init__ = stop
    cli = build_cli()  # plugin loading happens before the command; it is not part of the walk
    command = cli.commands["train"]
    inner = command.callback

    def traced(*a, **k):
        sys.setprofile(both)
        try:
            return inner(*a, **k)
        finally:
            sys.setprofile(None)

    command.callback = traced
    out = tempfile.mkdtemp(prefix="lmforge-walk-")
    argv = ["train", "examples/quickstart.yaml", "-o", os.path.join(out, "run"), "--max-steps", "1",
            "--set", "data.valid_file=null", "--set", "train.report_to=none", "--threads", "1"]
    if args.dry_run:
        argv.append("--dry-run")
    try:
        result = CliRunner().invoke(cli, argv, catch_exceptions=False)
        reached = False
        if result.exit_code:
            sys.exit(f"lmforge train failed ({result.exit_code}): {result.output}")
    except _Stop:
        reached = True
    figures = {
        "walk": "lmforge train --dry-run" if args.dry_run else "lmforge train -> Trainer.__init__",
        "reached_trainer": reached,
        "calls": len(walk.sites),
        "cross_file_calls": walk.cross,
        "files": len(walk.files),
        "back_and_forths": walk.back,
        "raw_call_events": walk.raw_calls,
        "spine_calls": sum(e.startswith(SPINE) for e in walk.edges),
        "layers": len(layers.files),
        "layer_crossings": layers.cross,
        "layer_back_and_forths": layers.back,
        "config_checks": dict(sorted(walk.named.items())),
        "file_list": walk.files,
    }
    if args.edges:
        figures["cross_file_call_list"] = walk.edges
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    for key, value in figures.items():
        if key in ("file_list", "cross_file_call_list"):
            print("files entered, in order:" if key == "file_list" else "cross-file calls, in order:")
            for f in value:
                print(f"    {f}")
        elif key == "config_checks":
            print("config checks run:")
            for name, n in value.items():
                print(f"    {name}: {n}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
