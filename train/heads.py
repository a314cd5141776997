"""Alignment heads over frozen CLIP features.

Every head speaks one interface, so fit and eval never special-case a model:

- ``encode_video(frames [B, T, D], mask [B, T]) -> [B, E, D]``: one L2-normalised embedding per expert.
- ``encode_text(text) -> ([B, E, D], gate [B, E])``: per-expert text embeddings (L2-normalised) and the
  gate's weights over the experts (rows sum to 1). ``text`` is a dict of tensors: ``"sentence"`` [B, D]
  always; phrase streams may add more keys.
- ``similarity(t, gate, v) -> [Bt, Bv]``: ``scale * sum_e gate[i, e] * <t[i, e], v[j, e]>``.

A single-stream head (meanP, seqTransf) has E = 1 and a gate of ones. Because the score is a gated sum of
per-expert dot products, eval can encode each side once and score in chunks.

The base class and the shared building blocks are in ``vtr.train.layers``; a new head is a module beside
``camoe.py`` and one entry in ``HEADS``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vtr.cache.records import CacheTensors
from vtr.train.camoe import CAMoE
from vtr.train.layers import (Block, RetrievalHead, identity_, masked_mean,  # noqa: F401 (re-exported)
                              temporal_transformer)


class MeanP(RetrievalHead):
    """Zero-shot CLIP: the mean of the frame embeddings against the sentence embedding. No parameters."""

    name = "meanP"

    def encode_video(self, frames, mask):
        return F.normalize(masked_mean(frames, mask), dim=-1).unsqueeze(1)

    def encode_text(self, text):
        s = F.normalize(text["sentence"], dim=-1).unsqueeze(1)
        return s, torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)


class SeqTransf(RetrievalHead):
    """CLIP4Clip's seqTransf baseline: a small transformer over time on the frozen frame embeddings.

    Video, for frames X [T, D] with mask m:
        H = Transformer(X + P) + X          (P: learned positional embedding [max_frames, D])
        v = normalize(sum_t m_t H_t / sum_t m_t)
    Padding frames are masked as attention keys and dropped from the pool, so they cannot change v.
    Text: t = normalize(W s + b), with W = I and b = 0 at the start (CLIP's own sentence embedding).

    With zero-initialised block outputs and P = 0, H = 2X at the start: an untrained SeqTransf scores
    exactly like MeanP. The logit scale is fixed at CLIP's 100 by default: CLIP4Clip's learned scale starts
    at the clamp (100) and stays there, so learning it only adds a parameter (``learn_scale=True`` allows it).
    """

    name = "seqTransf"

    def __init__(self, dim: int, max_frames: int, layers: int = 2, heads: int = 8, dropout: float = 0.1,
                 learn_scale: bool = False):
        super().__init__(dim, learn_scale=learn_scale)
        if dim % heads:
            raise ValueError(f"seqTransf: dim {dim} is not divisible by heads {heads}")
        self.max_frames = max_frames
        self.pos = nn.Parameter(torch.zeros(max_frames, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.text_proj = identity_(nn.Linear(dim, dim))

    def encode_video(self, frames, mask):
        T = frames.shape[1]
        if T > self.max_frames:
            raise ValueError(f"seqTransf was built for {self.max_frames} frames, got {T}")
        h = temporal_transformer(frames, mask, self.pos, self.blocks)
        return F.normalize(masked_mean(h + frames, mask), dim=-1).unsqueeze(1)

    def encode_text(self, text):
        s = F.normalize(self.text_proj(text["sentence"]), dim=-1).unsqueeze(1)
        return s, torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)


# Head name -> builder(dim, max_frames, **options). A new head registers here.
HEADS = {
    "meanP": lambda dim, max_frames, **options: MeanP(dim, **options),
    "seqTransf": lambda dim, max_frames, **options: SeqTransf(dim, max_frames, **options),
    "camoe": lambda dim, max_frames, **options: CAMoE(dim, max_frames, **options),
}


def build_head(name: str, dim: int, max_frames: int, **options) -> RetrievalHead:
    """The head called ``name`` (case-insensitive) for ``dim``-wide features and up to ``max_frames`` frames."""
    by_lower = {k.lower(): k for k in HEADS}
    if name.lower() not in by_lower:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}")
    try:
        return HEADS[by_lower[name.lower()]](dim, max_frames, **options)
    except TypeError as e:  # an option the head does not take
        raise ValueError(f"bad options for head {name!r}: {options} ({e})") from None


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (for logs)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def video_batch(data: CacheTensors, rows, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (float32) and mask of the given video rows, as tensors on ``device``."""
    rows = np.asarray(rows)
    frames = torch.from_numpy(np.asarray(data.frames[rows], dtype=np.float32)).to(device)
    mask = torch.from_numpy(np.asarray(data.frame_mask[rows], dtype=bool)).to(device)
    return frames, mask


def text_batch(data: CacheTensors, rows, device="cpu") -> dict[str, torch.Tensor]:
    """The text streams of the given caption rows, as the dict ``encode_text`` takes."""
    rows = np.asarray(rows)
    sentence = torch.from_numpy(np.asarray(data.text_emb[rows], dtype=np.float32)).to(device)
    batch = {"sentence": sentence}
    if data.phrase_emb is not None:  # action, entity, scene phrase streams (for CAMoE)
        batch["phrases"] = torch.from_numpy(np.asarray(data.phrase_emb[rows], dtype=np.float32)).to(device)
        batch["phrase_mask"] = torch.from_numpy(np.asarray(data.phrase_mask[rows], dtype=bool)).to(device)
    return batch
