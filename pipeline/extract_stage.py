"""The extract stage: dataset -> decoded frames -> frozen CLIP -> HDF5 cache, incrementally.

Captions are parsed with spaCy into action, entity and scene phrases (vtr.extract.parse) and encoded with
the same frozen CLIP text tower: the sentence, and each distinct phrase once; a stream's embedding is the
mean of its phrases' embeddings. Parses and phrase embeddings are cached, so a rerun never parses again.

Work is keyed by id: a video or caption already in the cache (or in a part an interrupted run left) is
never decoded or encoded again, so rerunning after a kill, or after adding videos, does only what is
missing. Decoding runs in worker threads (each drives its own ffmpeg process, so the work happens outside
the GIL) a bounded window ahead of the main thread, which batches frames from several videos through CLIP.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from vtr.cache import FAILED, CacheWriter, TextRow, VideoRow
from vtr.extract.clip_encoder import ClipEncoder
from vtr.extract.decode import DecodeError, sample_frames
from vtr.records import Dataset, VideoItem

SAMPLING = "ffmpeg fps filter at {fps}/s, then CLIP4Clip's uniform choice linspace(0, n-1, max_frames)"
PREPROCESSING = "ffmpeg: short side to {r}px (bicubic), centre crop {r}x{r}, rgb24; CLIP mean/std"


@dataclass
class ExtractStats:
    """What a run did, counted (tests assert on these; the CLI prints them)."""

    videos: int = 0  # in the dataset
    videos_cached: int = 0  # already in the cache, skipped
    videos_decoded: int = 0
    videos_failed: int = 0  # this run
    captions: int = 0
    captions_cached: int = 0
    captions_encoded: int = 0
    phrases_encoded: int = 0  # distinct phrases sent through CLIP
    frames_encoded: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _parser_setting() -> str:
    """The rule set and spaCy pipeline the phrases came from: changing either makes a new cache."""
    from vtr.extract.parse import PARSER_VERSION, load_nlp

    meta = load_nlp().meta
    return f"vtr parser {PARSER_VERSION}; spaCy pipeline {meta['lang']}_{meta['name']} {meta['version']}"


def cache_settings(dataset: Dataset, encoder: ClipEncoder, fps: float, max_words: int) -> dict:
    """The settings that define a cache: two runs may share a file only when these are equal."""
    return {
        "dataset": dataset.name,
        "clip_model": encoder.name,
        "clip_sha256": encoder.sha256,
        "clip_random": encoder.is_random,
        "resolution": encoder.resolution,
        "fps": float(fps),
        "sampling": SAMPLING.format(fps=fps),
        "preprocessing": PREPROCESSING.format(r=encoder.resolution),
        "text": "CLIP BPE tokenizer; captions cut to max_words tokens, start and end tokens included",
        "max_words": int(max_words),
        "parser": _parser_setting(),
    }


def _decode(item: VideoItem, resolution: int, fps: float, max_frames: int):
    """Decode one video; a failure is returned (not raised) so the run records it and goes on."""
    try:
        frames = sample_frames(item.path, resolution=resolution, fps=fps, max_frames=max_frames)
        return item, frames.frames, frames.duration, ""
    except DecodeError as e:
        return item, None, 0.0, str(e)
    except Exception as e:  # noqa: BLE001 - any one bad file must not stop the run
        return item, None, 0.0, f"{item.path}: {type(e).__name__}: {e}"


def _decoded_in_order(items, resolution, fps, max_frames, workers):
    """Yield decode results in dataset order, keeping at most 2 * workers videos in flight."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque = deque()
        it = iter(items)
        for item in it:
            window.append(pool.submit(_decode, item, resolution, fps, max_frames))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _extract_videos(todo, writer, encoder, fps, max_frames, workers, batch_frames, stats, progress, log):
    pending: list[tuple] = []  # decoded videos waiting for a full CLIP batch

    def encode_pending():
        if not pending:
            return
        frames = np.concatenate([f for _, f, _ in pending])
        emb = encoder.encode_frames(frames)
        stats.frames_encoded += len(frames)
        start = 0
        for item, f, duration in pending:
            writer.add_video(VideoRow(item.id, item.split, str(item.path), duration, emb[start:start + len(f)]))
            start += len(f)
            stats.videos_decoded += 1
        pending.clear()

    bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress)
    n_pending_frames = 0
    for item, frames, duration, error in _decoded_in_order(todo, encoder.resolution, fps, max_frames, workers):
        if frames is None:
            writer.add_video(VideoRow(item.id, item.split, str(item.path), 0.0,
                                      np.zeros((0, encoder.dim), np.float16), FAILED, error))
            stats.videos_failed += 1
            log(f"skipped {item.id}: {error}")
        else:
            pending.append((item, frames, duration))
            n_pending_frames += len(frames)
            if n_pending_frames >= batch_frames:
                encode_pending()
                n_pending_frames = 0
        bar.update(1)
    encode_pending()
    bar.close()


def _encode_sorted(encoder: ClipEncoder, texts: list[str], batch_size: int, bar=None,
                   max_tokens: int = 77) -> np.ndarray:
    """CLIP text embeddings of ``texts`` [N, D], batching texts of similar length (less padding to read)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    emb = np.zeros((len(texts), encoder.dim), np.float16)
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        emb[rows] = encoder.encode_texts([texts[i] for i in rows], max_tokens)
        if bar is not None:
            bar.update(len(rows))
    return emb


@dataclass
class EncodedCaptions:
    """Everything the cache stores for a list of captions (rows in the order given)."""

    sentence: np.ndarray  # [N, D] float16
    parses: list  # [N] vtr.extract.parse.Parse
    phrases: np.ndarray  # [N, 3, D] float16: mean embedding of the action, entity, scene phrases
    phrase_mask: np.ndarray  # [N, 3] bool
    new_phrases: int  # distinct phrases this call sent through CLIP


def encode_captions(encoder: ClipEncoder, texts: list[str], batch_size: int = 256,
                    phrase_memo: dict[str, np.ndarray] | None = None, bar=None,
                    max_words: int = 77) -> EncodedCaptions:
    """Parse ``texts`` and encode the sentences and their phrases with CLIP.

    Each distinct phrase is encoded once: ``phrase_memo`` (phrase -> embedding) carries them across calls.
    """
    from vtr.extract.parse import parse_captions

    memo = {} if phrase_memo is None else phrase_memo
    parses = parse_captions(texts)
    new = sorted({p for pr in parses for p in (*pr.action, *pr.entity, *pr.scene)} - memo.keys())
    memo.update(zip(new, _encode_sorted(encoder, new, batch_size)))
    phrases = np.zeros((len(texts), 3, encoder.dim), np.float16)
    mask = np.zeros((len(texts), 3), bool)
    for i, pr in enumerate(parses):
        for k, stream in enumerate((pr.action, pr.entity, pr.scene)):
            if stream:
                phrases[i, k] = np.mean([memo[p].astype(np.float32) for p in stream], axis=0)
                mask[i, k] = True
    sentence = _encode_sorted(encoder, texts, batch_size, bar, max_words)
    return EncodedCaptions(sentence, parses, phrases, mask, len(new))


def _extract_texts(todo, writer, encoder, batch_size, max_words, stats, progress):
    bar = tqdm(total=len(todo), desc="captions", unit="caption", disable=not progress)
    memo: dict[str, np.ndarray] = {}
    chunk = 16 * batch_size
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        enc = encode_captions(encoder, [c.text for c in part], batch_size, memo, bar, max_words)
        for i, c in enumerate(part):  # written in dataset order, whatever the encoding order was
            writer.add_text(TextRow(c.id, c.video_id, c.split, c.text, enc.sentence[i],
                                    json.dumps(enc.parses[i].to_dict(c.text, tree=True)), enc.phrases[i], enc.phrase_mask[i]))
        stats.captions_encoded += len(part)
        stats.phrases_encoded += enc.new_phrases
    bar.close()


def run_extract(
    dataset: Dataset,
    encoder: ClipEncoder,
    out: Path,
    *,
    fps: float = 1.0,
    max_frames: int | None = None,
    max_words: int | None = None,
    workers: int | None = None,
    batch_frames: int = 256,
    text_batch: int = 256,
    flush_every: int = 64,
    retry_failed: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ExtractStats:
    """Bring the cache at ``out`` up to date with ``dataset``; return what was done."""
    t0 = time.time()
    max_frames = max_frames or dataset.max_frames
    max_words = max_words or dataset.max_words
    workers = workers or max(1, os.cpu_count() or 1)
    stats = ExtractStats(videos=len(dataset.videos), captions=len(dataset.captions))
    settings = cache_settings(dataset, encoder, fps, max_words)
    with CacheWriter(out, settings, max_frames=max_frames, dim=encoder.dim, flush_every=flush_every) as w:
        known = w.video_status
        todo_v = [v for v in dataset.videos
                  if v.id not in known or (retry_failed and known[v.id] == FAILED)]
        stats.videos_cached = stats.videos - len(todo_v)
        if todo_v:
            log(f"decoding and encoding {len(todo_v)} videos ({stats.videos_cached} already cached) "
                f"with {encoder.describe()}, {workers} decode workers")
            _extract_videos(todo_v, w, encoder, fps, max_frames, workers, batch_frames, stats, progress, log)
        # Only captions whose video is in the cache: a cache never points at a video it lacks.
        todo_t = [c for c in dataset.captions if c.id not in w.text_ids and c.video_id in w.video_status]
        stats.captions_cached = stats.captions - len(todo_t)
        if todo_t:
            log(f"encoding {len(todo_t)} captions ({stats.captions_cached} already cached)")
            _extract_texts(todo_t, w, encoder, text_batch, max_words, stats, progress)
        # Fold this run's parts, and any an interrupted run left, into the main file (no-op if none).
        w.commit()
    stats.seconds = time.time() - t0
    return stats
