"""Every hook lmforge calls on plugins.

A plugin is a module (or object) exposed through the ``lmforge`` entry-point
group whose functions are decorated with :data:`lmforge.hookimpl` and named
after these specs. The registration hooks receive a ``register`` callback; call
it once per descriptor. Registration must be cheap: import only the standard
library and ``lmforge`` at module level and reference heavy code by
``"module:attr"`` strings (see :mod:`lmforge.plugins.descriptors`).

Hooks are called through pluggy (``pm.hook``) once per process, the first time
anything asks the registry (``lmforge plugins``, ``lmforge train``, ``lmforge.load``
...), one plugin at a time (:mod:`lmforge.plugins.registry`): an exception in one
plugin marks that plugin broken and rolls back what it registered; the others are
unaffected. Before its hooks run, each plugin is validated against these specs:
an ``@hookimpl`` named after no spec (unless ``optionalhook=True``), or whose
arguments are not the spec's, marks the plugin broken with a did-you-mean.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lmforge")


@hookspec
def register_model_families(register):
    """Register model families.

    Called once when the registry is built, with ``register(family)`` where
    ``family`` is a :class:`lmforge.plugins.descriptors.ModelFamily`. Register one
    descriptor per family (LLaMA, ChatGLM2 ...), each with its ``model_types``,
    presets (including a ``tiny-*`` preset buildable offline), loader reference,
    default LoRA targets, chat template, capability map and ``arch_from_config``.
    The family name and its aliases must be unique across all plugins.
    """


@hookspec
def register_peft_methods(register):
    """Register PEFT methods (what trains and how it is wrapped).

    Called once when the registry is built, with ``register(method)`` where
    ``method`` is a :class:`lmforge.plugins.descriptors.PeftMethod`: its options schema,
    ``apply`` reference and, when it saves something other than a full
    checkpoint, ``load`` (and ``merge`` when it can be merged).
    """


@hookspec
def register_data_formats(register):
    """Register training-data formats.

    Called once when the registry is built, with ``register(fmt)`` where ``fmt``
    is a :class:`lmforge.plugins.descriptors.DataFormat`: a pure-Python ``detect(record)``
    and ``convert(record) -> list[Example]`` that raises ``RecordError`` naming
    the bad field.
    """


@hookspec
def register_memory_estimators(register):
    """Register memory estimators.

    Called once when the registry is built, with ``register(estimator)`` where
    ``estimator`` is a :class:`lmforge.plugins.descriptors.MemoryEstimator` whose
    ``estimate(arch, job)`` runs in pure Python (``lmforge estimate`` must not
    import torch).
    """


@hookspec
def register_launchers(register):
    """Register process launchers (local, torchrun, deepspeed, slurm ...).

    Called once when the registry is built, with ``register(launcher)`` where
    ``launcher`` is a :class:`lmforge.plugins.descriptors.Launcher`: in-process, or a
    ``command(spec) -> argv`` that starts ``spec.worker_argv`` on every rank.
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``lmforge`` command line.

    Called once while the CLI is built (also for ``lmforge --help``), with the
    root :class:`click.Group`. Add commands with ``cli.add_command(...)`` or the
    ``@cli.command()`` decorator. Import heavy modules inside the command
    function, never at module level. Returns nothing.
    """
