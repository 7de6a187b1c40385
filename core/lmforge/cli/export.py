"""``lmforge export``: the command; the work is :func:`lmforge.modeling.export.export_run`."""

from __future__ import annotations

import click

from lmforge.errors import user_errors
from lmforge.modeling.export import FORMATS, export_run


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--output-dir", "-o", required=True, help="where the exported checkpoint goes")
@click.option("--format", "fmt", default="transformers", show_default=True, type=click.Choice(FORMATS),
              help="transformers: config.json + safetensors that plain from_pretrained loads, no remote code")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]))
def export_cmd(run_dir: str, output_dir: str, fmt: str, dtype: str) -> None:
    """Export RUN_DIR (merged) in transformers' native layout (see docs/getting-started.md)."""
    user_errors(lambda: click.echo(export_run(run_dir, output_dir, fmt, dtype)))()
