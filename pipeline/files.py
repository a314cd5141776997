"""Atomic file writes: a reader, or a run killed midway, sees the old file or the new one, never half."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Temporaries are ".<name>.<pid>.<random>.tmp" beside their file: unique per process and per call, hidden,
# and recognisable, so the next run of a folder can remove those that a killed run left (`remove_temporaries`).
TMP_SUFFIX = ".tmp"


def atomic_write_bytes(path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, make it durable, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
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


def temporaries(folder) -> list[Path]:
    """The temporaries of `atomic_write_bytes` in ``folder`` (also those of earlier versions, which had no pid)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file())


def remove_temporaries(folder) -> list[Path]:
    """Remove the temporaries in ``folder``; returns those removed.

    Only for a folder the caller has locked against every other writer (a run folder under its fit lock):
    a temporary there then belongs to no live writer, only to one that was killed between writing and
    renaming.
    """
    removed = []
    for p in temporaries(folder):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed
