"""Writing a cache crash-safely, one writer at a time.

HDF5 files are not safe to kill mid-write, so the main file is never written in place. A run appends its
rows in small *part files* (``<name>.h5.parts/part-000001.h5``), each written to a temporary name and
renamed into place, so a part either exists whole or not at all. At the end of a run the main file and the
parts are combined into a new file that replaces the old one atomically, and the parts are deleted. A run
killed at any moment therefore leaves the old main file plus whole parts; the reader reads both, and the
next run picks up where the killed one stopped. Updates that need no new embedding (a split or path
changed, rows removed because they left the annotations) are applied when the new main file is written,
so they are atomic too: a run killed before that leaves the old rows, and the next run plans the same
updates again. The new main file lists the part files it holds (``folded_parts``); readers skip those, so
a kill between the rename and the deletion of the parts cannot bring back a row the new file updated or
removed. See docs/cache.md.

One writer at a time: the writer holds an exclusive lock on ``<name>.h5.lock`` (`filelock`; released by the
OS even when the process is killed). Readers take no lock; they only ever see whole files.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
from filelock import FileLock, Timeout
from vtr.cache.reader import combined_info, read_sources, take
from vtr.cache.schema import (
    EVERYTHING,
    FOLDED,
    KEYS,
    SCHEMA_VERSION,
    STR,
    UNKNOWN_STAT,
    CacheError,
    TextRow,
    VideoRow,
    part_files,
    part_id,
    parts_dir,
    settings_lines,
)
from vtr.core import __version__
from vtr.core.files import durable_replace, remove_temporaries, replacing

_durable_replace = durable_replace  # looked up by name at each write: tests kill the process around it


def _stamp(f: h5py.File) -> None:
    """The attributes every file gets: version, time, and a fresh id (what combined caches check shards by)."""
    f.attrs["vtr_version"] = __version__
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    f.attrs["file_id"] = uuid.uuid4().hex


def write_attrs(f: h5py.File, settings: dict) -> None:
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["settings"] = json.dumps(settings, sort_keys=True)
    for k, val in settings.items():  # also as plain attributes, for h5dump / other tools
        f.attrs[k] = val if isinstance(val, (int, float, str, bool)) else json.dumps(val)
    _stamp(f)


def _write_file(path: Path, settings: dict, videos: dict, texts: dict, max_frames: int, dim: int,
                attrs: dict | None = None):
    """Write one complete cache file (main or part) to a temporary beside it, then rename it into place.
    ``attrs``: more attributes (plain data, stored as JSON), e.g. the main file's synced record."""
    # Built in memory, written out at close: HDF5 writing to disk piece by piece can crash (a segfault)
    # when the disk fills mid-file; this way a full disk is one clean OSError (ENOSPC).
    with replacing(path, replace=_durable_replace) as tmp, h5py.File(tmp, "w", driver="core", backing_store=True) as f:
        write_attrs(f, settings)
        for k, val in (attrs or {}).items():
            f.attrs[k] = json.dumps(val, sort_keys=True)
        g = f.create_group("videos")
        n = len(videos["ids"])
        for k in ("ids", "reason", "path", "split"):
            g.create_dataset(k, data=videos[k], dtype=STR)
        g.create_dataset("frames", data=videos["frames"].reshape(n, max_frames, dim).astype(np.float16),
                         chunks=(max(1, min(n, 64)), max_frames, dim) if n else None)
        g.create_dataset("mask", data=videos["mask"].reshape(n, max_frames).astype(bool))
        g.create_dataset("status", data=np.asarray(videos["status"], dtype=np.int8))
        g.create_dataset("duration", data=np.asarray(videos["duration"], dtype=np.float32))
        for k in UNKNOWN_STAT:
            g.create_dataset(k, data=np.asarray(videos.get(k, np.full(n, -1)), dtype=np.int64).reshape(n))
        g.create_dataset("frame_times",
                         data=np.asarray(videos["frame_times"], dtype=np.float32).reshape(n, max_frames))
        g = f.create_group("texts")
        for k in ("ids", "caption", "split", "video_id", "parse"):
            g.create_dataset(k, data=texts[k], dtype=STR)
        row_of = {vid: i for i, vid in enumerate(videos["ids"])}
        g.create_dataset("video_index", data=np.asarray(
            [row_of.get(vid, -1) for vid in texts["video_id"]], dtype=np.int64))
        m = len(texts["ids"])
        g.create_dataset("embedding", data=texts["embedding"].reshape(m, dim).astype(np.float16))
        g.create_dataset("phrase_embedding",
                         data=texts["phrase_embedding"].reshape(m, 3, dim).astype(np.float16))
        g.create_dataset("phrase_mask", data=texts["phrase_mask"].reshape(m, 3).astype(bool))
        f.flush()


def remove_temporaries_of(path: Path) -> None:
    """Remove the temporaries a failed or killed write of the cache at ``path`` left (call under its lock)."""
    leftovers = [*parts_dir(path).glob("*.tmp"), path.with_name(path.name + ".tmp")]  # the latter: earlier versions
    for tmp in leftovers:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    try:
        remove_temporaries(path.parent, of=path.name)
    except OSError:  # a folder we may not write: nothing of ours can be there
        pass


def remove_parts_dir(path: Path) -> None:
    try:
        parts_dir(path).rmdir()
    except OSError:  # not there, or not empty
        pass


def lock(path: Path) -> FileLock:
    """Take the one-writer lock of the cache at ``path``; returns the lock to pass to `unlock`."""
    held = FileLock(str(path) + ".lock", thread_local=False)
    try:
        held.acquire(blocking=False)
    except Timeout:
        raise CacheError(f"{path}: another `vtr extract` is writing this cache (lock {path}.lock)") from None
    return held


def unlock(held: FileLock) -> None:
    held.release()


def writer_active(path) -> bool:
    """True while some process holds the writer lock of the cache at ``path`` (a run is writing it)."""
    if not Path(str(path) + ".lock").exists():
        return False
    try:
        unlock(lock(Path(path)))
    except CacheError:
        return True
    except OSError:  # a read-only folder: nobody can be writing there
        return False
    return False


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
        self._lock = None
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
        self._lock = lock(self.path)
        try:
            remove_temporaries_of(self.path)  # a killed writer's: under the lock, no live writer's
            self._load_existing()
        except BaseException:
            unlock(self._lock)
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
            remove_temporaries_of(self.path)  # a failed write (a full disk) may leave one: it only takes space
        unlock(self._lock)
        return False

    def _load_existing(self):
        self.video_status: dict[str, int] = {}
        self.text_ids: set[str] = set()
        self.rows: dict = {"videos": {k: [] for k in KEYS["videos"]}, "texts": {k: [] for k in KEYS["texts"]}}
        self.synced: dict | None = None  # the main file's record of its last sync with the annotations
        if not self.path.exists() and not part_files(self.path):
            return
        combined = combined_info(self.path)
        if combined is not None:
            raise CacheError(
                f"{self.path} is combined from {len(combined['shards'])} shard caches and is read-only: extract "
                f"into a shard (--shard I/N) and run `vtr combine {self.path}` again, or use --out for a "
                f"separate cache")
        try:
            existing, m = read_sources(self.path, KEYS)
        except CacheError as e:
            raise CacheError(f"{e}; move it away or choose another --out") from e
        diff = settings_lines(existing, self.settings, adopt=True)
        if diff:
            raise CacheError(
                f"{self.path} was made with other settings, and one cache never mixes two:\n  "
                + "\n  ".join(diff)
                + "\nUse --out to write a separate cache, or delete this one."
            )
        self.rows = m  # the columns `KEYS` names, main file and parts merged (what vtr.cache.sync compares)
        self.video_status = dict(zip(m["videos"]["ids"], m["videos"]["status"].tolist()))
        self.text_ids = set(m["texts"]["ids"])
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                raw, folded = f.attrs.get("synced"), set(json.loads(f.attrs.get(FOLDED, "[]")))
            self.synced = None if raw is None else json.loads(raw)
            for p in part_files(self.path):  # parts a killed commit left behind, already in the main file
                if part_id(p) in folded:
                    p.unlink()
            if folded and not part_files(self.path):
                remove_parts_dir(self.path)

    @property
    def video_ids(self) -> set[str]:
        return set(self.video_status)

    # -- appending
    def add_video(self, row: VideoRow):
        if row.frames.ndim != 2 or row.frames.shape[1] != self.dim or len(row.frames) > self.max_frames:
            raise ValueError(f"video {row.id}: frames of shape {row.frames.shape}, "
                             f"expected [<= {self.max_frames}, {self.dim}]")
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
        existing = part_files(self.path)
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
        return {"videos": {k: take(c, keep_v) for k, c in v.items()},
                "texts": {k: take(c, keep_t) for k, c in t.items()}}

    def commit(self):
        """Combine the main file and all parts into a new main file, atomically; then drop the parts.

        The new file also takes the pending updates and removals and the synced record; with none of
        these and no parts, the main file is left as it is."""
        self.flush()
        parts = part_files(self.path)
        pending = self._video_updates or self._text_updates or self._removed_videos or self._removed_texts
        if not parts and not pending and self._synced is None:
            if not self.path.exists():  # nothing to write (e.g. an empty shard): still leave a valid cache
                videos, texts = self._pack([], [])
                _write_file(self.path, self.settings, videos, texts, self.max_frames, self.dim)
            return
        if self.path.exists() or parts:
            _, m = read_sources(self.path, EVERYTHING)
            m = self._apply_updates(m)
        else:
            m = dict(zip(("videos", "texts"), self._pack([], [])))
        attrs = {FOLDED: [part_id(p) for p in parts]}
        if self._synced is not None:
            attrs["synced"] = self._synced
        elif self.synced is not None:  # keep the last record: the annotations were not looked at
            attrs["synced"] = self.synced
        _write_file(self.path, self.settings, m["videos"], m["texts"], self.max_frames, self.dim, attrs)
        self._video_updates, self._text_updates = {}, {}
        self._removed_videos, self._removed_texts, self._synced = set(), set(), None
        for p in parts:
            p.unlink()
        remove_parts_dir(self.path)
