"""The HDF5 feature cache's layout, its row records, and the names every cache module shares.

A cache is one file, ``<name>.h5``, made by ``vtr extract`` for one dataset and one setting::

    /                      attrs: schema_version, the extraction settings (CLIP model and weight
                           checksum, fps, max_frames, sampling, preprocessing, the settings that define
                           the dataset itself such as the synthetic seed, ...), vtr version, created,
                           file_id; main file only: synced (JSON: when the cache was last brought in line
                           with its annotations, and those files' paths and SHA256), folded_parts (JSON:
                           the file_ids of the part files this file already holds)
    /videos/ids            [N] str      the dataset's video ids (the cache key)
    /videos/frames         [N, T, D]    float16 CLIP frame embeddings (not normalised), zero-padded
    /videos/mask           [N, T]       bool, True where a real frame is
    /videos/status         [N] int8     1 done, 2 failed (see /videos/reason)
    /videos/reason         [N] str      why a video failed ("" when done)
    /videos/path, split    [N] str
    /videos/file_size      [N] int64    the video file's size in bytes when it was decoded (-1: unknown)
    /videos/file_mtime_ns  [N] int64    its modification time in ns then (-1: unknown); with the size, how
                           a rerun tells that the file changed and must be decoded again
    /videos/duration       [N] float32  seconds (the container's, from ffmpeg's header; NaN if none)
    /videos/frame_times    [N, T] float32 seconds of each kept frame, NaN where padded (files written before
                           this column read NaN there too: unknown; vtr.search derives them from fps/duration)
    /texts/ids             [M] str      caption ids (the cache key)
    /texts/caption, split  [M] str
    /texts/video_id        [M] str      and /texts/video_index [M] int64, its row in /videos
    /texts/embedding       [M, D]       float16 CLIP sentence embeddings (not normalised)
    /texts/parse           [M] str      the spaCy parse as JSON: action/entity/scene phrases and lemmas
    /texts/phrase_embedding [M, 3, D]   float16 mean CLIP embedding of the action, entity, scene phrases
    /texts/phrase_mask     [M, 3]       bool, True where the caption has a phrase of that stream

Schema versions. Version 2 added ``file_size``, ``file_mtime_ns``, ``frame_times``, ``synced`` and
``folded_parts``. Files of version 1 still read: the missing columns read as unknown (-1, NaN), and the
next write (any rerun of `vtr extract`) migrates the file. A setting added since (``dataset_settings``)
is adopted by a cache that predates it, not refused.

How the files are written (main file, part files, combined caches): vtr.cache.writer, vtr.cache.combine
and docs/cache.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from vtr.core.settings import settings_diff

SCHEMA_VERSION = 2
DONE, FAILED = 1, 2
STR = h5py.string_dtype()
COMBINED = "combined"  # attribute of a combined cache: JSON {"shards": [...], ...}
FOLDED = "folded_parts"  # attribute of a main file: JSON [file_id of each part file it holds]


class CacheError(RuntimeError):
    """A cache that cannot be used as asked: wrong settings, locked, missing or unreadable."""


@dataclass
class VideoRow:
    id: str
    split: str
    path: str
    duration: float
    frames: np.ndarray  # [t, D], t <= max_frames (padded by the writer)
    status: int = DONE
    reason: str = ""
    frame_times: np.ndarray | None = None  # [t] seconds of each frame (None: unknown, stored as NaN)
    file_size: int = -1  # the file's size and mtime when decoded (-1: unknown), see vtr.cache.sync
    file_mtime_ns: int = -1


@dataclass
class TextRow:
    id: str
    video_id: str
    split: str
    caption: str
    embedding: np.ndarray  # [D]
    parse: str = "{}"  # JSON of the caption's parse
    phrase_emb: np.ndarray | None = None  # [3, D]: action, entity, scene (zeros where absent)
    phrase_mask: np.ndarray | None = None  # [3] bool


def parts_dir(path: Path) -> Path:
    return Path(str(path) + ".parts")


def part_files(path: Path) -> list[Path]:
    d = parts_dir(path)
    return sorted(d.glob("part-*.h5")) if d.is_dir() else []


def unfinished_parts(path) -> int:
    """How many part files an unfinished run left beside the cache at ``path`` (0 when committed)."""
    return len(part_files(Path(path)))


# Which columns each reader takes from a file. Only rewriting the cache needs the parse trees (the
# largest strings in it); only fit and eval need the embeddings; a writer needs just the keys.
TENSORS = {
    "videos": ("ids", "frames", "mask", "status", "reason", "path", "split", "duration", "frame_times"),
    "texts": ("ids", "caption", "split", "video_id", "embedding", "phrase_embedding", "phrase_mask"),
}
EVERYTHING = {"videos": TENSORS["videos"] + ("file_size", "file_mtime_ns"), "texts": TENSORS["texts"] + ("parse",)}
# What a writer compares with the annotations (vtr.cache.sync): everything but the embeddings and parses.
KEYS = {"videos": ("ids", "status", "split", "path", "file_size", "file_mtime_ns"),
        "texts": ("ids", "caption", "split", "video_id")}
SUMMARY = {"videos": ("ids", "status", "reason", "split"), "texts": ("ids", "split")}
# Columns added after files were written: a file without one reads NaN there ([N, T], like the mask).
OPTIONAL = {"videos/frame_times", "videos/file_size", "videos/file_mtime_ns"}
UNKNOWN_STAT = ("file_size", "file_mtime_ns")  # optional columns that read -1 (unknown) when absent


def file_id(f: h5py.File) -> str:
    """What identifies one written file (files from before file_id existed: their creation time)."""
    fid = f.attrs.get("file_id")
    return str(fid) if fid is not None else f"created {f.attrs.get('created', '?')}"


def part_id(p: Path) -> str:
    with h5py.File(p, "r") as f:
        return file_id(f)


# Settings added after caches were written: a cache without one adopts it (at its next write), since
# refusing would make every earlier cache unusable. (Only datasets that define any have dataset_settings.)
ADOPTED_SETTINGS = ("dataset_settings",)


def settings_lines(a: dict, b: dict, have: str = "cache has", other: str = "asked", adopt: bool = False) -> list[str]:
    """One line per differing setting; a dict-valued setting per sub-key (``dataset_settings.seed: ...``).
    ``adopt``: a setting of `ADOPTED_SETTINGS` that ``a`` (the older file) lacks is no difference."""
    diff = settings_diff(a, b, depth=1, adopt=ADOPTED_SETTINGS if adopt else ())
    return [f"{k}: {have} {x!r}, {other} {y!r}" for k, x, y in diff]
