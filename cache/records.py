"""The small typed records the stages pass to each other.

Stages never reach into each other's internals: a dataset reader yields `VideoItem`s and `CaptionItem`s,
extract writes them (with their embeddings) to the HDF5 cache, and fit/eval read the cache back as one
`CacheTensors`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VideoItem:
    """One video of a dataset: a stable id (the cache key), its file, and its split."""

    id: str
    path: Path
    split: str


@dataclass(frozen=True)
class CaptionItem:
    """One caption: a stable id (the cache key, e.g. ``"vid12#3"``), its video's id, the text, the split."""

    id: str
    video_id: str
    text: str
    split: str


@dataclass
class Dataset:
    """What a dataset reader returns: the videos and captions, plus the protocol's frame defaults."""

    name: str
    videos: list[VideoItem]
    captions: list[CaptionItem]
    max_frames: int = 12
    eval_split: str = "test"
    missing_videos: list[str] = field(default_factory=list)
    max_words: int = 32  # the protocol's caption length in tokens (CLIP4Clip: 32; 64 for paragraphs)
    notes: list[str] = field(default_factory=list)  # quirks the reader met and tolerated, for `vtr info`
    sentences: dict[str, int] = field(default_factory=dict)  # paragraph datasets: sentences joined, per split
    # Options that define the dataset itself, not a choice of its videos (synthetic: the seed and render
    # settings): part of the cache's settings, so a cache made with others is refused, not mixed.
    settings: dict = field(default_factory=dict)
    # The annotation files the reader read (absolute paths, in first-read order): `vtr info` shows their hashes.
    annotation_files: list[str] = field(default_factory=list)
    # Two-word nouns the captions' author knows to be one noun (the synthetic generator's "plus sign"): the
    # caption parser reads each as one noun phrase (vtr.extract.parse_rules). Real datasets leave it empty.
    caption_nouns: frozenset = frozenset()


@dataclass
class CacheTensors:
    """A whole cache read into memory, ready for fit and eval.

    Video rows are every video the cache holds; ``video_ok`` is False for videos whose decode failed
    (their frames are zeros and must not be used). Text rows point at video rows through ``text_video``.
    """

    video_ids: list[str]
    frames: np.ndarray  # [N, T, D] float16, frozen CLIP frame embeddings (not normalised)
    frame_mask: np.ndarray  # [N, T] bool, True where a real frame is
    video_split: np.ndarray  # [N] str
    video_ok: np.ndarray  # [N] bool
    text_ids: list[str]
    captions: list[str]
    text_video: np.ndarray  # [M] int64, row index into the video arrays
    text_split: np.ndarray  # [M] str
    text_emb: np.ndarray  # [M, D] float16, frozen CLIP sentence embeddings (not normalised)
    attrs: dict = field(default_factory=dict)  # the cache's settings (model, fps, max_frames, ...)
    phrase_emb: np.ndarray | None = None  # [M, 3, D] float16: action, entity, scene phrase embeddings
    phrase_mask: np.ndarray | None = None  # [M, 3] bool, True where the caption has that phrase
    frame_times: np.ndarray | None = None  # [N, T] float32 seconds of each kept frame, NaN where padded/unknown

    def select(self, split: str) -> CacheTensors:
        """The subset of one split: its decodable videos and the captions that point at them.

        Text rows are re-indexed to the new video rows, so ``text_video`` stays valid.
        """
        keep_v = np.flatnonzero((self.video_split == split) & self.video_ok)
        new_index = np.full(len(self.video_ids), -1, dtype=np.int64)
        new_index[keep_v] = np.arange(len(keep_v))
        keep_t = np.flatnonzero((self.text_split == split) & (new_index[self.text_video] >= 0))
        return CacheTensors(
            video_ids=[self.video_ids[i] for i in keep_v],
            frames=self.frames[keep_v],
            frame_mask=self.frame_mask[keep_v],
            video_split=self.video_split[keep_v],
            video_ok=self.video_ok[keep_v],
            text_ids=[self.text_ids[i] for i in keep_t],
            captions=[self.captions[i] for i in keep_t],
            text_video=new_index[self.text_video[keep_t]],
            text_split=self.text_split[keep_t],
            text_emb=self.text_emb[keep_t],
            attrs=dict(self.attrs),
            phrase_emb=None if self.phrase_emb is None else self.phrase_emb[keep_t],
            phrase_mask=None if self.phrase_mask is None else self.phrase_mask[keep_t],
            frame_times=None if self.frame_times is None else self.frame_times[keep_v],
        )

    @property
    def dim(self) -> int:
        return int(self.frames.shape[-1])

    @property
    def max_frames(self) -> int:
        return int(self.frames.shape[1])
