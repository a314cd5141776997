"""Inference-time re-scoring of a similarity matrix: Dual Softmax (DSL) and QB-Norm.

Both functions take a queries x gallery matrix and return one of the same shape whose rows are ranked in
place of the raw scores. Helpers named ``*_t2v`` / ``*_v2t`` take the usual texts x videos matrix and
return texts x videos, so ``metrics.t2v_ranks`` / ``metrics.v2t_ranks`` apply unchanged (V2T still takes
the max over a video's captions, now on the re-scored values).
"""
from __future__ import annotations

from typing import Iterable

import torch

BANK_CHUNK = 4096


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(x).float()


def dsl(sim, temperature: float = 1.0) -> torch.Tensor:
    """Dual Softmax at inference, on a queries x gallery matrix S:

        S' = S * softmax(S / temperature, dim=0) * S.shape[0]

    The softmax runs over the queries for each gallery item, so a "hub" item that scores high against
    every query has its prior spread thin and is demoted. The factor S.shape[0] only rescales.

    Transductive: every query's score depends on all the other test queries, so results are not those
    of a system answering one query at a time. Reports must say so.
    """
    s = _as_tensor(sim)
    return s * torch.softmax(s / temperature, dim=0) * s.shape[0]


def dsl_t2v(sim, temperature: float = 1.0) -> torch.Tensor:
    """DSL for text-to-video on a texts x videos matrix (softmax over texts for each video)."""
    return dsl(sim, temperature)


def dsl_v2t(sim, temperature: float = 1.0) -> torch.Tensor:
    """DSL for video-to-text: applied to S^T (videos x texts, softmax over videos for each text).

    Returns the result transposed back to texts x videos, ready for ``v2t_ranks``.
    """
    return dsl(_as_tensor(sim).T, temperature).T


def _bank_chunks(bank_sim, chunk: int) -> Iterable[torch.Tensor]:
    if isinstance(bank_sim, torch.Tensor) or hasattr(bank_sim, "__array__"):
        bank_sim = _as_tensor(bank_sim)
        if bank_sim.ndim != 2:
            raise ValueError(f"bank_sim must be 2-D (bank queries x gallery), got shape {tuple(bank_sim.shape)}")
        return (bank_sim[i : i + chunk] for i in range(0, bank_sim.shape[0], chunk))
    return (_as_tensor(c) for c in bank_sim)


def qbnorm(sim, bank_sim, beta: float = 20.0, k: int = 1, chunk: int = BANK_CHUNK) -> torch.Tensor:
    """Querybank Normalisation with the Dynamic Inverted Softmax (Bogolin et al., CVPR 2022).

    ``sim`` [n_query, n_gallery]; ``bank_sim`` [n_bank, n_gallery] holds the scores of a query bank
    (training-split queries, never test ones) against the same gallery. It may also be an iterable of
    row blocks, so the bank matrix never has to exist whole.

    - Inverted softmax: IS(q, g) = exp(beta * s_qg) / sum_b exp(beta * s_bg). It is computed in log space,
      beta * s_qg - logsumexp_b(beta * s_bg), which ranks identically and cannot overflow. A gallery
      item that is close to many bank queries (a hub) gets a large denominator and is demoted.
    - Dynamic: the activation set A holds the gallery items in the top-k of at least one bank query. A
      query row is normalised only if its own top-1 gallery item is in A; otherwise it is kept as is.

    Defaults beta=20, k=1 are the paper's. beta is an inverse temperature for cosine-scale scores, so
    pass scores in that range (divide logits by the model's logit scale). Not transductive: only the
    bank, never the other test queries, affects a query's scores.
    """
    s = _as_tensor(sim)
    if s.ndim != 2:
        raise ValueError(f"sim must be 2-D (queries x gallery), got shape {tuple(s.shape)}")
    n_gallery = s.shape[1]
    if not 1 <= k <= n_gallery:
        raise ValueError(f"k must be in [1, {n_gallery}], got {k}")

    # One pass over the bank: running logsumexp over bank rows, and the activation set.
    lse = torch.full((n_gallery,), float("-inf"))
    active = torch.zeros(n_gallery, dtype=torch.bool)
    n_bank = 0
    for block in _bank_chunks(bank_sim, chunk):
        if block.ndim != 2 or block.shape[1] != n_gallery:
            raise ValueError(f"bank scores must have {n_gallery} gallery columns, got shape {tuple(block.shape)}")
        if len(block) == 0:
            continue
        n_bank += len(block)
        lse = torch.logaddexp(lse, torch.logsumexp(beta * block, dim=0))
        active[block.topk(k, dim=1).indices.flatten()] = True
    if n_bank == 0:
        raise ValueError("the query bank is empty")

    normalised = beta * s - lse
    use = active[s.argmax(dim=1)]  # rows whose top-1 gallery item is in the activation set
    return torch.where(use[:, None], normalised, s)


def qbnorm_t2v(sim, bank_sim, beta: float = 20.0, k: int = 1) -> torch.Tensor:
    """QB-Norm for text-to-video: ``sim`` texts x videos, ``bank_sim`` bank captions x the same videos."""
    return qbnorm(sim, bank_sim, beta, k)


def qbnorm_v2t(sim, bank_sim, beta: float = 20.0, k: int = 1) -> torch.Tensor:
    """QB-Norm for video-to-text: queries are the videos, the gallery the test captions.

    ``sim`` is texts x videos; ``bank_sim`` is bank videos x the same test captions (or row blocks of it).
    Returns texts x videos, ready for ``v2t_ranks``.
    """
    return qbnorm(_as_tensor(sim).T, bank_sim, beta, k).T
