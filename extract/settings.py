"""`ExtractSettings`: how an extraction samples frames, cuts captions and writes the cache, as one typed value.

Its own module so that building a job (`vtr.extract.job`) does not import torch and CLIP.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtractSettings:
    """How a run samples frames, cuts captions and writes the cache: `vtr extract`'s options, typed.

    Only ``fps`` and ``max_words`` (and the frames kept, the array's width) key the cache; the rest is speed
    and bookkeeping. ``max_frames``/``max_words`` None: the dataset's protocol.
    """

    fps: float = 1.0  # frames sampled per second before the uniform choice
    max_frames: int | None = None  # frames kept per video, chosen uniformly
    max_words: int | None = None  # caption length in CLIP tokens, start and end included
    workers: int | None = None  # decode threads; None: one per usable core
    batch_frames: int = 256  # frames per CLIP image batch
    text_batch: int = 256  # captions (and phrases) per CLIP text batch
    flush_every: int = 64  # videos per part file: at most this much work is lost to a kill
    retry_failed: bool = False  # decode videos that failed in an earlier run again
    keep_removed: bool = False  # keep rows no longer in the annotations (counted) instead of removing them
    decode_threads: int = 1  # ffmpeg threads per video: parallelism comes from the workers
    decode_nice: int = 0  # ffmpeg's niceness (Unix)

