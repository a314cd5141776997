"""QB-Norm at query time: eval's dynamic inverted softmax, one query at a time, exact and not transductive.

Eval (``vtr.eval.rescore.qbnorm``, on cosine-scale scores s = logits / scale) ranks a normalised query by

    beta * s(q, v) - lse_v,        lse_v = log sum_b exp(beta * s(b, v))   over the query bank b,

and normalises a query only when its raw top-1 video is in the activation set A (the videos that are the
top-1 of at least one bank query; ties to the lowest index). Neither lse_v nor A depends on the query, so
both are computed once per index, and the normalised ranking is again one inner product:
``<[v, lse_v], [beta * q, -1]>``; the raw one is ``<[v, lse_v], [q, 0]>``. The dynamic rule is one lookup:
``A[raw top-1]``.

The statistics are gathered with eval's own ``QueryBankStats``. Each bank query's top-1 (value, index) is
kept, so videos added later update A exactly: a new video replaces a bank query's top-1 only when it
scores strictly higher, as argmax over the whole gallery would.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vtr.eval.rescore import QueryBankStats

BETA, TOP_K = 20.0, 1  # eval's (and the paper's) beta and k
CHUNK = 4096


@dataclass
class BankStats:
    lse: np.ndarray  # [N] float32 log-sum-exp over the bank of beta * s(b, v), per indexed video
    top_val: np.ndarray  # [B] float32 each bank query's best cosine over the indexed videos
    top_idx: np.ndarray  # [B] int64 and which video (lowest index among ties)
    beta: float = BETA

    def active(self, n_videos: int) -> np.ndarray:
        a = np.zeros(n_videos, bool)
        a[self.top_idx] = True
        return a

    def save(self, path: Path) -> None:
        np.savez(path, lse=self.lse, top_val=self.top_val, top_idx=self.top_idx, beta=np.float64(self.beta))

    @classmethod
    def load(cls, path: Path) -> "BankStats":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["lse"], z["top_val"], z["top_idx"], float(z["beta"]))


@torch.no_grad()
def bank_stats(bank: np.ndarray, videos: np.ndarray, beta: float = BETA, previous: BankStats | None = None,
               chunk: int = CHUNK) -> BankStats:
    """Statistics of the query vectors ``bank`` [B, d] against ``videos`` [n, d] (cosine scale: <q, v>).

    With ``previous`` (the same bank against the videos indexed before), ``videos`` are the new ones,
    appended after them: their lse is computed and each bank query's top-1 updated, nothing else.
    """
    if len(bank) == 0:
        raise ValueError("the query bank is empty")
    b = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    offset = 0 if previous is None else len(previous.lse)
    top_val = torch.full((len(b),), float("-inf")) if previous is None else torch.from_numpy(previous.top_val.copy())
    top_idx = torch.zeros(len(b), dtype=torch.int64) if previous is None else torch.from_numpy(previous.top_idx.copy())
    lse = [] if previous is None else [previous.lse]
    for g0 in range(0, len(videos), chunk):
        v = torch.from_numpy(np.ascontiguousarray(videos[g0:g0 + chunk], dtype=np.float32))
        stats = QueryBankStats(len(v), beta, TOP_K)
        for b0 in range(0, len(b), chunk):
            tile = b[b0:b0 + chunk] @ v.T
            stats.add(tile, 0)
            val, idx = tile.amax(1), tile.argmax(1)  # the first maximum within the tile
            better = val > top_val[b0:b0 + chunk]  # strictly: an equal score further right does not win
            top_val[b0:b0 + chunk] = torch.where(better, val, top_val[b0:b0 + chunk])
            top_idx[b0:b0 + chunk] = torch.where(better, idx + offset + g0, top_idx[b0:b0 + chunk])
        lse.append(stats.finish()[0].numpy().astype(np.float32))
    return BankStats(np.concatenate(lse) if lse else np.zeros(0, np.float32), top_val.numpy(), top_idx.numpy(), beta)
