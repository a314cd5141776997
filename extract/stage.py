"""The extract stage: dataset -> decoded frames and parsed captions -> frozen CLIP -> HDF5 cache, incrementally.

Work is keyed by id: a video or caption already in the cache (or in a part an interrupted run left) is
not decoded or encoded again unless its file or text changed (vtr.cache.sync), so rerunning after a kill,
or after adding videos, does only what is missing; changed splits and rows that left the annotations are
updated and removed at the commit. Parses and phrase embeddings are cached, so a rerun never parses again.
The videos' part is `vtr.extract.frame_encoding`, the captions' `vtr.extract.caption_encoding`; this
module plans the run, keys the cache by its settings and commits.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from vtr.cache import FAILED, CacheWriter
from vtr.cache.records import Dataset
from vtr.cache.sync import SyncPlan, annotation_files, plan_sync, sync_record
from vtr.core.omp import usable_cores
from vtr.extract.caption_encoding import EncodedCaptions, encode_captions, encode_sorted, extract_captions
from vtr.extract.clip_encoder import ClipEncoder
from vtr.extract.frame_encoding import DecodeOptions, decode_window, decoded_in_order, extract_videos
from vtr.extract.precision import precision_record
from vtr.extract.settings import ExtractSettings

# Re-exported: callers (search, bench) import the encoders from the stage.
__all__ = ["ExtractSettings", "ExtractStats", "cache_settings", "run_extract", "DecodeOptions", "decode_window",
           "decoded_in_order", "EncodedCaptions", "encode_captions", "encode_sorted"]

SAMPLING = "ffmpeg fps filter at {fps}/s, then CLIP4Clip's uniform choice linspace(0, n-1, max_frames)"
PREPROCESSING = "ffmpeg: short side to {r}px (bicubic), centre crop {r}x{r}, rgb24; CLIP mean/std"


@dataclass
class ExtractStats:
    """What a run did, counted (tests assert on these; the CLI prints them)."""

    videos: int = 0  # in the dataset
    videos_cached: int = 0  # already in the cache, skipped
    videos_decoded: int = 0
    videos_failed: int = 0  # this run
    videos_failed_before: int = 0  # failed in an earlier run and not tried again (see retry_failed)
    captions: int = 0
    captions_cached: int = 0
    captions_encoded: int = 0
    phrases_encoded: int = 0  # distinct phrases sent through CLIP
    frames_encoded: int = 0
    seconds: float = 0.0
    # Where the video part's wall time went, in the main thread (decoding runs in worker threads meanwhile):
    video_seconds: float = 0.0  # decode + CLIP of the videos, end to end
    clip_seconds: float = 0.0  # CLIP busy on frames
    decode_wait_seconds: float = 0.0  # waiting for a decoded video (CLIP idle)
    write_seconds: float = 0.0  # cache rows and part files
    text_seconds: float = 0.0  # parsing and encoding the captions
    captions_cut: int = 0  # longer than max_words tokens: the sentence embedding saw the first max_words
    captions_parse_cut: int = 0  # longer than parse.PARSE_MAX_CHARS: only that much was parsed
    precision: str = ""  # CLIP's precision in this run (fp32, bf16, fp16); not a cache setting, see cache_settings
    # Bringing the cache in line with the annotations (vtr.cache.sync); the first two are also counted in
    # videos_decoded / captions_encoded.
    videos_changed: int = 0  # decoded again: the file changed since it was cached
    captions_changed: int = 0  # encoded again: the text changed
    videos_updated: int = 0  # split or path updated in place
    captions_updated: int = 0  # split or video updated in place
    videos_removed: int = 0  # no longer in the annotations: removed from the cache
    captions_removed: int = 0
    videos_kept: int = 0  # no longer in the annotations, kept (keep_removed)
    captions_kept: int = 0

    def sync_changes(self) -> dict:
        """The counts of what this run changed to follow the annotations (nonzero ones). Rows kept by
        keep_removed are no change: counting them would rewrite the cache on every rerun."""
        keys = ("videos_changed", "captions_changed", "videos_updated", "captions_updated", "videos_removed",
                "captions_removed")
        return {k: getattr(self, k) for k in keys if getattr(self, k)}

    def as_dict(self) -> dict:
        return asdict(self)


def _parser_setting() -> str:
    """The rule set and spaCy pipeline the phrases came from: changing either makes a new cache."""
    from vtr.extract.parse import PARSER_VERSION, load_nlp

    meta = load_nlp().meta
    return f"vtr parser {PARSER_VERSION}; spaCy pipeline {meta['lang']}_{meta['name']} {meta['version']}"


def cache_settings(dataset: Dataset, encoder: ClipEncoder, fps: float, max_words: int) -> dict:
    """The settings that define a cache: two runs may share a file only when these are equal.

    CLIP's precision (``encoder.precision``) is deliberately not one of them: it is logged and returned in
    `ExtractStats`, like the device. Keying caches by it would refuse every cache made before it existed,
    and a cache begun on a GPU (fp16) could no longer be resumed, or its shards combined, on CPU machines
    (fp16 is GPU-only). vtr has always let GPU fp16 and CPU fp32 rows share a cache, and bf16 rows are as
    close (docs/how-it-works.md). Who needs one precision throughout runs every resume with the same
    --precision (fp32 for exact fp32 features).
    """
    dataset_settings = {"dataset_settings": dict(dataset.settings)} if dataset.settings else {}
    return {
        **dataset_settings,  # what defines the dataset itself (the synthetic seed): see vtr.cache.records.Dataset
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
        **encoder.extra_settings(),  # open_clip: architecture, weights, preprocessing, logit scale and bias
    }


def run_extract(dataset: Dataset, encoder: ClipEncoder, out: Path, settings: ExtractSettings | None = None, *,
                progress: bool = True, log: Callable[[str], None] = print, **overrides) -> ExtractStats:
    """Bring the cache at ``out`` up to date with ``dataset``; return what was done.

    ``settings`` (default `ExtractSettings()`), with any of its fields overridden by keyword
    (``run_extract(ds, enc, out, fps=2.0)``; an unknown keyword is a TypeError).

    Up to date means in line with the annotations (vtr.cache.sync, docs/cache.md): new and changed videos
    are decoded, new and changed captions encoded, changed splits and paths updated, and rows no longer in
    the annotations removed (``keep_removed``: kept and counted). The cache records when, and from which
    annotation files (SHA256), it was last brought in line.

    ``workers`` decode threads each run one ffmpeg with ``decode_threads`` threads, `decode_window` videos
    ahead of CLIP, which encodes ``batch_frames`` frames at a time in this thread. ``decode_nice`` stays 0 by
    default: with CLIP on the CPU, niced decoders starved whenever other programs shared the machine.
    The cache does not depend on any of these: only speed does.
    """
    s = replace(settings or ExtractSettings(), **overrides)
    t0 = time.time()
    max_frames = s.max_frames or dataset.max_frames
    max_words = s.max_words or dataset.max_words
    workers = s.workers or usable_cores()
    opt = DecodeOptions(encoder.resolution, s.fps, max_frames, s.decode_threads, s.decode_nice,
                        encoder.resize_mode, encoder.interpolation)
    stats = ExtractStats(videos=len(dataset.videos), captions=len(dataset.captions), precision=encoder.precision)
    settings = cache_settings(dataset, encoder, s.fps, max_words)
    files = annotation_files(dataset)
    with CacheWriter(out, settings, max_frames=max_frames, dim=encoder.dim, flush_every=s.flush_every) as w:
        plan = plan_sync(dataset, w.rows, retry_failed=s.retry_failed, keep_removed=s.keep_removed)
        w.file_stats = plan.stat  # stored with each row decoded now
        todo_v = plan.decode
        stats.videos_cached = stats.videos - len(todo_v)
        redo = {v.id for v in todo_v}
        stats.videos_failed_before = sum(1 for v in dataset.videos
                                         if v.id not in redo and w.video_status.get(v.id) == FAILED)
        stats.videos_changed = len(plan.changed_videos)
        if plan.changed_videos:
            log(f"{len(plan.changed_videos)} video files changed since they were cached (size or modification "
                f"time), decoding them again: {_some(plan.changed_videos)}")
        if todo_v:
            log(f"decoding and encoding {len(todo_v)} videos ({stats.videos_cached} already cached) "
                f"with {encoder.describe()}, {workers} decode workers")
            extract_videos(todo_v, w, encoder, opt, workers, s.batch_frames, stats, progress, log)
            stats.precision = encoder.precision  # auto becomes int8 or fp32 on the first frames (vtr.extract.precision)
        # Only captions whose video is in the cache: a cache never points at a video it lacks.
        todo_t, stats.captions_changed = plan.captions_to_encode(dataset, w.rows, w.video_status)
        stats.captions_cached = stats.captions - len(todo_t)
        if stats.captions_changed:
            log(f"{stats.captions_changed} captions changed text: parsing and encoding them again")
        if todo_t:
            log(f"encoding {len(todo_t)} captions ({stats.captions_cached} already cached) "
                f"with CLIP in {encoder.precision}")
            t = time.perf_counter()
            extract_captions(todo_t, w, encoder, s.text_batch, max_words, stats, progress, log, dataset.caption_nouns)
            stats.text_seconds = time.perf_counter() - t
        _apply_plan(plan, w, stats, log)
        changes = stats.sync_changes()
        if changes or stats.videos_decoded or stats.videos_failed or stats.captions_encoded or w.synced is None \
                or w.synced.get("annotations") != files:
            w.mark_synced({**sync_record(dataset, files, changes),
                           **precision_record(stats.precision, encoder.gate, stats.frames_encoded)})
        # Fold this run's parts (and any an interrupted run left) and the updates into the main file, atomically.
        w.commit()
    stats.seconds = time.time() - t0
    return stats


def _some(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (", ..." if len(ids) > n else "")


def _apply_plan(plan: SyncPlan, w: CacheWriter, stats: ExtractStats, log) -> None:
    """Hand the in-place updates and removals to the writer (applied at its commit) and count them."""
    for vid, fields in plan.video_updates.items():
        w.update_video(vid, **fields)
    for tid, fields in plan.text_updates.items():
        w.update_text(tid, **fields)
    moved = sum(1 for f in plan.video_updates.values() if "split" in f or "path" in f)
    stats.videos_updated, stats.captions_updated = moved, len(plan.text_updates)
    if moved or plan.text_updates:
        log(f"updating {moved} videos and {len(plan.text_updates)} captions whose split, path or video changed")
    w.remove(plan.removed_videos, plan.removed_texts)
    stats.videos_removed, stats.captions_removed = len(plan.removed_videos), len(plan.removed_texts)
    stats.videos_kept, stats.captions_kept = len(plan.kept_videos), len(plan.kept_texts)
    if plan.removed_videos or plan.removed_texts:
        log(f"removing {len(plan.removed_videos)} videos and {len(plan.removed_texts)} captions that are no "
            f"longer in the annotations (--keep-removed keeps them): {_some(plan.removed_videos + plan.removed_texts)}")
    if plan.kept_videos or plan.kept_texts:
        log(f"keeping {len(plan.kept_videos)} videos and {len(plan.kept_texts)} captions that are no longer in "
            f"the annotations (--keep-removed)")
