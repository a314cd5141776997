"""Atomic file writes: a reader, or a run killed midway, sees the old file or the new one, never half."""
from __future__ import annotations

import hashlib
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

# Temporaries are ".<name>.<pid>.<random>.tmp" beside their file: unique per process and per call, hidden,
# and recognisable, so the next run of a folder can remove those that a killed run left (`remove_temporaries`).
TMP_SUFFIX = ".tmp"


def temporary_beside(path, mode: int = 0o666) -> Path:
    """A new empty file ``.<name>.<pid>.<random>.tmp`` beside ``path``, created with ``mode`` (less the umask)."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            return tmp
        except FileExistsError:  # taken (by chance): draw another
            continue


def durable_replace(tmp, path) -> None:
    """Make ``tmp``'s bytes durable, then rename it over ``path``: the rename never shows a half-written file."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextmanager
def replacing(path, *, mode: int = 0o666, replace=None):
    """Yields a fresh temporary beside ``path`` to write; then ``replace(tmp, path)`` (`durable_replace`).

    On an error the temporary is removed and ``path`` is left as it was."""
    tmp = temporary_beside(path, mode)
    try:
        yield tmp
        (replace or durable_replace)(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, make it durable, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # the umask's permissions, as for any file the user writes (the caches too)
        tmp.write_bytes(payload)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def temporaries(folder, of: str | None = None) -> list[Path]:
    """The temporaries of `temporary_beside` in ``folder`` (also those of earlier versions, which had no pid);
    with ``of``, only those of the file of that name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = re.compile(rf"\.{re.escape(of)}\.\d+\.[^.]+{re.escape(TMP_SUFFIX)}") if of is not None else None
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file()
                  and (mine is None or mine.fullmatch(p.name)))


def remove_temporaries(folder, of: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` (with ``of``: those of that file); returns those removed.

    Only for a folder (or file) the caller has locked against every other writer (a run folder under its fit
    lock): a temporary there then belongs to no live writer, only to one that was killed between writing and
    renaming.
    """
    removed = []
    for p in temporaries(folder, of):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
