"""The moment of a hit: the time of the kept frame whose CLIP embedding is closest to the query sentence.

Caches keep each kept frame's time (``/videos/frame_times``). Caches written before that column read NaN
there; their times follow from the frame protocol: with ``fps=..:round=up`` sampled frame i is shown at
i / fps, and CLIP4Clip's choice keeps ``uniform_indices(n, max_frames)`` of the n sampled frames. A video
with fewer kept frames than ``max_frames`` kept all n; one with ``max_frames`` kept frames had n predicted
by its duration (``expected_count``, what the decoder plans by). Where neither tells, the time stays unknown.
"""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from vtr.extract.decode import expected_count, kept_frame_times


def derive_frame_times(mask: np.ndarray, duration: np.ndarray, fps: float) -> np.ndarray:
    """Frame times [N, T] float32 from the frame mask, the durations and the fps (NaN where unknown/padded)."""
    n_rows, T = mask.shape
    out = np.full((n_rows, T), np.nan, np.float32)
    for i in range(n_rows):
        kept = int(mask[i].sum())
        if kept == 0:
            continue
        n = kept if kept < T else expected_count(float(duration[i]), fps)
        if n is None:
            continue
        times = kept_frame_times(n, fps, T)
        if len(times) == kept:
            out[i, :kept] = times
    return out


def complete_frame_times(stored: np.ndarray | None, mask: np.ndarray, duration: np.ndarray | None,
                         fps: float) -> tuple[np.ndarray, int]:
    """Stored times with the unknown rows (a real frame without a time) derived; and how many were derived."""
    times = np.full(mask.shape, np.nan, np.float32) if stored is None else np.array(stored, np.float32)
    unknown = np.flatnonzero((np.isnan(times) & mask).any(1))
    if len(unknown) and duration is not None and fps and math.isfinite(fps):
        times[unknown] = derive_frame_times(mask[unknown], duration[unknown], fps)
    return times, len(unknown)


class FrameReader:
    """Reads a few videos' frame embeddings from a committed cache file, by row, on demand."""

    def __init__(self, cache: Path):
        self.cache = Path(cache)
        self._file = None

    def frames(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(frames [n, T, D] float32, mask [n, T]) of the cache rows ``rows`` (any order, repeats allowed)."""
        if self._file is None:
            self._file = h5py.File(self.cache, "r")
        rows = np.asarray(rows, dtype=np.int64)
        uniq, back = np.unique(rows, return_inverse=True)  # h5py reads sorted, distinct rows
        frames = self._file["videos/frames"][uniq].astype(np.float32)
        mask = self._file["videos/mask"][uniq]
        return frames[back], mask[back]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def best_frames(sentence: np.ndarray, frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For each video, the real frame whose embedding has the largest cosine with ``sentence`` [D] (-1: none)."""
    s = sentence / max(float(np.linalg.norm(sentence)), 1e-12)
    norms = np.linalg.norm(frames, axis=-1)
    cos = (frames @ s) / np.maximum(norms, 1e-12)
    cos = np.where(mask, cos, -np.inf)
    best = cos.argmax(1)
    return np.where(mask.any(1), best, -1)
