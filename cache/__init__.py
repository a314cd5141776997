"""The HDF5 cache of frozen CLIP embeddings and caption parses: what extract writes and train, eval and search
read. It is the one module the stages share (docs/cache.md: the schema; docs/architecture.md: the stages).

schema: the layout and row records; reader: reading and merging; writer: the crash-safe writer and its lock;
combine: one cache over shard caches; sync: what a rerun changes; records: what the stages pass each other.

The names below are imported on first use (PEP 562), so importing `vtr.cache.records` alone, as the CLI
does for the dataset readers' options, does not load h5py."""
from __future__ import annotations

import importlib

_WHERE = {
    "write_combined": "combine",
    **dict.fromkeys(("cache_summary", "combined_info", "read_cache", "read_sources", "synced_info"), "reader"),
    **dict.fromkeys(("COMBINED", "DONE", "FAILED", "SCHEMA_VERSION", "CacheError", "TextRow", "VideoRow",
                     "parts_dir", "unfinished_parts"), "schema"),
    **dict.fromkeys(("CacheWriter", "writer_active"), "writer"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
