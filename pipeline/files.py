"""Atomic file writes: a reader, or a run killed midway, sees the old file or the new one, never half."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, make it durable, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
