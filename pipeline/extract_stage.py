"""The extract stage: dataset -> decoded frames -> frozen CLIP -> HDF5 cache, incrementally.

Captions are parsed with spaCy into action, entity and scene phrases (vtr.extract.parse) and encoded with
the same frozen CLIP text tower: the sentence, and each distinct phrase once; a stream's embedding is the
mean of its phrases' embeddings. Parses and phrase embeddings are cached, so a rerun never parses again.

Work is keyed by id: a video or caption already in the cache (or in a part an interrupted run left) is
not decoded or encoded again unless its file or text changed (vtr.cache_sync), so rerunning after a kill,
or after adding videos, does only what is missing; changed splits and rows that left the annotations are
updated and removed at the commit. Decoding runs in worker threads (each drives its own ffmpeg process,
so the work happens outside the GIL) a bounded window ahead of the main thread, which batches frames from
several videos through CLIP.
Results are consumed in dataset order, so the cache does not depend on the number of workers.
Captions are encoded at their real token length, sorted by length, each distinct text once.
"""
from __future__ import annotations

import json
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from vtr.cache import FAILED, CacheWriter, TextRow, VideoRow
from vtr.cache_sync import SyncPlan, annotation_files, plan_sync, sync_record
from vtr.extract.clip_encoder import ClipEncoder
from vtr.extract.decode import DecodeError, sample_frames
from vtr.omp import usable_cores
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
    # Bringing the cache in line with the annotations (vtr.cache_sync); the first two are also counted in
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
    close: cosine to the fp32 embedding >= 0.99994 for frames and captions (random ViT-B/32, measured),
    largest element error about 1% of the element. Who needs one precision throughout runs every resume
    with the same --precision (fp32 for exact fp32 features).
    """
    dataset_settings = {"dataset_settings": dict(dataset.settings)} if dataset.settings else {}
    return {
        **dataset_settings,  # what defines the dataset itself (the synthetic seed): see vtr.records.Dataset
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


@dataclass
class DecodeOptions:
    """How each worker runs ffmpeg (see vtr.extract.decode.sample_frames)."""

    resolution: int
    fps: float
    max_frames: int
    threads: int = 1  # ffmpeg threads per video: parallelism comes from the workers
    nice: int = 0


def _decode(item: VideoItem, opt: DecodeOptions):
    """Decode one video; a failure is returned (not raised) so the run records it and goes on.
    Returns ``(item, frames, duration, error, times)``: ``times`` are the kept frames' seconds."""
    try:
        frames = sample_frames(item.path, resolution=opt.resolution, fps=opt.fps, max_frames=opt.max_frames,
                               threads=opt.threads, nice=opt.nice)
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


def _extract_videos(todo, writer, encoder, opt: DecodeOptions, workers, batch_frames, stats, progress, log):
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


def encode_sorted(encoder: ClipEncoder, texts: list[str], batch_size: int, bar=None,
                  max_tokens: int = 77, cut: list | None = None) -> np.ndarray:
    """CLIP text embeddings of ``texts`` [N, D] float16, in the order given.

    Texts are tokenized once, sorted by token count and encoded in batches of similar length, each at its
    longest row's length: a batch of 8-token phrases costs about a tenth of the same batch at 77 tokens.
    """
    tokens = encoder.tokenize(texts, max_tokens)
    lengths = encoder.token_lengths(tokens).numpy()
    if cut is not None:  # ``cut`` gets the rows cut to max_tokens: of those that fill it, the longer ones
        cut.extend(int(i) for i in np.flatnonzero(lengths >= max_tokens) if _n_tokens(texts[i]) > max_tokens)
    order = np.argsort(lengths, kind="stable")
    emb = np.zeros((len(texts), encoder.dim), np.float16)
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        emb[rows] = encoder.encode_tokens(tokens[torch.from_numpy(rows)])
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
    cut: int = 0  # captions longer than max_words tokens, cut to it


def encode_captions(encoder: ClipEncoder, texts: list[str], batch_size: int = 256,
                    phrase_memo: dict[str, np.ndarray] | None = None, bar=None,
                    max_words: int = 77, parses: list | None = None) -> EncodedCaptions:
    """Parse ``texts`` (unless their ``parses`` are given) and encode the sentences and phrases with CLIP.

    Each distinct phrase is encoded once: ``phrase_memo`` (phrase -> embedding) carries them across calls.
    Each distinct sentence of the call is encoded once. Sentences are cut to ``max_words`` tokens; phrases
    are short and never cut.
    """
    from vtr.extract.parse import parse_captions

    memo = {} if phrase_memo is None else phrase_memo
    if parses is None:
        parses = parse_captions(texts)
    new = sorted({p for pr in parses for p in (*pr.action, *pr.entity, *pr.scene)} - memo.keys())
    memo.update(zip(new, encode_sorted(encoder, new, batch_size)))
    phrases = np.zeros((len(texts), 3, encoder.dim), np.float16)
    mask = np.zeros((len(texts), 3), bool)
    for i, pr in enumerate(parses):
        for k, stream in enumerate((pr.action, pr.entity, pr.scene)):
            if stream:
                phrases[i, k] = np.mean([memo[p].astype(np.float32) for p in stream], axis=0)
                mask[i, k] = True
    # Datasets repeat captions (MSVD: 80,827 captions, 61,846 distinct, repeats mostly next to each other):
    # each distinct sentence of the call is encoded once.
    distinct = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(distinct)}
    cut: list[int] = []
    sentence = encode_sorted(encoder, distinct, batch_size, None, max_words, cut)[[row[t] for t in texts]]
    cut_texts = {distinct[i] for i in cut}
    if bar is not None:
        bar.update(len(texts))
    return EncodedCaptions(sentence, parses, phrases, mask, len(new), sum(t in cut_texts for t in texts))


def _n_tokens(text: str) -> int:
    """CLIP's token count of ``text``, uncut, start and end tokens included."""
    from vtr.extract.clip_encoder import _import_clip

    return len(_import_clip().clip._tokenizer.encode(text)) + 2


def _extract_texts(todo, writer, encoder, batch_size, max_words, stats, progress, log=print):
    from vtr.extract.parse import PARSE_MAX_CHARS, parse_text

    bar = tqdm(total=len(todo), desc="captions", unit="caption", disable=not progress)
    memo: dict[str, np.ndarray] = {}
    chunk = 16 * batch_size
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        enc = encode_captions(encoder, [c.text for c in part], batch_size, memo, bar, max_words)
        for i, c in enumerate(part):  # written in dataset order, whatever the encoding order was
            # The stored parse names the text it was made of: the caption, or its beginning when cut.
            parsed = c.text if len(c.text) <= PARSE_MAX_CHARS else parse_text(c.text)
            stats.captions_parse_cut += parsed is not c.text and len(parsed) < len(" ".join(c.text.split()))
            writer.add_text(TextRow(c.id, c.video_id, c.split, c.text, enc.sentence[i],
                                    json.dumps(enc.parses[i].to_dict(parsed, tree=True)), enc.phrases[i], enc.phrase_mask[i]))
        stats.captions_encoded += len(part)
        stats.phrases_encoded += enc.new_phrases
        stats.captions_cut += enc.cut
    bar.close()
    if stats.captions_cut:  # once a run, with the count: a cut caption is the protocol, not an error
        n = stats.captions_cut
        log(f"warning: {n} caption{'s are' if n > 1 else ' is'} longer than {max_words} CLIP tokens: the sentence "
            f"embedding sees the first {max_words} (CLIP4Clip's max_words; --max-words sets it)"
            + (f"; {stats.captions_parse_cut} of them over {PARSE_MAX_CHARS} characters, of which only the first "
               f"{PARSE_MAX_CHARS} are parsed into phrases" if stats.captions_parse_cut else ""))


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
    decode_threads: int = 1,
    decode_nice: int = 0,
    keep_removed: bool = False,
) -> ExtractStats:
    """Bring the cache at ``out`` up to date with ``dataset``; return what was done.

    Up to date means in line with the annotations (vtr.cache_sync, docs/cache.md): new and changed videos
    are decoded, new and changed captions encoded, changed splits and paths updated, and rows no longer in
    the annotations removed (``keep_removed``: kept and counted). The cache records when, and from which
    annotation files (SHA256), it was last brought in line.

    ``workers`` decode threads (default: one per usable core) each run one ffmpeg with ``decode_threads``
    threads, `decode_window` videos ahead of CLIP, which encodes ``batch_frames`` frames at a time in this
    thread. ``decode_nice`` is ffmpeg's niceness (Unix). It stays 0 by default: with CLIP on the CPU, niced
    decoders starved whenever other programs shared the machine (CLIP then waited 10 times longer for
    frames, measured), while at 0 the pipeline used no more CPU time than decoding and CLIP apart.
    The cache does not depend on any of these: only speed does.
    """
    t0 = time.time()
    max_frames = max_frames or dataset.max_frames
    max_words = max_words or dataset.max_words
    workers = workers or usable_cores()
    opt = DecodeOptions(encoder.resolution, fps, max_frames, decode_threads, decode_nice)
    stats = ExtractStats(videos=len(dataset.videos), captions=len(dataset.captions), precision=encoder.precision)
    settings = cache_settings(dataset, encoder, fps, max_words)
    files = annotation_files(dataset)
    with CacheWriter(out, settings, max_frames=max_frames, dim=encoder.dim, flush_every=flush_every) as w:
        plan = plan_sync(dataset, w.rows, retry_failed=retry_failed, keep_removed=keep_removed)
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
            _extract_videos(todo_v, w, encoder, opt, workers, batch_frames, stats, progress, log)
        # Only captions whose video is in the cache: a cache never points at a video it lacks.
        todo_t, stats.captions_changed = plan.captions_to_encode(dataset, w.rows, w.video_status)
        stats.captions_cached = stats.captions - len(todo_t)
        if stats.captions_changed:
            log(f"{stats.captions_changed} captions changed text: parsing and encoding them again")
        if todo_t:
            log(f"encoding {len(todo_t)} captions ({stats.captions_cached} already cached) "
                f"with CLIP in {encoder.precision}")
            t = time.perf_counter()
            _extract_texts(todo_t, w, encoder, text_batch, max_words, stats, progress, log)
            stats.text_seconds = time.perf_counter() - t
        _apply_plan(plan, w, stats, log)
        changes = stats.sync_changes()
        if changes or stats.videos_decoded or stats.videos_failed or stats.captions_encoded or w.synced is None \
                or w.synced.get("annotations") != files:
            w.mark_synced(sync_record(dataset, files, changes))
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
