"""The exact query and video vectors of a head: its score as one inner product.

Every head scores ``scale * sum_k g_k(t) * <t_k, v_k>`` with unit vectors t_k, v_k (``vtr.train.heads``):
per-expert embeddings that ``encode_text`` and ``encode_video`` return L2-normalised, and a gate whose rows
sum to 1. So with

    video vector  v = concat_k v_k                     [E * D]
    query vector  q = concat_k g_k(t) * t_k            [E * D]

the score is ``scale * <q, v>``, exactly the product ``vtr.eval.evaluate.TileScorer`` computes. The head's
outputs are used as they are (not normalised again), so search sees the numbers eval sees.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from vtr.cache.records import CacheTensors
from vtr.train.heads import RetrievalHead, text_batch, video_batch


def check_inner_product_head(head: RetrievalHead) -> None:
    """Refuse a head whose score is not the gated sum of per-expert products (it has its own ``similarity``)."""
    if type(head).similarity is not RetrievalHead.similarity:
        raise ValueError(f"head {head.name!r} overrides similarity(): its score is not one inner product, so it "
                         f"cannot be indexed exactly")


def expert_names(head: RetrievalHead) -> list[str] | None:
    """The experts' names of a multi-stream head (CAMoE), None for a single-stream one."""
    experts = getattr(head, "experts", None)
    return list(experts) if experts and len(experts) > 1 else None


@torch.no_grad()
def video_vectors(head: RetrievalHead, data: CacheTensors, rows, batch_size: int = 1024,
                  progress: bool = False) -> np.ndarray:
    """Video vectors [len(rows), E * D] float32 of the cache's video ``rows``."""
    head.eval()
    rows = np.asarray(rows, dtype=np.int64)
    out = None
    with tqdm(total=len(rows), desc="encoding videos", unit="video", disable=not progress) as bar:
        for i in range(0, len(rows), batch_size):
            v = head.encode_video(*video_batch(data, rows[i:i + batch_size])).flatten(1).float().numpy()
            if out is None:
                out = np.empty((len(rows), v.shape[1]), np.float32)
            out[i:i + len(v)] = v
            bar.update(len(v))
    return out if out is not None else np.zeros((0, 0), np.float32)


@torch.no_grad()
def query_vectors(head: RetrievalHead, text: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors [B, E * D] float32, gate [B, E]) of a text batch as ``encode_text`` takes it."""
    head.eval()
    t, gate = head.encode_text(text)
    one_expert = t.shape[1] == 1 and bool((gate == 1).all())
    q = t[:, 0] if one_expert else (t * gate.unsqueeze(-1)).flatten(1)  # as TileScorer forms it
    return q.float().numpy().astype(np.float32, copy=False), gate.float().numpy()


@torch.no_grad()
def caption_vectors(head: RetrievalHead, data: CacheTensors, rows, batch_size: int = 1024) -> np.ndarray:
    """Query vectors [len(rows), E * D] of the cache's caption ``rows`` (the QB-Norm bank, held-out queries)."""
    rows = np.asarray(rows, dtype=np.int64)
    parts = [query_vectors(head, text_batch(data, rows[i:i + batch_size]))[0]
             for i in range(0, len(rows), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
