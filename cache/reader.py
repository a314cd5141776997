"""Reading a cache: the main file merged with the part files an unfinished run left, in memory.

Readers take no lock: every file they open is whole (vtr.cache.writer renames files into place). Where an
id appears twice (a failed video retried; a row re-done because its file or text changed), the later row
wins. A combined cache (vtr.cache.combine) is read only when each of its shards is there and is the very
file that was combined: a virtual dataset reads zeros where its source file is missing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
from vtr.cache.records import CacheTensors
from vtr.cache.schema import (
    COMBINED,
    DONE,
    FAILED,
    FOLDED,
    OPTIONAL,
    SUMMARY,
    TENSORS,
    UNKNOWN_STAT,
    CacheError,
    file_id,
    part_files,
    settings_lines,
)


def _read_str(ds) -> list[str]:
    return list(ds.asstr()[()]) if len(ds) else []


def _read_source(f: h5py.File, columns: dict) -> dict:
    """The settings and the chosen ``columns`` ({group: names}) of one file (main or part), as numpy/lists."""
    def column(ds):
        return _read_str(ds) if h5py.check_string_dtype(ds.dtype) else ds[()]

    def optional(group, k):
        if k in UNKNOWN_STAT:
            return np.full(len(f[group]["ids"]), -1, np.int64)
        return np.full(f[group]["mask"].shape, np.nan, np.float32)

    out = {"settings": json.loads(f.attrs["settings"])}
    for group, names in columns.items():
        out[group] = {k: column(f[group][k]) if k in f[group] or f"{group}/{k}" not in OPTIONAL
                      else optional(group, k) for k in names}
    return out


def _merge(sources: list[dict]) -> dict:
    """Concatenate sources in order; for an id seen twice the later row wins, at its first position."""
    merged = {}
    for group in ("videos", "texts"):
        keys = sources[0][group].keys()
        cat = {k: _concat([s[group][k] for s in sources]) for k in keys}
        ids = cat["ids"]
        last = {i: n for n, i in enumerate(ids)}  # the winning row of each id
        order = []
        seen = set()
        for i in ids:
            if i not in seen:
                seen.add(i)
                order.append(last[i])
        order = np.asarray(order, dtype=np.int64)
        merged[group] = {k: take(v, order) for k, v in cat.items()}
    return merged


def _concat(items):
    if isinstance(items[0], list):
        return [x for item in items for x in item]
    return np.concatenate(items, axis=0)


def take(v, order):
    """Rows ``order`` of a column (a list of strings or an array)."""
    return [v[i] for i in order] if isinstance(v, list) else v[order]


def read_sources(path: Path, columns: dict = TENSORS) -> tuple[dict, dict]:
    """(settings, merged ``columns``) of a cache: the main file plus any parts an unfinished run left."""
    path = Path(path)
    for attempt in range(3):  # a writer may combine and delete parts while we list them
        files = ([path] if path.exists() else []) + part_files(path)
        if not files:
            raise CacheError(f"{path}: no such cache (run `vtr extract` to make it)")
        try:
            sources, read, folded = [], [], set()
            for p in files:
                with h5py.File(p, "r") as f:
                    if p == path:
                        folded = set(json.loads(f.attrs.get(FOLDED, "[]")))
                    elif file_id(f) in folded:  # a kill came between the commit and deleting its parts
                        continue
                    if COMBINED in f.attrs:  # its shards must be there, and be the files combined
                        _check_shards(p, json.loads(f.attrs[COMBINED]))
                    sources.append(_read_source(f, columns))
                    read.append(p)
            files = read
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
            time.sleep(0.2)
        except OSError as e:
            raise CacheError(f"{p}: not a readable vtr cache ({e})") from e
        except KeyError as e:
            raise CacheError(f"{p}: not a vtr cache (missing {e})") from e
    for p, src in zip(files[1:], sources[1:]):
        diff = settings_lines(sources[0]["settings"], src["settings"], adopt=True)
        if diff:
            raise CacheError(f"{p}: made with other settings than {files[0]}: " + "; ".join(diff))
    return sources[0]["settings"], _merge(sources)


def read_cache(path) -> CacheTensors:
    """The whole cache in memory, as fit and eval use it."""
    settings, m = read_sources(Path(path))
    v, t = m["videos"], m["texts"]
    row_of = {vid: n for n, vid in enumerate(v["ids"])}
    missing = [vid for vid in t["video_id"] if vid not in row_of]
    if missing:
        raise CacheError(f"{path}: {len(missing)} captions point at videos not in the cache (e.g. {missing[0]!r})")
    return CacheTensors(
        video_ids=v["ids"],
        frames=v["frames"],
        frame_mask=v["mask"],
        video_split=np.asarray(v["split"], dtype=object),
        video_ok=v["status"] == DONE,
        text_ids=t["ids"],
        captions=t["caption"],
        text_video=np.asarray([row_of[vid] for vid in t["video_id"]], dtype=np.int64),
        text_split=np.asarray(t["split"], dtype=object),
        text_emb=t["embedding"],
        attrs=dict(settings, path=str(path)),
        phrase_emb=t["phrase_embedding"],
        phrase_mask=t["phrase_mask"],
        frame_times=v["frame_times"],
    )


def cache_summary(path) -> dict:
    """Counts and settings, for `vtr info`."""
    settings, m = read_sources(Path(path), SUMMARY)
    v, t = m["videos"], m["texts"]
    status = v["status"]
    splits = {}
    for s in sorted(set(v["split"])):
        ok = [i for i, (sp, st) in enumerate(zip(v["split"], status)) if sp == s and st == DONE]
        splits[s] = {"videos": len(ok), "captions": sum(1 for sp in t["split"] if sp == s)}
    failed = {vid: r for vid, st, r in zip(v["ids"], status, v["reason"]) if st == FAILED}
    return {
        "path": str(path),
        "settings": settings,
        "videos": int((status == DONE).sum()),
        "failed_videos": failed,
        "captions": len(t["ids"]),
        "splits": splits,
        "unfinished_parts": len(part_files(Path(path))),
        "frames_shape": [len(v["ids"]), settings["max_frames"], settings["dim"]],
        "combined": combined_info(path),
        "synced": synced_info(path),
    }


def _main_file_attr(path, name: str):
    """The JSON attribute ``name`` of the main file at ``path``, decoded; None when absent (or only parts exist)."""
    if not Path(path).exists():  # only parts so far: an unfinished first run
        return None
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(name)
    except OSError as e:
        raise CacheError(f"{path}: not a readable vtr cache ({e})") from e
    return None if raw is None else json.loads(raw)


def synced_info(path) -> dict | None:
    """When the cache at ``path`` was last brought in line with its annotations, and with which files
    (``{"at", "annotations": [{"path", "sha256", "bytes"}], ...}``); None if never (made before vtr recorded it)."""
    return _main_file_attr(path, "synced")


def combined_info(path) -> dict | None:
    """The ``combined`` attribute of the cache file at ``path`` (shards, row counts), or None for an ordinary cache."""
    return _main_file_attr(path, COMBINED)


def _check_shards(path: Path, info: dict) -> None:
    """Refuse to read a combined cache whose shard files are gone or were rewritten since combining."""
    for s in info["shards"]:
        p = path.parent / s["file"]
        if not p.exists():
            raise CacheError(f"{path}: combined from {len(info['shards'])} shards, but shard {s['file']} is "
                             f"missing (looked for {p}); restore it, or rerun that shard and `vtr combine {path}`")
        try:
            with h5py.File(p, "r") as f:
                same = file_id(f) == s["file_id"]
        except OSError as e:
            raise CacheError(f"{path}: its shard {p} is not a readable vtr cache ({e})") from e
        if not same:
            raise CacheError(f"{path}: shard {s['file']} changed after it was combined (re-extracted?); "
                             f"run `vtr combine {path}` again")
