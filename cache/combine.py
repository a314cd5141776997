"""One cache over several shard caches (`vtr combine`, vtr.extract.shards), without copying them.

A combined cache is a small file whose datasets are HDF5 virtual datasets over the shard files (relative
paths, so the folder can move), rows in shard order; only ``/texts/video_index`` is written into it, shifted
to the combined rows. Its ``combined`` attribute (JSON) lists each shard file with its row counts and its
``file_id`` (every file vtr.cache writes gets a fresh one), which the reader checks before reading
(vtr.cache.reader). A combined cache is read-only: writing into it is refused.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from vtr.cache.schema import (
    COMBINED,
    EVERYTHING,
    OPTIONAL,
    CacheError,
    file_id,
    part_files,
    settings_lines,
)
from vtr.cache.writer import lock, remove_temporaries_of, unlock, write_attrs
from vtr.core.files import replacing

_COPY_ROWS = 4096  # rows per slice when --copy streams shard data into one file


def _made_by_combining(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return COMBINED in f.attrs or "copied_from" in f.attrs
    except OSError:  # not HDF5 at all: not ours to overwrite either
        return False


@dataclass
class _Source:
    """One shard cache as the combiner sees it: settings, row counts, and each column's dtype and row shape."""

    path: Path
    settings: dict
    file_id: str
    rows: dict  # {"videos": N, "texts": M}
    columns: dict  # {"videos/frames": (dtype, row shape), ...}
    video_index: np.ndarray


def _open_source(p: Path) -> _Source:
    try:
        with h5py.File(p, "r") as f:
            if COMBINED in f.attrs:
                raise CacheError(f"{p}: is itself a combined cache; combine shard caches only")
            columns = {f"{g}/{k}": (f[g][k].dtype, f[g][k].shape[1:]) for g in EVERYTHING for k in EVERYTHING[g]
                       if k in f[g] or f"{g}/{k}" not in OPTIONAL}
            return _Source(p, json.loads(f.attrs["settings"]), file_id(f),
                           {g: len(f[g]["ids"]) for g in EVERYTHING}, columns, f["texts/video_index"][()])
    except OSError as e:
        raise CacheError(f"{p}: not a readable vtr cache ({e})") from e
    except KeyError as e:
        raise CacheError(f"{p}: not a vtr cache (missing {e})") from e


def _check_same_settings(sources: list[_Source]) -> None:
    base = sources[0]
    for s in sources[1:]:
        diff = settings_lines(base.settings, s.settings, f"{base.path.name} has", f"{s.path.name} has")
        if diff:
            raise CacheError(f"{s.path}: made with other settings than {base.path}, and one cache never mixes "
                             f"two:\n  " + "\n  ".join(diff))
        if _required(s.columns) != _required(base.columns):
            raise CacheError(f"{s.path}: its columns differ from {base.path}'s (another schema?)")


def _required(columns: dict) -> dict:
    return {k: v for k, v in columns.items() if k not in OPTIONAL}


def _combined_column(g: h5py.Group, name: str, key: str, sources: list[_Source], where: Path, copy: bool):
    """One column over all sources: a virtual dataset mapping each source's rows, or (copy) the rows themselves."""
    group = key.split("/")[0]
    dtype, row_shape = sources[0].columns[key]
    total = sum(s.rows[group] for s in sources)
    if copy or total == 0:
        chunks = (max(1, min(total, 64)),) + row_shape if total and row_shape else None
        ds = g.create_dataset(name, shape=(total,) + row_shape, dtype=dtype, chunks=chunks)
        start = 0
        for s in sources:
            with h5py.File(s.path, "r") as f:
                src = f[key]
                for a in range(0, s.rows[group], _COPY_ROWS):
                    b = min(a + _COPY_ROWS, s.rows[group])
                    ds[start + a:start + b] = src[a:b]
            start += s.rows[group]
        return
    layout = h5py.VirtualLayout(shape=(total,) + row_shape, dtype=dtype)
    start = 0
    for s in sources:
        n = s.rows[group]
        if n:  # relative to the combined file, so the folder can move as a whole
            rel = os.path.relpath(s.path, where)
            layout[start:start + n] = h5py.VirtualSource(rel, key, shape=(n,) + row_shape, dtype=dtype)
        start += n
    g.create_virtual_dataset(name, layout)


def _shifted_video_index(sources: list[_Source]) -> np.ndarray:
    """Each source's texts/video_index moved by the rows of the sources before it (-1 stays -1)."""
    out, offset = [], 0
    for s in sources:
        out.append(np.where(s.video_index >= 0, s.video_index + offset, -1))
        offset += s.rows["videos"]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def write_combined(path, shard_files: list, *, copy: bool = False, note: dict | None = None) -> dict:
    """Make ``path`` one cache over the committed caches ``shard_files`` (rows in the order given).

    By default the datasets of ``path`` are virtual datasets over the shard files: nothing is copied, and
    the shards must stay where they are relative to ``path``. With ``copy=True`` the rows are copied into
    an ordinary, standalone cache instead (streamed, a slice at a time). Sources whose settings differ are
    refused, naming the file and the differing keys. An existing ordinary cache at ``path`` is never
    overwritten; an existing combined one is replaced atomically. ``note`` is stored with the shard list.
    Returns the stored description: {"shards": [{"file", "videos", "texts", "file_id"}], **note}.
    """
    path = Path(path)
    sources = [_open_source(Path(p)) for p in shard_files]
    if not sources:
        raise CacheError(f"{path}: no shard caches to combine")
    _check_same_settings(sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"shards": [{"file": os.path.relpath(s.path, path.parent), "videos": s.rows["videos"],
                        "texts": s.rows["texts"], "file_id": s.file_id} for s in sources], **(note or {})}
    held = lock(path)
    try:
        if part_files(path) or (path.exists() and not _made_by_combining(path)):
            raise CacheError(f"{path}: holds an extracted cache, which combining would overwrite; choose another "
                             f"path or move it away")
        remove_temporaries_of(path)  # a killed combine's: under the lock, no live writer's
        with replacing(path) as tmp, h5py.File(tmp, "w") as f:
            write_attrs(f, sources[0].settings)
            f.attrs[COMBINED if not copy else "copied_from"] = json.dumps(info)
            for group, names in EVERYTHING.items():
                g = f.create_group(group)
                for name in names:  # an optional column some shard lacks is left out (readers see NaN)
                    if all(f"{group}/{name}" in s.columns for s in sources):
                        _combined_column(g, name, f"{group}/{name}", sources, path.parent, copy)
            f["texts"].create_dataset("video_index", data=_shifted_video_index(sources))
    finally:
        unlock(held)
    return info
