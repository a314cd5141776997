"""The dataset registry: a name (``--dataset``) -> a reader that returns a `vtr.cache.records.Dataset`.

A reader takes the dataset's folder and its options and returns the videos (id, file, split) and the
captions, plus the protocol's defaults (max frames, max words, evaluated split). It never decodes anything.
Real-dataset readers have the form ``read_<name>(root, annotations=None, *, <options>, check_videos=True)``;
the layouts each accepts are described in its module (msvd, msrvtt, paragraphs, lsmdc, byo).

Adding a dataset: write its reader (see `vtr.extract.dataset_builder`), list the options it takes beyond
annotations and videos as ``ReaderOption``s, and register both in `READERS`. `vtr extract` and
`vtr info --dataset` make flags of the options by themselves.
"""
from __future__ import annotations

import inspect
import os
import sys
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vtr.cache.records import SPLITS, Dataset
from vtr.extract import byo, msrvtt
from vtr.extract.byo import read_byo
from vtr.extract.dataset_builder import ReaderOption
from vtr.extract.lsmdc import read_lsmdc
from vtr.extract.msrvtt import read_msrvtt
from vtr.extract.msvd import read_msvd
from vtr.extract.paragraphs import DIDEMO_OPTIONS, read_activitynet, read_didemo


def _synthetic(root: Path, n_videos: int = 300, seed: int = 0, progress: bool = True, **_) -> Dataset:
    # Made on demand: rendering is deterministic per (seed, clip index), so this is a no-op once done.
    from vtr.extract.synthetic import generate, read_synthetic

    generate(root, n_videos=n_videos, seed=seed, progress=progress)
    return read_synthetic(root)


SYNTHETIC_OPTIONS = (ReaderOption("n_videos", "how many clips to make.", default=300, type=int),
                     ReaderOption("seed", "the seed the clips are made from.", default=0, type=int))


@dataclass(frozen=True)
class Reader:
    """One dataset's reader, the options it declares, and its folder when --root is not given."""

    read: Callable[..., Dataset]
    options: tuple[ReaderOption, ...] = ()
    default_root: Path | None = None
    strict: bool = True  # an option it does not take is an error (False: ignored, as the synthetic maker does)


READERS: dict[str, Reader] = {
    "synthetic": Reader(_synthetic, SYNTHETIC_OPTIONS, Path("cache") / "synthetic", strict=False),
    "msvd": Reader(read_msvd),
    "msrvtt": Reader(read_msrvtt, msrvtt.OPTIONS),
    "didemo": Reader(read_didemo, DIDEMO_OPTIONS),
    "activitynet": Reader(read_activitynet),
    "lsmdc": Reader(read_lsmdc),
    "byo": Reader(read_byo, byo.OPTIONS),
}

DEFAULT_ROOTS = {name: r.default_root for name, r in READERS.items() if r.default_root is not None}

# Given to any reader and dropped by those that do not take them: the demo and older scripts pass the
# synthetic clips' count and seed whatever the dataset.
_TOLERATED = {"n_videos", "seed", "progress"}


def declared_options() -> dict[str, tuple[ReaderOption, list[str]]]:
    """Every reader's own options by name, with the datasets that take each (in registry order)."""
    found: dict[str, tuple[ReaderOption, list[str]]] = {}
    for dataset, reader in READERS.items():
        for opt in reader.options:
            found.setdefault(opt.name, (opt, []))[1].append(dataset)
    return found


def reader_options(name: str) -> set[str]:
    """The keyword options reader ``name`` takes (beyond root)."""
    params = inspect.signature(READERS[name].read).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD
                                                                  and p.name != "root")}


def load_dataset(name: str, root: Path | None = None, **options) -> Dataset:
    """Read dataset ``name`` from ``root`` (its default folder when None).

    Options a reader does not take are dropped when their value is None or the reader is given the
    CLI's generic options (n_videos, seed, progress); any other unknown option is an error, so a
    misspelt or misplaced option (``split_variant`` for msvd) is not silently ignored.
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    root = Path(root) if root is not None else READERS[name].default_root
    if root is None:
        raise ValueError(f"--dataset {name} needs --root, the folder holding its videos and annotations")
    takes = reader_options(name)
    options = _reader_kwargs(name, takes, options)
    files: list[str] = []
    _install_read_recorder()
    token = _READS.set(files)
    try:
        ds = READERS[name].read(root, **options)
    finally:
        _READS.reset(token)
    ds.annotation_files = _annotation_files(files)
    return ds


def _reader_kwargs(name: str, takes: set[str], options: dict) -> dict:
    # None is "not given": the reader's own default applies.
    if not READERS[name].strict:
        return {k: v for k, v in options.items() if v is not None}
    wrong = [k for k, v in options.items() if k not in takes and k not in _TOLERATED and v is not None]
    if wrong:
        def flag(k):
            return "--" + k.replace("_", "-")
        raise ValueError(f"--dataset {name} does not take {', '.join(flag(k) for k in sorted(wrong))}; "
                         f"its options: {', '.join(flag(k) for k in sorted(takes - {'check_videos'}))}")
    return {k: v for k, v in options.items() if k in takes and v is not None}


# Which annotation files a reader read, for the cache's record of what it was last brought in line with.
# Recorded from Python's "open" audit events while the reader runs, so every reader is covered whatever
# it reads with (read_bytes, json, csv, a plain-data pickle) without each one reporting its files.
_READS: ContextVar[list | None] = ContextVar("vtr_annotation_reads", default=None)
_CODE = (".py", ".pyc", ".so", ".pth")  # modules imported meanwhile are not annotations
_hooked = False


def _on_audit(event: str, args) -> None:
    if event != "open":
        return
    files = _READS.get()
    if files is None:
        return
    try:
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return
        writing = (mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)) or \
            (mode is not None and any(c in mode for c in "wax+"))
        p = os.fsdecode(path)
        if not writing and not p.endswith(_CODE):
            files.append(p)
    except Exception:  # noqa: BLE001 - a hook that raises would break the open it watches
        pass


def _install_read_recorder() -> None:
    global _hooked
    if not _hooked:  # audit hooks cannot be removed: one, for the process, idle outside load_dataset
        sys.addaudithook(_on_audit)
        _hooked = True


def _annotation_files(paths: list[str]) -> list[str]:
    """Distinct regular files among ``paths``, absolute, in first-read order."""
    out = []
    for p in paths:
        a = os.path.abspath(p)
        if a not in out and os.path.isfile(a):
            out.append(a)
    return out


def dataset_stats(ds: Dataset) -> dict:
    """Counts per split, the missing videos, the protocol settings and any quirks the reader noted."""
    videos = Counter(v.split for v in ds.videos)
    captions = Counter(c.split for c in ds.captions)
    splits = {s: {"videos": videos[s], "captions": captions[s]} for s in SPLITS if videos[s] or captions[s]}
    for s, n in ds.sentences.items():  # paragraph datasets: how many sentences each split's paragraphs join
        splits.setdefault(s, {"videos": 0, "captions": 0})["sentences"] = n
    return {
        "dataset": ds.name,
        "splits": splits,
        "videos": len(ds.videos),
        "captions": len(ds.captions),
        "missing_videos": len(ds.missing_videos),
        "missing_examples": ds.missing_videos[:10],
        "max_frames": ds.max_frames,
        "max_words": ds.max_words,
        "eval_split": ds.eval_split,
        "notes": list(ds.notes),
    }
