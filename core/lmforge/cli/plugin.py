"""``lmforge plugin``: tools for plugin authors.

``lmforge plugin new NAME --kind family|peft|format|launcher [-o DIR]`` writes an
installable plugin project (pyproject.toml with the ``lmforge`` entry point, the
plugin module, a tiny preset for a family, and tests that run the conformance
suite of :mod:`lmforge.testing`) from the templates in :mod:`lmforge.cli.scaffold`.
Importing this module costs click only; it never imports torch.
"""

from __future__ import annotations

import os

import click

from lmforge.errors import ConfigError, user_errors


@click.group("plugin", context_settings={"help_option_names": ["-h", "--help"]})
def plugin_group() -> None:
    """Tools for plugin authors (see docs/plugins/writing-a-model-plugin.md)."""


def write_plugin(name: str, kind: str, out_dir: str, *, force: bool = False) -> list[str]:
    """Write the ``kind`` plugin project ``name`` into ``out_dir``; return the files written.

    Raises :class:`ConfigError` for a bad name or kind, or when ``out_dir`` exists
    and is not empty (unless ``force``).
    """
    from lmforge.cli.scaffold import render

    try:
        files = render(name, kind)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ConfigError(f"-o {out_dir}: the directory exists and is not empty (--force writes into it)")
    written = []
    for rel, text in files.items():
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


@plugin_group.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(["family", "peft", "format", "launcher"]), required=True,
              help="what the plugin registers: a model family, a PEFT method, a data format or a launcher")
@click.option("-o", "--output", "out_dir", default=None, help="project directory (default: ./lmforge-NAME)")
@click.option("--force", is_flag=True, help="write into an existing, non-empty directory")
@user_errors
def new_cmd(name: str, kind: str, out_dir: str | None, force: bool) -> None:
    """Scaffold an installable plugin package NAME that passes its tests out of the box."""
    out_dir = out_dir or f"lmforge-{name}"
    written = write_plugin(name, kind, out_dir, force=force)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"\nnext: pip install -e {out_dir} && python -m pytest {os.path.join(out_dir, 'tests')}")
