"""One line for a failure of the disk or the file system: the path and the cause, never a traceback.

A full disk, a folder the user may not write, or a file where a folder should be are the machine's state,
not bugs: the user needs to know which path and why, and nothing else. HDF5 reports the operating system's
error only inside its message text (``errno = 28, error message = 'No space left on device'``), and h5py
may then raise a second, unrelated error while closing the file ("Can't destroy cache"); so the cause is
looked for along the whole chain of exceptions, and in HDF5's text.
"""
from __future__ import annotations

import errno as E
import os
import re
from dataclasses import dataclass
from pathlib import Path

_HDF5_ERRNO = re.compile(r"errno = (\d+)")
_HDF5_FILE = re.compile(r"(?:file)?name = '([^']*)'")
# Out of room (a full disk, a quota, a file-size limit): what was written before stays, a rerun resumes.
NO_SPACE = frozenset({E.ENOSPC, E.EDQUOT, E.EFBIG})
NOT_ALLOWED = frozenset({E.EACCES, E.EPERM, E.EROFS})


@dataclass(frozen=True)
class OsCause:
    errno: int
    path: str | None  # the file the operating system named, when it named one

    @property
    def text(self) -> str:
        """The cause in words, lower case as in a sentence: "no space left on device"."""
        words = os.strerror(self.errno)
        return words[:1].lower() + words[1:]


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)


def os_cause(exc: BaseException) -> OsCause | None:
    """The operating system's error behind ``exc`` (itself, what it was raised from, or HDF5's text), or
    None. An OSError vtr raised with its own message (no errno) is not one: its message already says it."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno:
            path = e.filename if e.filename is not None else _hdf5_file(str(e))
            return OsCause(e.errno, None if path is None else os.fsdecode(path))
        if isinstance(e, OSError) and e is exc and not _HDF5_ERRNO.search(str(e)):
            return None
        m = _HDF5_ERRNO.search(str(e))
        if m and int(m.group(1)):
            return OsCause(int(m.group(1)), _hdf5_file(str(e)))
    return None


def _hdf5_file(text: str) -> str | None:
    m = _HDF5_FILE.search(text)
    return m.group(1) if m else None


def _file_in_the_way(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a folder."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def _belongs_to(path: str, writing: Path) -> bool:
    """Whether ``path`` is part of writing ``writing``: the file, its companions (``.lock``, ``.tmp``,
    ``.parts/``, a temporary file beside it), or a folder on the way to it."""
    p, w = Path(os.path.abspath(path)), Path(os.path.abspath(writing))
    return str(p).startswith(str(w)) or p in w.parents or (p.parent == w.parent and w.name in p.name)


def describe(exc: BaseException, writing: str | Path | None = None) -> str | None:
    """One line naming the path and the cause of the OS failure behind ``exc``; None if there is none.

    ``writing``: what the command was making (a cache, a report), named first when given.
    """
    cause = os_cause(exc)
    if cause is None:
        return None
    if writing is not None and cause.path and not _belongs_to(cause.path, Path(writing)):
        writing = None  # the error is about another file (one being read): name that one alone
    head = f"cannot write {writing}: " if writing is not None else ""
    if cause.errno in (E.EEXIST, E.ENOTDIR) and cause.path:
        blocker = _file_in_the_way(Path(cause.path))
        if blocker is not None:
            return f"{head}{blocker} is a file, not a folder"
    if cause.path and (writing is None or cause.path != str(writing)):
        return f"{head}{cause.text} ({cause.path})" if head else f"{cause.path}: {cause.text}"
    return f"{head}{cause.text}"

