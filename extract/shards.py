"""Sharded extraction: each of n machines (or tasks) extracts one slice of a dataset; the slices combine.

Which shard a video belongs to::

    shard_of(video_id, n) = int.from_bytes(blake2b(video_id.encode("utf-8"), digest_size=8), "big") % n

It depends on the id alone, so it does not change when the annotation file is reordered or videos are
added (an existing video keeps its shard; only the new ones need extracting), and it is the same on every
machine and Python (unlike ``hash()``, which is salted per process). Captions go with their video.

Files. For a cache ``OUT`` (``cache/msvd.h5`` by default), shard ``i`` of ``n`` is the ordinary cache
``cache/msvd.shards/shard-00i-of-00n.h5``: same schema and settings as an unsharded run would write,
made by `vtr.extract.stage.run_extract` on the dataset filtered to the shard, so resuming after a kill and
extracting only new videos work per shard as they do for one cache.

Combining (`combine_shards`, ``vtr combine OUT``) writes ``OUT`` as a small file of HDF5 virtual datasets
over the shard files (`vtr.cache.write_combined`): no embedding is copied, and fit, eval and info read it
like any cache. Before it does, every shard is checked: a missing shard, one with uncommitted part files
(its run was killed, or is still writing), one made with other settings, or one holding videos of
another shard is refused by name. ``partial=True`` combines the shards that are there and records the
missing ones. ``copy=True`` writes a standalone cache instead (the rows are copied).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import h5py

from vtr.cache import CacheError, unfinished_parts, write_combined, writer_active
from vtr.cache.records import Dataset

_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.h5$")


class ShardError(CacheError):
    """Shards that cannot be combined or did not finish; the message names each one."""


# ----------------------------------------------------------------------------- which videos


def shard_of(video_id: str, n: int) -> int:
    """The shard (0..n-1) of a video: a stable hash of its id, independent of order and of other videos."""
    digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def parse_shard(spec: str) -> tuple[int, int]:
    """``"3/16"`` -> (3, 16). Shards count from 0, as SLURM array indices and ``seq 0 15`` do."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard must be I/N with 0 <= I < N (e.g. 3/16 for the 4th of 16), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_dataset(ds: Dataset, i: int, n: int) -> Dataset:
    """The part of ``ds`` in shard ``i`` of ``n``: its videos, their captions and their missing-file notes."""
    videos = [v for v in ds.videos if shard_of(v.id, n) == i]
    ids = {v.id for v in videos}
    return replace(ds, videos=videos, captions=[c for c in ds.captions if c.video_id in ids],
                   missing_videos=[v for v in ds.missing_videos if shard_of(v, n) == i])


# ----------------------------------------------------------------------------- where shards live


def shards_dir(out) -> Path:
    """The folder of the shard caches of the cache ``out``: cache/msvd.h5 -> cache/msvd.shards."""
    out = Path(out)
    stem = out.name[:-3] if out.name.endswith(".h5") else out.name
    return out.with_name(stem + ".shards")


def shard_name(i: int, n: int) -> str:
    width = max(3, len(str(n)))  # names sort in shard order
    return f"shard-{i:0{width}d}-of-{n:0{width}d}.h5"


def shard_path(out, i: int, n: int) -> Path:
    return shards_dir(out) / shard_name(i, n)


def find_shards(out) -> dict[int, dict[int, Path]]:
    """Shard caches (or the part folders of unfinished ones) beside ``out``: {n: {i: path}}."""
    found: dict[int, dict[int, Path]] = {}
    folder = shards_dir(out)
    if not folder.is_dir():
        return found
    for p in folder.iterdir():
        name = p.name.removesuffix(".parts")  # a killed first run leaves only the part folder
        m = _NAME.match(name)
        if m and int(m.group(1)) < int(m.group(2)):
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = folder / name
    return found


# ----------------------------------------------------------------------------- extracting one shard


def extract_shard(dataset: Dataset, encoder, out, i: int, n: int, settings=None, *, progress: bool = True,
                  log: Callable[[str], None] = print, **overrides):
    """Extract shard ``i`` of ``n`` of ``dataset`` into its shard cache beside ``out``; returns ExtractStats.

    ``settings`` and ``overrides`` are `run_extract`'s (`vtr.extract.stage.ExtractSettings`). Another machine
    runs a shard from a `vtr.extract.job.ExtractJob` with ``shard=(i, n)``.
    """
    from vtr.extract.stage import run_extract

    part = shard_dataset(dataset, i, n)
    path = shard_path(out, i, n)
    log(f"shard {i}/{n}: {len(part.videos)} of {len(dataset.videos)} videos, {len(part.captions)} captions "
        f"-> {path}")
    return run_extract(part, encoder, path, settings, progress=progress, log=log, **overrides)


# ----------------------------------------------------------------------------- combining


@dataclass
class CombineReport:
    """What `combine_shards` did: the combined cache, the shard count, the shards used and those left out."""

    path: Path
    n: int
    combined: list[int]
    left_out: dict[str, str]  # shard file name -> why (partial combines only)
    videos: int
    captions: int
    copied: bool


def _choose_n(out, found: dict, n: int | None) -> int:
    folder = shards_dir(out)
    if n is not None:
        if n not in found:
            raise ShardError(f"{folder}: no shards of {n} (shard-*-of-{n:03d}.h5)"
                             + (f"; there are shards of {', '.join(map(str, sorted(found)))}" if found else ""))
        return n
    if not found:
        raise ShardError(f"{folder}: no shard caches there; run `vtr extract ... --shard I/N` for I = 0..N-1 "
                         f"with --out {out} first")
    if len(found) > 1:
        raise ShardError(f"{folder} holds shards of several splittings (of {', '.join(map(str, sorted(found)))}); "
                         f"choose one with --shards N")
    return next(iter(found))


def shard_problems(out, n: int) -> dict[str, str]:
    """The shards of ``n`` beside ``out`` that cannot be combined now: {file name: why}."""
    problems = {}
    for i in range(n):
        path = shard_path(out, i, n)
        rerun = f"rerun `vtr extract ... --shard {i}/{n}`"
        if writer_active(path):
            problems[path.name] = "a run is writing it now (its lock is held); wait for it to finish"
        elif parts := unfinished_parts(path):
            problems[path.name] = f"{parts} uncommitted part files: its run was killed or failed; {rerun} to finish it"
        elif not path.exists():
            problems[path.name] = f"missing; {rerun}"
    return problems


def check_members(path: Path, i: int, n: int) -> None:
    """Refuse a shard cache holding a video that belongs to another shard (a renamed or foreign file)."""
    with h5py.File(path, "r") as f:
        ids = f["videos/ids"].asstr()[()] if len(f["videos/ids"]) else []
    for vid in ids:
        if shard_of(vid, n) != i:
            raise ShardError(f"{path}: holds video {vid!r}, which belongs to shard {shard_of(vid, n)}/{n}, not "
                             f"{i}/{n}; this file was not written by `vtr extract --shard {i}/{n}`")


def combine_shards(out, *, n: int | None = None, partial: bool = False, copy: bool = False,
                   log: Callable[[str], None] = print) -> CombineReport:
    """Combine the shard caches beside ``out`` into the cache ``out`` (virtual datasets; ``copy``: copied rows).

    Every shard 0..n-1 must be there and committed, unless ``partial``, which combines those that are
    and records the others. Raises ShardError naming each shard that is missing, unfinished, foreign or
    made with other settings.
    """
    out = Path(out)
    n = _choose_n(out, find_shards(out), n)
    problems = shard_problems(out, n)
    if problems and not partial:
        listed = "\n  ".join(f"{name}: {why}" for name, why in problems.items())
        raise ShardError(f"cannot combine {out}: {len(problems)} of its {n} shards not ready in "
                         f"{shards_dir(out)}:\n  {listed}\n(--partial combines the others)")
    ready = [i for i in range(n) if shard_path(out, i, n).name not in problems]
    if not ready:
        raise ShardError(f"cannot combine {out}: none of its {n} shards is ready in {shards_dir(out)}")
    for name, why in problems.items():
        log(f"left out {name}: {why}")
    for i in ready:
        check_members(shard_path(out, i, n), i, n)
    info = write_combined(out, [shard_path(out, i, n) for i in ready], copy=copy,
                          note={"n": n, "indices": ready, "left_out": problems})
    return CombineReport(out, n, ready, problems, sum(s["videos"] for s in info["shards"]),
                         sum(s["texts"] for s in info["shards"]), copy)
