"""The `lmforge` command line: the top floor. Nothing inside lmforge imports this package."""

from lmforge.cli.main import build_cli, cli, main

__all__ = ["build_cli", "cli", "main"]
