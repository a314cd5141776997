"""The index folder's files and the identities it records (which run, which cache), checked on every open.

    DIR/index.json        what the index is: the run's and the cache's identities, the engine (a FAISS
                          factory string), counts, recall@10 of an approximate engine, QB-Norm's bank
    DIR/vectors.faiss     the FAISS index (exact: the video vectors, plus lse_v as a last coordinate
                          when QB-Norm is available)
    DIR/videos.json       per indexed video, in index order: id, path, cache row, captions
    DIR/frame_times.npy   [N, T] float32 seconds of each kept frame (NaN: padded or unknown)
    DIR/bank.npz          QB-Norm's statistics (see vtr.search.qbnorm)

A run is identified by its checkpoint's SHA256 and its config.json's; a cache by its fingerprint (settings
and row counts, ``vtr.train.runs.cache_fingerprint``) and its settings alone (so a grown cache can be told
from another one). Every file is written under a temporary name and renamed; index.json goes last.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from vtr.core.files import sha256_file
from vtr.core.files import atomic_write_bytes

FORMAT = 1
META, ENGINE, VIDEOS, TIMES, BANK = "index.json", "vectors.faiss", "videos.json", "frame_times.npy", "bank.npz"


class IndexStale(ValueError):
    """An index folder that no longer matches its run or cache, or that is not an index at all."""


def run_identity(run_dir: Path | None, checkpoint: str | None) -> dict:
    """What a run's vectors depend on: its checkpoint's and its config's SHA256 (zero-shot: nothing)."""
    if run_dir is None:
        return {"zero_shot": True, "path": None}
    run_dir = Path(run_dir).resolve()
    ckpt = Path(checkpoint)
    return {"zero_shot": False, "path": str(run_dir), "checkpoint": ckpt.name,
            "checkpoint_sha256": sha256_file(ckpt), "config_sha256": sha256_file(run_dir / "config.json")}


def settings_sha256(settings: dict) -> str:
    blob = json.dumps({k: v for k, v in settings.items() if k != "path"}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_identity(cache: Path, settings: dict, n_videos: int, n_texts: int) -> dict:
    from vtr.train.runs import cache_fingerprint

    counts = SimpleNamespace(attrs=settings, video_ids=range(n_videos), text_ids=range(n_texts))
    return {"path": str(Path(cache).resolve()), "fingerprint": cache_fingerprint(counts),
            "settings_sha256": settings_sha256(settings), "videos": n_videos, "texts": n_texts}


def current_cache_identity(cache: Path) -> dict:
    """The identity of the cache at ``cache`` now (its keys only are read, and any unfinished parts)."""
    from vtr.cache import read_sources

    settings, m = read_sources(Path(cache), {"videos": ("ids",), "texts": ("ids",)})
    return cache_identity(cache, settings, len(m["videos"]["ids"]), len(m["texts"]["ids"]))


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def write_npy(path: Path, a: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, a)
    atomic_write_bytes(path, buf.getvalue())


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise IndexStale(f"{folder}: not a vtr search index (no {META}; build one with `vtr index`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IndexStale(f"{path}: unreadable ({e}); rebuild it with `vtr index`") from e
    if meta.get("format") != FORMAT:
        raise IndexStale(f"{path}: index format {meta.get('format')!r}, this vtr reads {FORMAT}; rebuild it "
                         f"with `vtr index`")
    return meta


def describe(meta: dict) -> str:
    run = meta["run"]
    what = "zero-shot CLIP" if run["zero_shot"] else f"run {run['path']}"
    return f"{what} on cache {meta['cache']['path']}"


def rebuild_command(meta: dict, folder: Path) -> str:
    run = meta["run"]
    src = "--zero-shot" if run["zero_shot"] else f"--run {run['path']}"
    split = f" --split {meta['split']}" if meta.get("split") else ""
    factory = f" --factory {meta['engine']}" if meta.get("engine", "Flat") != "Flat" else ""
    return f"vtr index {src} --cache {meta['cache']['path']}{split}{factory} --out {folder}"
