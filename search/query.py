"""Encode a query sentence exactly as extraction encodes a caption.

The sentence goes through the same frozen CLIP text tower, cut to the cache's ``max_words`` tokens, and
(for heads that read them, CAMoE) is parsed by the same spaCy rules into action, entity and scene phrases
whose embeddings are averaged per stream: ``vtr.extract.stage.encode_captions`` does both, so a caption of
the cache searched as text gets bit for bit the embeddings the cache holds for it.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class EncodedQuery:
    """What the head and the moment lookup need of a batch of query sentences."""

    text: dict  # the dict ``encode_text`` takes: sentence [B, D], and phrases / phrase_mask for CAMoE
    sentence: np.ndarray  # [B, D] float32 CLIP sentence embeddings (the moment is the closest frame to it)
    seconds: float  # time spent parsing and encoding


class QueryEncoder:
    """CLIP text tower (+ the spaCy parse when ``phrases``) as the cache was made; CLIP is loaded on first use.

    ``clip_model`` and ``clip_sha256`` come from the cache's settings: weights whose checksum differs are
    refused, since their text embeddings would not live in the space the videos were encoded in.
    """

    def __init__(self, clip_model: str, clip_sha256: str, max_words: int, phrases: bool,
                 clip_cache: Path | None = None, device: str = "cpu"):
        self.clip_model, self.clip_sha256, self.max_words, self.phrases = clip_model, clip_sha256, max_words, phrases
        self.clip_cache, self.device = clip_cache, device
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            from vtr.extract.clip_loader import load_clip

            from vtr.core.device import resolve_device

            # On a CPU captions run in fp32 whatever the image tower's precision: fp32 skips building the int8
            # image tower a query never uses. A GPU keeps auto (fp16), as extraction ran there.
            precision = "fp32" if resolve_device(self.device).type == "cpu" else "auto"
            enc = load_clip(self.clip_model, device=self.device, download_root=self.clip_cache, precision=precision)
            if self.clip_sha256 and enc.sha256 != self.clip_sha256:
                raise ValueError(f"CLIP {self.clip_model}: the weights found (SHA256 {enc.sha256[:12]}...) are not "
                                 f"the ones the cache was made with ({self.clip_sha256[:12]}...)")
            self._encoder = enc
        return self._encoder

    def encode(self, queries: list[str]) -> EncodedQuery:
        if not queries or any(not q.strip() for q in queries):
            raise ValueError("a query must be a non-empty sentence")
        enc = self.encoder
        t = time.perf_counter()
        with _one_thread(len(queries) <= FEW):
            text, sentence = self._encode(enc, list(queries))
        return EncodedQuery(text, np.asarray(sentence, np.float32), time.perf_counter() - t)

    def _encode(self, enc, queries: list[str]):
        from vtr.extract.stage import encode_captions, encode_sorted

        if self.phrases:
            e = encode_captions(enc, queries, max_words=self.max_words)
            sentence = e.sentence
            text = {"sentence": _f32(sentence), "phrases": _f32(e.phrases),
                    "phrase_mask": torch.from_numpy(np.asarray(e.phrase_mask, dtype=bool))}
        else:
            sentence = encode_sorted(enc, queries, 256, None, self.max_words)
            text = {"sentence": _f32(sentence)}
        return text, sentence


FEW = 16  # queries up to which the text tower runs in one thread


@contextlib.contextmanager
def _one_thread(active: bool = True):
    """A few queries are a few tokens: hundreds of tiny ops, each of which costs more to hand to other
    threads than to run, and far more when the cores are busy (bench/search.py times it)."""
    if not active:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _f32(a: np.ndarray) -> torch.Tensor:
    # float16 as the cache stores it, widened as heads.text_batch widens it
    return torch.from_numpy(np.asarray(a, dtype=np.float32))
