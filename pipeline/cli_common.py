"""What every `vtr` command shares: where things go by default, logging to stderr, and failing with one line."""
from __future__ import annotations

from pathlib import Path

import click

CACHE_DIR = Path("cache")
RUNS_DIR = CACHE_DIR / "runs"


def log(msg: str) -> None:
    click.echo(msg, err=True)


def fail(e: Exception, writing=None, hint: str = ""):
    """Stop with one line: the error's own message, or, for a failure of the disk or the file system, the
    path and the cause (vtr.core.io_errors) followed by ``hint``; ``writing``: what the command was making."""
    from vtr.core.io_errors import describe

    line = describe(e, writing) if isinstance(e, OSError) or type(e) is RuntimeError else None
    raise click.ClickException(line + hint if line else str(e)) from None
