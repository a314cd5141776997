"""The HDF5 feature cache: its schema, a crash-safe writer and a reader.

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

Crash safety. HDF5 files are not safe to kill mid-write, so the main file is never written in place.
A run appends its rows in small *part files* (``<name>.h5.parts/part-000001.h5``), each written to a
temporary name and renamed into place, so a part either exists whole or not at all. At the end of a run
the main file and the parts are combined into a new file that replaces the old one atomically, and the
parts are deleted. A run killed at any moment therefore leaves the old main file plus whole parts; the
reader reads both, and the next run picks up where the killed one stopped. Where an id appears twice
(a failed video retried; a video or caption re-done because its file or text changed), the later row
wins. Updates that need no new embedding (a split or path changed, rows removed because they left the
annotations) are applied when the new main file is written, so they are atomic too: a run killed before
that leaves the old rows, and the next run plans the same updates again. The new main file lists the part
files it holds (``folded_parts``); readers skip those, so a kill between the rename and the deletion of
the parts cannot bring back a row the new file updated or removed. See docs/cache.md.

Schema versions. Version 2 added ``file_size``, ``file_mtime_ns``, ``frame_times``, ``synced`` and
``folded_parts``. Files of version 1 still read: the missing columns read as unknown (-1, NaN), and the
next write (any rerun of `vtr extract`) migrates the file. A setting added since (``dataset_settings``)
is adopted by a cache that predates it, not refused.

One writer at a time: the writer holds an exclusive lock on ``<name>.h5.lock`` (released by the OS
even when the process is killed). Readers take no lock; they only ever see whole files.

Combined caches. A cache may also be *combined* from shard caches (`vtr.shards`): a small file whose
datasets are HDF5 virtual datasets over the shard files (relative paths, so the folder can move), rows in
shard order; only ``/texts/video_index`` is written into it, shifted to the combined rows. Its ``combined``
attribute (JSON) lists each shard file with its row counts and its ``file_id`` (every file this module
writes gets a fresh one). A virtual dataset reads zeros where a source file is missing, so the reader
checks, before reading, that every shard is there and is the very file that was combined; otherwise it
refuses, naming the shard. A combined cache is read-only: writing into it is refused.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vtr import __version__
from vtr.records import CacheTensors

SCHEMA_VERSION = 2
DONE, FAILED = 1, 2
_STR = h5py.string_dtype()


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
    file_size: int = -1  # the file's size and mtime when decoded (-1: unknown), see vtr.cache_sync
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


def _part_files(path: Path) -> list[Path]:
    d = parts_dir(path)
    return sorted(d.glob("part-*.h5")) if d.is_dir() else []


# ----------------------------------------------------------------------------- reading


def _read_str(ds) -> list[str]:
    return list(ds.asstr()[()]) if len(ds) else []


# Which columns each reader takes from a file. Only rewriting the cache needs the parse trees (the
# largest strings in it); only fit and eval need the embeddings; a writer needs just the keys.
_TENSORS = {
    "videos": ("ids", "frames", "mask", "status", "reason", "path", "split", "duration", "frame_times"),
    "texts": ("ids", "caption", "split", "video_id", "embedding", "phrase_embedding", "phrase_mask"),
}
_EVERYTHING = {"videos": _TENSORS["videos"] + ("file_size", "file_mtime_ns"), "texts": _TENSORS["texts"] + ("parse",)}
# What a writer compares with the annotations (vtr.cache_sync): everything but the embeddings and parses.
_KEYS = {"videos": ("ids", "status", "split", "path", "file_size", "file_mtime_ns"),
         "texts": ("ids", "caption", "split", "video_id")}
_SUMMARY = {"videos": ("ids", "status", "reason", "split"), "texts": ("ids", "split")}
# Columns added after files were written: a file without one reads NaN there ([N, T], like the mask).
_OPTIONAL = {"videos/frame_times", "videos/file_size", "videos/file_mtime_ns"}
_UNKNOWN_STAT = ("file_size", "file_mtime_ns")  # optional columns that read -1 (unknown) when absent


def _read_source(f: h5py.File, columns: dict) -> dict:
    """The settings and the chosen ``columns`` ({group: names}) of one file (main or part), as numpy/lists."""
    def column(ds):
        return _read_str(ds) if h5py.check_string_dtype(ds.dtype) else ds[()]

    def optional(group, k):
        if k in _UNKNOWN_STAT:
            return np.full(len(f[group]["ids"]), -1, np.int64)
        return np.full(f[group]["mask"].shape, np.nan, np.float32)

    out = {"settings": json.loads(f.attrs["settings"])}
    for group, names in columns.items():
        out[group] = {k: column(f[group][k]) if k in f[group] or f"{group}/{k}" not in _OPTIONAL
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
        merged[group] = {k: _take(v, order) for k, v in cat.items()}
    return merged


def _concat(items):
    if isinstance(items[0], list):
        return [x for item in items for x in item]
    return np.concatenate(items, axis=0)


def _take(v, order):
    return [v[i] for i in order] if isinstance(v, list) else v[order]


def read_sources(path: Path, columns: dict = _TENSORS) -> tuple[dict, dict]:
    """(settings, merged ``columns``) of a cache: the main file plus any parts an unfinished run left."""
    path = Path(path)
    for attempt in range(3):  # a writer may combine and delete parts while we list them
        files = ([path] if path.exists() else []) + _part_files(path)
        if not files:
            raise CacheError(f"{path}: no such cache (run `vtr extract` to make it)")
        try:
            sources, read, folded = [], [], set()
            for p in files:
                with h5py.File(p, "r") as f:
                    if p == path:
                        folded = set(json.loads(f.attrs.get(FOLDED, "[]")))
                    elif _file_id(f) in folded:  # a kill came between the commit and deleting its parts
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
        diff = _settings_diff(sources[0]["settings"], src["settings"], adopt=True)
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
    settings, m = read_sources(Path(path), _SUMMARY)
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
        "unfinished_parts": len(_part_files(Path(path))),
        "frames_shape": [len(v["ids"]), settings["max_frames"], settings["dim"]],
        "combined": combined_info(path),
        "synced": synced_info(path),
    }


def synced_info(path) -> dict | None:
    """When the cache at ``path`` was last brought in line with its annotations, and with which files
    (``{"at", "annotations": [{"path", "sha256", "bytes"}], ...}``); None if never (made before vtr recorded it)."""
    if not Path(path).exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("synced")
    except OSError as e:
        raise CacheError(f"{path}: not a readable vtr cache ({e})") from e
    return None if raw is None else json.loads(raw)


# ----------------------------------------------------------------------------- writing


def _stamp(f: h5py.File) -> None:
    """The attributes every file gets: version, time, and a fresh id (what combined caches check shards by)."""
    f.attrs["vtr_version"] = __version__
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    f.attrs["file_id"] = uuid.uuid4().hex


def _write_attrs(f: h5py.File, settings: dict) -> None:
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["settings"] = json.dumps(settings, sort_keys=True)
    for k, val in settings.items():  # also as plain attributes, for h5dump / other tools
        f.attrs[k] = val if isinstance(val, (int, float, str, bool)) else json.dumps(val)
    _stamp(f)


def _durable_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:  # make the bytes durable before the rename makes them visible
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_file(path: Path, settings: dict, videos: dict, texts: dict, max_frames: int, dim: int,
                attrs: dict | None = None):
    """Write one complete cache file (main or part) to a temp name, then rename it into place.
    ``attrs``: more attributes (plain data, stored as JSON), e.g. the main file's synced record."""
    tmp = path.with_name(path.name + ".tmp")
    # Built in memory, written out at close: HDF5 writing to disk piece by piece can crash (a segfault)
    # when the disk fills mid-file; this way a full disk is one clean OSError (ENOSPC). Costs a copy of
    # the file in memory while it is written.
    with h5py.File(tmp, "w", driver="core", backing_store=True) as f:
        _write_attrs(f, settings)
        for k, val in (attrs or {}).items():
            f.attrs[k] = json.dumps(val, sort_keys=True)
        g = f.create_group("videos")
        n = len(videos["ids"])
        for k in ("ids", "reason", "path", "split"):
            g.create_dataset(k, data=videos[k], dtype=_STR)
        g.create_dataset("frames", data=videos["frames"].reshape(n, max_frames, dim).astype(np.float16),
                         chunks=(max(1, min(n, 64)), max_frames, dim) if n else None)
        g.create_dataset("mask", data=videos["mask"].reshape(n, max_frames).astype(bool))
        g.create_dataset("status", data=np.asarray(videos["status"], dtype=np.int8))
        g.create_dataset("duration", data=np.asarray(videos["duration"], dtype=np.float32))
        for k in _UNKNOWN_STAT:
            g.create_dataset(k, data=np.asarray(videos.get(k, np.full(n, -1)), dtype=np.int64).reshape(n))
        g.create_dataset("frame_times", data=np.asarray(videos["frame_times"], dtype=np.float32).reshape(n, max_frames))
        g = f.create_group("texts")
        for k in ("ids", "caption", "split", "video_id", "parse"):
            g.create_dataset(k, data=texts[k], dtype=_STR)
        row_of = {vid: i for i, vid in enumerate(videos["ids"])}
        g.create_dataset("video_index", data=np.asarray(
            [row_of.get(vid, -1) for vid in texts["video_id"]], dtype=np.int64))
        m = len(texts["ids"])
        g.create_dataset("embedding", data=texts["embedding"].reshape(m, dim).astype(np.float16))
        g.create_dataset("phrase_embedding", data=texts["phrase_embedding"].reshape(m, 3, dim).astype(np.float16))
        g.create_dataset("phrase_mask", data=texts["phrase_mask"].reshape(m, 3).astype(bool))
        f.flush()
    _durable_replace(tmp, path)


# Settings added after caches were written: a cache without one adopts it (at its next write), since
# refusing would make every earlier cache unusable. (Only datasets that define any have dataset_settings.)
ADOPTED_SETTINGS = ("dataset_settings",)


def _settings_diff(a: dict, b: dict, have: str = "cache has", other: str = "asked", adopt: bool = False) -> list[str]:
    """One line per differing setting; a dict-valued setting per sub-key (``dataset_settings.seed: ...``).
    ``adopt``: a setting of `ADOPTED_SETTINGS` that ``a`` (the older file) lacks is no difference."""
    out = []
    for k in sorted(set(a) | set(b)):
        if adopt and k in ADOPTED_SETTINGS and k not in a:
            continue
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{k}.{s}: {have} {x.get(s)!r}, {other} {y.get(s)!r}"
                    for s in sorted(set(x) | set(y)) if x.get(s) != y.get(s)]
        elif x != y:
            out.append(f"{k}: {have} {x!r}, {other} {y!r}")
    return out


def _lock(path: Path):
    """Take the one-writer lock of the cache at ``path``; returns the handle to pass to `_unlock`."""
    fh = open(str(path) + ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise CacheError(f"{path}: another `vtr extract` is writing this cache (lock {path}.lock)") from None
    return fh


def _unlock(fh) -> None:
    fcntl.flock(fh, fcntl.LOCK_UN)
    fh.close()


def writer_active(path) -> bool:
    """True while some process holds the writer lock of the cache at ``path`` (a run is writing it)."""
    if not Path(str(path) + ".lock").exists():
        return False
    try:
        _unlock(_lock(Path(path)))
    except CacheError:
        return True
    except OSError:  # a read-only folder: nobody can be writing there
        return False
    return False


def unfinished_parts(path) -> int:
    """How many part files an unfinished run left beside the cache at ``path`` (0 when committed)."""
    return len(_part_files(Path(path)))


class CacheWriter:
    """Appends videos and captions to a cache, crash-safely (see the module docstring).

    Use as a context manager::

        with CacheWriter("cache/msvd.h5", settings, max_frames=12, dim=512) as w:
            todo = [v for v in videos if v.id not in w.video_ids]
            w.add_video(VideoRow(...))      # buffered; a part file is written every `flush_every` rows
            w.add_text(TextRow(...))
            w.commit()                      # combine main + parts into a new main file

    ``settings`` must equal those of an existing cache at the same path, else `CacheError` lists the
    differences: one cache never mixes two models or frame settings.
    """

    def __init__(self, path, settings: dict, *, max_frames: int, dim: int, flush_every: int = 64):
        self.path = Path(path)
        self.settings = dict(settings, max_frames=max_frames, dim=dim)
        self.max_frames, self.dim, self.flush_every = max_frames, dim, flush_every
        self._lock_fh = None
        self._videos: list[VideoRow] = []
        self._texts: list[TextRow] = []
        self.parts_written = 0
        self._video_updates: dict[str, dict] = {}
        self._text_updates: dict[str, dict] = {}
        self._removed_videos: set[str] = set()
        self._removed_texts: set[str] = set()
        self._synced: dict | None = None
        # id -> (size, mtime_ns) of the video's file, as the run found it before decoding: stored with a
        # row that carries none, so the next run can tell whether the file changed.
        self.file_stats: dict[str, tuple[int, int]] = {}

    # -- lifecycle
    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fh = _lock(self.path)
        try:
            self._load_existing()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.flush()
        else:
            # Keep what was done: whole rows go to a part file; the next run resumes from it.
            try:
                self.flush()
            except Exception:
                pass
            # A write that failed (a full disk) leaves a half-written temp file: it only takes space.
            for tmp in (*parts_dir(self.path).glob("*.tmp"), self.path.with_name(self.path.name + ".tmp")):
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
        self._unlock()
        return False

    def _unlock(self):
        _unlock(self._lock_fh)

    def _load_existing(self):
        self.video_status: dict[str, int] = {}
        self.text_ids: set[str] = set()
        self.rows: dict = {"videos": {k: [] for k in _KEYS["videos"]}, "texts": {k: [] for k in _KEYS["texts"]}}
        self.synced: dict | None = None  # the main file's record of its last sync with the annotations
        if not self.path.exists() and not _part_files(self.path):
            return
        combined = combined_info(self.path)
        if combined is not None:
            raise CacheError(
                f"{self.path} is combined from {len(combined['shards'])} shard caches and is read-only: extract "
                f"into a shard (--shard I/N) and run `vtr combine {self.path}` again, or use --out for a "
                f"separate cache")
        try:
            existing, m = read_sources(self.path, _KEYS)
        except CacheError as e:
            raise CacheError(f"{e}; move it away or choose another --out") from e
        diff = _settings_diff(existing, self.settings, adopt=True)
        if diff:
            raise CacheError(
                f"{self.path} was made with other settings, and one cache never mixes two:\n  "
                + "\n  ".join(diff)
                + "\nUse --out to write a separate cache, or delete this one."
            )
        self.rows = m  # the columns `_KEYS` names, main file and parts merged (what vtr.cache_sync compares)
        self.video_status = dict(zip(m["videos"]["ids"], m["videos"]["status"].tolist()))
        self.text_ids = set(m["texts"]["ids"])
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                raw, folded = f.attrs.get("synced"), set(json.loads(f.attrs.get(FOLDED, "[]")))
            self.synced = None if raw is None else json.loads(raw)
            for p in _part_files(self.path):  # parts a killed commit left behind, already in the main file
                if _part_id(p) in folded:
                    p.unlink()
            if folded and not _part_files(self.path):
                _remove_parts_dir(self.path)

    @property
    def video_ids(self) -> set[str]:
        return set(self.video_status)

    # -- appending
    def add_video(self, row: VideoRow):
        if row.frames.ndim != 2 or row.frames.shape[1] != self.dim or len(row.frames) > self.max_frames:
            raise ValueError(f"video {row.id}: frames of shape {row.frames.shape}, expected [<= {self.max_frames}, {self.dim}]")
        if row.file_size < 0 and row.id in self.file_stats:
            row.file_size, row.file_mtime_ns = self.file_stats[row.id]
        self._videos.append(row)
        self.video_status[row.id] = row.status
        if len(self._videos) >= self.flush_every:
            self.flush()

    def add_text(self, row: TextRow):
        self._texts.append(row)
        self.text_ids.add(row.id)
        if len(self._texts) >= self.flush_every * 16:  # captions are small: flush them less often
            self.flush()

    def flush(self):
        """Write the buffered rows as one whole part file."""
        if not self._videos and not self._texts:
            return
        d = parts_dir(self.path)
        d.mkdir(exist_ok=True)
        existing = _part_files(self.path)
        seq = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        videos, texts = self._pack(self._videos, self._texts)
        _write_file(d / f"part-{seq:06d}.h5", self.settings, videos, texts, self.max_frames, self.dim)
        self._videos, self._texts = [], []
        self.parts_written += 1

    def _pack(self, vrows: list[VideoRow], trows: list[TextRow]):
        n, T, D = len(vrows), self.max_frames, self.dim
        frames = np.zeros((n, T, D), dtype=np.float16)
        mask = np.zeros((n, T), dtype=bool)
        times = np.full((n, T), np.nan, dtype=np.float32)
        for i, r in enumerate(vrows):
            frames[i, : len(r.frames)] = r.frames
            mask[i, : len(r.frames)] = True
            if r.frame_times is not None:
                times[i, : len(r.frames)] = r.frame_times
        videos = {
            "ids": [r.id for r in vrows], "reason": [r.reason for r in vrows],
            "path": [r.path for r in vrows], "split": [r.split for r in vrows],
            "frames": frames, "mask": mask,
            "status": [r.status for r in vrows], "duration": [r.duration for r in vrows],
            "frame_times": times,
            "file_size": [r.file_size for r in vrows], "file_mtime_ns": [r.file_mtime_ns for r in vrows],
        }
        m = len(trows)
        emb = np.stack([r.embedding for r in trows]) if trows else np.zeros((0, D), np.float16)
        phrase_emb = np.zeros((m, 3, D), np.float16)
        phrase_mask = np.zeros((m, 3), bool)
        for i, r in enumerate(trows):
            if r.phrase_emb is not None:
                phrase_emb[i], phrase_mask[i] = r.phrase_emb, r.phrase_mask
        texts = {
            "ids": [r.id for r in trows], "caption": [r.caption for r in trows],
            "split": [r.split for r in trows], "video_id": [r.video_id for r in trows],
            "embedding": emb, "parse": [r.parse for r in trows],
            "phrase_embedding": phrase_emb, "phrase_mask": phrase_mask,
        }
        return videos, texts

    # -- updates applied at the commit (see the module docstring)
    def update_video(self, video_id: str, **fields):
        """Change columns of a cached video row (split, path, file_size, file_mtime_ns) at the commit."""
        self._video_updates.setdefault(video_id, {}).update(fields)

    def update_text(self, text_id: str, **fields):
        """Change columns of a cached caption row (split, video_id) at the commit."""
        self._text_updates.setdefault(text_id, {}).update(fields)

    def remove(self, video_ids=(), text_ids=()):
        """Leave these rows out of the new main file (a removed video's captions go with it)."""
        self._removed_videos.update(video_ids)
        self._removed_texts.update(text_ids)

    def mark_synced(self, record: dict):
        """Store ``record`` (plain data) as the main file's ``synced`` attribute at the commit."""
        self._synced = record

    def _apply_updates(self, m: dict) -> dict:
        v, t = m["videos"], m["texts"]
        for group, updates in ((v, self._video_updates), (t, self._text_updates)):
            row = {i: n for n, i in enumerate(group["ids"])}
            for i, fields in updates.items():
                if i in row:
                    for k, val in fields.items():
                        group[k][row[i]] = val
        gone = self._removed_videos
        keep_v = [n for n, i in enumerate(v["ids"]) if i not in gone]
        keep_t = [n for n, (i, vid) in enumerate(zip(t["ids"], t["video_id"]))
                  if i not in self._removed_texts and vid not in gone]
        return {"videos": {k: _take(c, keep_v) for k, c in v.items()},
                "texts": {k: _take(c, keep_t) for k, c in t.items()}}

    def commit(self):
        """Combine the main file and all parts into a new main file, atomically; then drop the parts.

        The new file also takes the pending updates and removals and the synced record; with none of
        these and no parts, the main file is left as it is."""
        self.flush()
        parts = _part_files(self.path)
        pending = self._video_updates or self._text_updates or self._removed_videos or self._removed_texts
        if not parts and not pending and self._synced is None:
            if not self.path.exists():  # nothing to write (e.g. an empty shard): still leave a valid cache
                videos, texts = self._pack([], [])
                _write_file(self.path, self.settings, videos, texts, self.max_frames, self.dim)
            return
        if self.path.exists() or parts:
            _, m = read_sources(self.path, _EVERYTHING)
            m = self._apply_updates(m)
        else:
            m = dict(zip(("videos", "texts"), self._pack([], [])))
        attrs = {FOLDED: [_part_id(p) for p in parts]}
        if self._synced is not None:
            attrs["synced"] = self._synced
        elif self.synced is not None:  # keep the last record: the annotations were not looked at
            attrs["synced"] = self.synced
        _write_file(self.path, self.settings, m["videos"], m["texts"], self.max_frames, self.dim, attrs)
        self._video_updates, self._text_updates = {}, {}
        self._removed_videos, self._removed_texts, self._synced = set(), set(), None
        for p in parts:
            p.unlink()
        _remove_parts_dir(self.path)


def _remove_parts_dir(path: Path) -> None:
    try:
        parts_dir(path).rmdir()
    except OSError:  # not there, or not empty
        pass


# ----------------------------------------------------------------------------- combined caches

COMBINED = "combined"  # attribute of a combined cache: JSON {"shards": [...], ...}
FOLDED = "folded_parts"  # attribute of a main file: JSON [file_id of each part file it holds]
_COPY_ROWS = 4096  # rows per slice when --copy streams shard data into one file


def _file_id(f: h5py.File) -> str:
    """What identifies one written file (files from before file_id existed: their creation time)."""
    fid = f.attrs.get("file_id")
    return str(fid) if fid is not None else f"created {f.attrs.get('created', '?')}"


def _part_id(p: Path) -> str:
    with h5py.File(p, "r") as f:
        return _file_id(f)


def combined_info(path) -> dict | None:
    """The ``combined`` attribute of the cache file at ``path`` (shards, row counts), or None for an ordinary cache."""
    if not Path(path).exists():  # only parts so far: an unfinished first run
        return None
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(COMBINED)
    except OSError as e:
        raise CacheError(f"{path}: not a readable vtr cache ({e})") from e
    return None if raw is None else json.loads(raw)


def _made_by_combining(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return COMBINED in f.attrs or "copied_from" in f.attrs
    except OSError:  # not HDF5 at all: not ours to overwrite either
        return False


def _check_shards(path: Path, info: dict) -> None:
    """Refuse to read a combined cache whose shard files are gone or were rewritten since combining."""
    for s in info["shards"]:
        p = path.parent / s["file"]
        if not p.exists():
            raise CacheError(f"{path}: combined from {len(info['shards'])} shards, but shard {s['file']} is "
                             f"missing (looked for {p}); restore it, or rerun that shard and `vtr combine {path}`")
        try:
            with h5py.File(p, "r") as f:
                same = _file_id(f) == s["file_id"]
        except OSError as e:
            raise CacheError(f"{path}: its shard {p} is not a readable vtr cache ({e})") from e
        if not same:
            raise CacheError(f"{path}: shard {s['file']} changed after it was combined (re-extracted?); "
                             f"run `vtr combine {path}` again")


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
            columns = {f"{g}/{k}": (f[g][k].dtype, f[g][k].shape[1:]) for g in _EVERYTHING for k in _EVERYTHING[g]
                       if k in f[g] or f"{g}/{k}" not in _OPTIONAL}
            return _Source(p, json.loads(f.attrs["settings"]), _file_id(f),
                           {g: len(f[g]["ids"]) for g in _EVERYTHING}, columns, f["texts/video_index"][()])
    except OSError as e:
        raise CacheError(f"{p}: not a readable vtr cache ({e})") from e
    except KeyError as e:
        raise CacheError(f"{p}: not a vtr cache (missing {e})") from e


def _check_same_settings(sources: list[_Source]) -> None:
    base = sources[0]
    for s in sources[1:]:
        diff = _settings_diff(base.settings, s.settings, f"{base.path.name} has", f"{s.path.name} has")
        if diff:
            raise CacheError(f"{s.path}: made with other settings than {base.path}, and one cache never mixes "
                             f"two:\n  " + "\n  ".join(diff))
        if _required(s.columns) != _required(base.columns):
            raise CacheError(f"{s.path}: its columns differ from {base.path}'s (another schema?)")


def _required(columns: dict) -> dict:
    return {k: v for k, v in columns.items() if k not in _OPTIONAL}


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
    fh = _lock(path)
    try:
        if _part_files(path) or (path.exists() and not _made_by_combining(path)):
            raise CacheError(f"{path}: holds an extracted cache, which combining would overwrite; choose another "
                             f"path or move it away")
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            _write_attrs(f, sources[0].settings)
            f.attrs[COMBINED if not copy else "copied_from"] = json.dumps(info)
            for group, names in _EVERYTHING.items():
                g = f.create_group(group)
                for name in names:  # an optional column some shard lacks is left out (readers see NaN)
                    if all(f"{group}/{name}" in s.columns for s in sources):
                        _combined_column(g, name, f"{group}/{name}", sources, path.parent, copy)
            f["texts"].create_dataset("video_index", data=_shifted_video_index(sources))
        _durable_replace(tmp, path)
    finally:
        _unlock(fh)
    return info
