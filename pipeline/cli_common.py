"""What every `vtr` command shares: where things go by default, logging to stderr, and failing with one line."""
from __future__ import annotations

from pathlib import Path

import click

CACHE_DIR = Path("cache")
RUNS_DIR = CACHE_DIR / "runs"


def log(msg: str) -> None:
    click.echo(msg, err=True)


def io_line(e: Exception, writing=None) -> str | None:
    """For a failure of the disk or the file system, one line with the path and the cause
    (vtr.core.io_errors); None for any other error."""
    from vtr.core.io_errors import describe

    return describe(e, writing) if isinstance(e, OSError) or type(e) is RuntimeError else None


def fail(e: Exception, writing=None, hint: str = ""):
    """Stop with one line: the error's own message, or `io_line` followed by ``hint``; ``writing``: what
    the command was making."""
    line = io_line(e, writing)
    raise click.ClickException(line + hint if line else str(e)) from None
