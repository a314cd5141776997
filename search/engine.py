"""Exact top-k over a FAISS flat index's own memory, by a matrix product.

FAISS stores and serialises the exact index (``IndexFlatIP``), but its flat search is not the fastest way to
scan it on a CPU: a single query runs in one thread, and a batch goes through FAISS's blocked product and
heaps (bench/search.py measures both against the bare product). So the exact path multiplies the vectors in
place (``faiss.rev_swig_ptr``: a view, no copy) with BLAS (numpy for one query, torch for a batch) and takes
the top k: the bare product itself.
Large batches go through the database in blocks, so the score matrix never exceeds ``BLOCK`` floats.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch

BLOCK = 1 << 26  # scores held at once in a batch (256 MiB of float32)


def flat_vectors(index) -> np.ndarray:
    """The vectors of a flat index [ntotal, d] float32, as a view of FAISS's own storage."""
    flat = faiss.downcast_index(index)
    if not isinstance(flat, faiss.IndexFlat):
        raise TypeError(f"not a flat index: {type(flat).__name__}")
    n, d = flat.ntotal, flat.d
    if n == 0:
        return np.zeros((0, d), np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)


@torch.no_grad()
def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [B, k], indices [B, k]) of the largest inner products, best first (ties in any order)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    if len(queries) == 1:
        # one query: numpy's BLAS matrix-vector product, which bench/search.py measured faster here than
        # torch.mv (a memory-bound scan either way), then a partial sort of the k best
        s = vectors @ queries[0]
        top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        top = top[np.argsort(-s[top], kind="stable")]
        return s[top][None], top[None].astype(np.int64)
    x = torch.from_numpy(vectors)
    q = torch.from_numpy(queries)
    rows = max(k, BLOCK // len(q))
    if rows >= len(x):
        top = (q @ x.T).topk(k, dim=1)
        return top.values.numpy(), top.indices.numpy()
    vals, idx = [], []
    for r0 in range(0, len(x), rows):
        top = (q @ x[r0:r0 + rows].T).topk(min(k, len(x) - r0), dim=1)
        vals.append(top.values)
        idx.append(top.indices + r0)
    vals, idx = torch.cat(vals, 1), torch.cat(idx, 1)
    best = vals.topk(k, dim=1)
    return best.values.numpy(), idx.gather(1, best.indices).numpy()
