"""Entry point of every worker process a launcher starts: ``python -m lmforge.train.worker CONFIG``.

Reads the resolved config written by ``lmforge train`` (``launch_config.yaml``),
builds its :class:`~lmforge.config.spec.JobSpec` once and runs the job; rank and
world size come from the environment the launcher set.
"""

from __future__ import annotations

import sys

from lmforge.errors import LmforgeError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m lmforge.train.worker CONFIG.yaml", file=sys.stderr)
        return 2
    from lmforge.config.schema import load_yaml
    from lmforge.config.spec import build_spec
    from lmforge.train.pipeline import run_training

    try:
        run_training(build_spec(load_yaml(argv[0])))
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
