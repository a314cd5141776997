"""What a rerun of `vtr extract` must change so the cache follows the annotations it was given.

The cache is keyed by id, but an id is not all a row depends on. `plan_sync` compares each dataset row with
the cached one and sorts the differences by what they cost (docs/cache.md has the table):

- a video that is new, or whose file changed since it was decoded, is decoded again; a file counts as
  changed when its size or modification time (ns) differs from the ones stored with the row (one stat, as
  make and rsync trust; a content hash would read every video on every rerun). A cache made before the
  stat was stored adopts the file's stat now;
- a caption whose text changed is parsed and encoded again;
- a changed split (or caption's video) is updated in place: embeddings do not depend on it. So is a
  changed path to a file with the stored size and mtime (the same file, moved); another stat: decoded again;
- a video or caption no longer in the annotations is removed at the commit (kept with ``keep_removed``).
  A video the annotations still name whose file is missing on disk is kept, with its captions.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vtr.cache.records import Dataset, VideoItem
from vtr.cache.schema import FAILED
from vtr.core.files import sha256_file

UNKNOWN = (-1, -1)


def file_stat(path) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a video file; (-1, -1) when it cannot be read (decoding says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return UNKNOWN
    return int(st.st_size), int(st.st_mtime_ns)


@dataclass
class SyncPlan:
    """What a run does to the cache besides adding what is new (counts in `counts`)."""

    decode: list[VideoItem] = field(default_factory=list)  # new, retried, or their file changed
    stat: dict[str, tuple[int, int]] = field(default_factory=dict)  # video id -> its file's stat now
    changed_videos: list[str] = field(default_factory=list)  # in `decode` because their file changed
    video_updates: dict[str, dict] = field(default_factory=dict)  # id -> columns to set at the commit
    text_updates: dict[str, dict] = field(default_factory=dict)
    removed_videos: list[str] = field(default_factory=list)  # not in the annotations any more
    removed_texts: list[str] = field(default_factory=list)
    kept_videos: list[str] = field(default_factory=list)  # not in the annotations, kept (keep_removed)
    kept_texts: list[str] = field(default_factory=list)

    def captions_to_encode(self, dataset: Dataset, rows: dict, in_cache) -> tuple[list, int]:
        """The captions to encode (new, or their text changed) whose video is in the cache, and how many
        of them changed text. ``in_cache``: the video ids the cache holds now."""
        cached = dict(zip(rows["texts"]["ids"], rows["texts"]["caption"]))
        todo, changed = [], 0
        for c in dataset.captions:
            if c.video_id not in in_cache or cached.get(c.id) == c.text:
                continue
            todo.append(c)
            changed += c.id in cached
        return todo, changed


def plan_sync(dataset: Dataset, rows: dict, *, retry_failed: bool = False, keep_removed: bool = False) -> SyncPlan:
    """Compare ``dataset`` with the cached ``rows`` (`CacheWriter.rows`) and plan the changes."""
    plan = SyncPlan()
    v = rows["videos"]
    cached = {vid: n for n, vid in enumerate(v["ids"])}
    for item in dataset.videos:
        stat = plan.stat[item.id] = file_stat(item.path)
        n = cached.get(item.id)
        if n is None or (retry_failed and v["status"][n] == FAILED):
            plan.decode.append(item)
            continue
        old_stat = (int(v["file_size"][n]), int(v["file_mtime_ns"][n]))
        known = old_stat != UNKNOWN and stat != UNKNOWN
        if (known and old_stat != stat) or (not known and v["path"][n] != str(item.path)):
            plan.decode.append(item)
            plan.changed_videos.append(item.id)
            continue
        fields = {}
        if v["split"][n] != item.split:
            fields["split"] = item.split
        if v["path"][n] != str(item.path):
            fields["path"] = str(item.path)
        if old_stat == UNKNOWN and stat != UNKNOWN:  # a cache from before stats were kept: adopt them
            fields["file_size"], fields["file_mtime_ns"] = stat
        if fields:
            plan.video_updates[item.id] = fields

    t = rows["texts"]
    want = {c.id: c for c in dataset.captions}
    for tid, split, vid, text in zip(t["ids"], t["split"], t["video_id"], t["caption"]):
        c = want.get(tid)
        if c is not None and c.text == text:  # a changed text is re-encoded, with all its columns
            fields = {k: getattr(c, k) for k, old in (("split", split), ("video_id", vid)) if getattr(c, k) != old}
            if fields:
                plan.text_updates[tid] = fields

    listed = {item.id for item in dataset.videos} | set(dataset.missing_videos)
    gone_v = [vid for vid in v["ids"] if vid not in listed]
    gone_set = set(gone_v)
    missing = set(dataset.missing_videos)  # the readers drop their captions; the annotations did not
    gone_t = [tid for tid, vid in zip(t["ids"], t["video_id"])
              if tid not in want and (vid in gone_set or vid not in missing)]
    if keep_removed:
        plan.kept_videos, plan.kept_texts = gone_v, gone_t
    else:
        plan.removed_videos, plan.removed_texts = gone_v, gone_t
    return plan


def annotation_files(dataset: Dataset) -> list[dict]:
    """``[{"path", "sha256", "bytes"}]`` of each annotation file the dataset was read from."""
    out = []
    for p in dataset.annotation_files:
        try:
            out.append({"path": str(p), "sha256": sha256_file(p), "bytes": Path(p).stat().st_size})
        except OSError as e:  # removed since it was read: say so rather than fail the run
            out.append({"path": str(p), "sha256": None, "bytes": None, "error": str(e)})
    return out


def sync_record(dataset: Dataset, files: list[dict], changes: dict) -> dict:
    """The cache's ``synced`` attribute: when, from which files, and what that sync changed."""
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dataset": dataset.name,
            "annotations": files, "videos": len(dataset.videos), "captions": len(dataset.captions),
            "changes": changes}
