"""Videos -> frames -> CLIP frame embeddings -> cache rows, with decoding in threads ahead of CLIP.

Decoding runs in worker threads (each drives its own ffmpeg process, so the work happens outside the GIL)
a bounded window ahead of the main thread, which batches frames from several videos through CLIP.
Results are consumed in dataset order, so the cache does not depend on the number of workers.
"""
from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from vtr.cache import FAILED, VideoRow
from vtr.cache.records import VideoItem
from vtr.extract.decode import DecodeError, sample_frames


@dataclass
class DecodeOptions:
    """How each worker runs ffmpeg (see vtr.extract.decode.sample_frames)."""

    resolution: int
    fps: float
    max_frames: int
    threads: int = 1  # ffmpeg threads per video: parallelism comes from the workers
    nice: int = 0
    resize: str = "shortest"  # the model's preprocessing (ClipEncoder.resize_mode, .interpolation)
    interpolation: str = "bicubic"


def _decode(item: VideoItem, opt: DecodeOptions):
    """Decode one video; a failure is returned (not raised) so the run records it and goes on.
    Returns ``(item, frames, duration, error, times)``: ``times`` are the kept frames' seconds."""
    try:
        frames = sample_frames(item.path, resolution=opt.resolution, fps=opt.fps, max_frames=opt.max_frames,
                               threads=opt.threads, nice=opt.nice, resize=opt.resize,
                               interpolation=opt.interpolation)
        return item, frames.frames, frames.duration, "", frames.times
    except DecodeError as e:
        return item, None, 0.0, str(e), None
    except Exception as e:  # noqa: BLE001 - any one bad file must not stop the run
        return item, None, 0.0, f"{item.path}: {type(e).__name__}: {e}", None


def decode_window(workers: int, batch_frames: int, max_frames: int) -> int:
    """Videos decoded ahead of CLIP: enough to fill two CLIP batches, so the decoders keep working while
    CLIP encodes a batch, and at least two per worker. Memory: about 2 * batch_frames frames (77 MB for
    256 frames at 224 px)."""
    return max(2 * workers, math.ceil(2 * batch_frames / max(1, max_frames)))


def decoded_in_order(items, opt: DecodeOptions, workers: int, window: int):
    """Yield ``(item, frames, duration, error, times)`` in the order of ``items``.

    ``workers`` threads each drive one ffmpeg process at a time (the pixel work happens in ffmpeg, outside
    the GIL); at most ``window`` videos are decoded or held ahead of the consumer, which bounds memory.
    Results come in order whatever order the decoders finish in, so what the consumer does (e.g. how it
    batches frames for CLIP) does not depend on the number of workers.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vtr-decode") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(_decode, item, opt))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early (an error, a kill): do not start what is still queued
            for f in pending:
                f.cancel()


@dataclass
class _Timer:
    """Wall time the main thread spent in each part of the video loop."""

    clip: float = 0.0  # inside encode_frames
    wait: float = 0.0  # blocked on the next decoded video
    write: float = 0.0  # handing rows to the cache writer (and its flushes)


def extract_videos(todo, writer, encoder, opt: DecodeOptions, workers, batch_frames, stats, progress, log):
    """Decode ``todo`` in worker threads, encode their frames with CLIP ``batch_frames`` at a time and hand
    the rows (failures too, with their reason) to ``writer``; counts and times go to ``stats``."""
    pending: list[tuple] = []  # decoded videos waiting for a full CLIP batch
    timer = _Timer()

    def encode_pending():
        if not pending:
            return
        t = time.perf_counter()
        frames = np.concatenate([f for _, f, _, _ in pending])
        emb = encoder.encode_frames(frames)
        timer.clip += time.perf_counter() - t
        stats.frames_encoded += len(frames)
        t = time.perf_counter()
        start = 0
        for item, f, duration, times in pending:
            writer.add_video(VideoRow(item.id, item.split, str(item.path), duration, emb[start:start + len(f)],
                                      frame_times=times))
            start += len(f)
            stats.videos_decoded += 1
        timer.write += time.perf_counter() - t
        pending.clear()

    bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress)
    n_pending_frames = 0
    window = decode_window(workers, batch_frames, opt.max_frames)
    results = decoded_in_order(todo, opt, workers, window)
    t_start = time.perf_counter()
    while True:
        t = time.perf_counter()
        result = next(results, None)
        timer.wait += time.perf_counter() - t
        if result is None:
            break
        item, frames, duration, error, times = result
        if frames is None:
            writer.add_video(VideoRow(item.id, item.split, str(item.path), 0.0,
                                      np.zeros((0, encoder.dim), np.float16), FAILED, error))
            stats.videos_failed += 1
            log(f"skipped {item.id}: {error}")
        else:
            pending.append((item, frames, duration, times))
            n_pending_frames += len(frames)
            if n_pending_frames >= batch_frames:
                encode_pending()
                n_pending_frames = 0
        bar.update(1)
    encode_pending()
    bar.close()
    stats.video_seconds = time.perf_counter() - t_start
    stats.clip_seconds, stats.decode_wait_seconds, stats.write_seconds = timer.clip, timer.wait, timer.write
