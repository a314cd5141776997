"""Contrastive losses on a [B, B] logits matrix S whose diagonal holds the matching pairs.

Rows of S are texts and columns are videos (S[i, j] = scale * cos(text_i, video_j)), as ``similarity``
returns them. Both losses are symmetric: a text-to-video term (cross-entropy over each row) and a
video-to-text term (the same on S^T).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: (CE(S, arange) + CE(S^T, arange)) / 2."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def dual_softmax(logits: torch.Tensor, temperature: float, softmax=None) -> torch.Tensor:
    """DSL's prior-reweighted logits: S' = S * softmax(S / temperature, dim=0) * len(S).

    The softmax over dim 0 asks, for each column, how strongly each row claims it compared with the other
    rows; multiplying by it damps a column that many rows score highly (a "hub"). The factor len(S)
    makes a uniform prior (temperature -> inf) leave S unchanged. ``softmax`` replaces ``F.softmax(., dim=0)``:
    inference (``vtr.eval.rescore.dsl``) passes one that keeps ties exact.
    """
    prior = F.softmax(logits / temperature, dim=0) if softmax is None else softmax(logits / temperature)
    return logits * prior * len(logits)


def dsl_loss(logits: torch.Tensor, temperature: float = 1000.0) -> torch.Tensor:
    """Dual Softmax Loss: (CE(dual_softmax(S), arange) + CE(dual_softmax(S^T), arange)) / 2.

    For the text-to-video term the prior is a softmax over texts for each video (dim 0 of S); for the
    video-to-text term, over videos for each text (dim 0 of S^T). The official code uses temperature
    1000 in training; as temperature -> inf the prior is uniform and DSL becomes InfoNCE.
    """
    target = torch.arange(len(logits), device=logits.device)
    t2v = F.cross_entropy(dual_softmax(logits, temperature), target)
    v2t = F.cross_entropy(dual_softmax(logits.T, temperature), target)
    return (t2v + v2t) / 2


LOSSES = {"infonce": info_nce, "dsl": dsl_loss}


def get_loss(name: str):
    """The loss called ``name`` (case-insensitive) from ``LOSSES``."""
    if name.lower() not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    return LOSSES[name.lower()]
