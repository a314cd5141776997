"""The HDF5 cache of frozen CLIP embeddings and caption parses: what extract writes and train, eval and search
read. It is the one module the stages share (docs/cache.md: the schema; docs/architecture.md: the stages).

schema: the layout and row records; reader: reading and merging; writer: the crash-safe writer and its lock;
combine: one cache over shard caches; sync: what a rerun changes; records: what the stages pass each other."""
from vtr.cache.combine import write_combined
from vtr.cache.reader import (
                              cache_summary,
                              combined_info,
                              read_cache,
                              read_sources,
                              synced_info,
)
from vtr.cache.schema import (
                              COMBINED,
                              DONE,
                              FAILED,
                              SCHEMA_VERSION,
                              CacheError,
                              TextRow,
                              VideoRow,
                              parts_dir,
                              unfinished_parts,
)
from vtr.cache.writer import CacheWriter, writer_active

__all__ = ["COMBINED", "DONE", "FAILED", "SCHEMA_VERSION", "CacheError", "CacheWriter", "TextRow", "VideoRow",
           "cache_summary", "combined_info", "parts_dir", "read_cache", "read_sources", "synced_info",
           "unfinished_parts", "write_combined", "writer_active"]
