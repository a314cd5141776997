"""Inference-time re-scoring of a similarity matrix: Dual Softmax (DSL) and QB-Norm.

Both functions take a queries x gallery matrix and return one of the same shape whose rows are ranked in
place of the raw scores. Helpers named ``*_t2v`` / ``*_v2t`` take the usual texts x videos matrix and
return texts x videos, so ``metrics.t2v_ranks`` / ``metrics.v2t_ranks`` apply unchanged (V2T still takes
the max over a video's captions, now on the re-scored values). These whole-matrix forms are the definitions.

``vtr.eval.evaluate`` applies the same re-scoring one tile at a time, with the pieces below: running
log-sum-exps (``tile_logsumexps``, ``RunningLogSumExp``), ``dsl_direct``, and ``QueryBankStats``, which
``qbnorm`` itself uses, so both gather the bank's statistics the same way.
"""
from __future__ import annotations

import math
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


def block_logsumexp(x: torch.Tensor, dim: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.logsumexp(x, dim)`` with its one [rows, cols] temporary written into ``buffer`` when given.

    Shifted by the maximum along ``dim`` so it cannot overflow; a slice that is all -inf gives -inf.
    """
    m = x.amax(dim, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # all -inf (or +inf) slices: avoid inf - inf
    e = torch.sub(x, m, out=buffer[: x.shape[0], : x.shape[1]] if buffer is not None else None).exp_()
    return e.sum(dim).log_().add_(m.squeeze(dim))


# Chunked DSL shares one shift per tile, c = its maximum logit: pass 1 takes both the row and the column sums
# from one exp(s - c), and pass 2 both directions' weights. A row or column more than SHARED_SHIFT_RANGE
# below c is redone with its own shift, so no term that matters comes near float32's underflow at exp(-87).
SHARED_SHIFT_RANGE = 30.0


def tile_logsumexps(s: torch.Tensor, buffer: torch.Tensor | None = None, *, alpha: float = 1.0,
                    shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``logsumexp(alpha * s, 0)``, ``logsumexp(alpha * s, 1)``) of a tile with one exp per element, not two.

    ``shift`` is ``alpha * s.max()`` when the caller has it already; ``alpha`` turns ``s`` into logits.
    """
    c = alpha * s.max() if shift is None else shift
    if not torch.isfinite(c):
        logits = s * alpha
        return block_logsumexp(logits, 0, buffer), block_logsumexp(logits, 1, buffer)
    e = torch.add(-c, s, alpha=alpha, out=buffer[: s.shape[0], : s.shape[1]] if buffer is not None else None).exp_()
    col_sum, row_sum = e.sum(0), e.sum(1)
    floor = math.exp(-SHARED_SHIFT_RANGE)
    low_cols = (col_sum < floor).nonzero().squeeze(1)
    low_rows = (row_sum < floor).nonzero().squeeze(1)
    per_col, per_row = col_sum.log_().add_(c), row_sum.log_().add_(c)
    if len(low_cols):
        per_col[low_cols] = block_logsumexp(s[:, low_cols] * alpha, 0)
    if len(low_rows):
        per_row[low_rows] = block_logsumexp(s[low_rows] * alpha, 1)
    return per_col, per_row


class RunningLogSumExp:
    """``log(sum(exp(x)))`` per index over a stream of blocks, so the blocks never have to be held together."""

    def __init__(self, n: int, device="cpu"):
        self.value = torch.full((n,), float("-inf"), device=device)

    def add(self, index: slice, block_value: torch.Tensor) -> None:
        """Fold in the log-sum-exp of one more block of terms for the indices ``index``."""
        self.value[index] = torch.logaddexp(self.value[index], block_value)


class QueryBankStats:
    """QB-Norm's two statistics of a query bank against a gallery, gathered from blocks of bank scores.

    - ``lse[g] = logsumexp_b(beta * s[b, g])``: the log denominator of the inverted softmax;
    - ``active[g]``: gallery item g is in the top-k of at least one bank query (the activation set).

    Feed blocks with ``add(block, col0)``: a block holds the scores of some bank queries against gallery
    items ``col0 .. col0 + block.shape[1]``. A bank query's top-k needs its whole row, so the blocks of one
    group of bank rows must come as one sweep over the gallery, the first with ``col0 = 0``; a block with
    ``col0 = 0`` starts the next group. Ties in the top-1 go to the lowest gallery index (as ``argmax``);
    for k > 1 ties are broken as ``torch.topk`` breaks them.
    """

    def __init__(self, n_gallery: int, beta: float = 20.0, k: int = 1, device="cpu"):
        if not 1 <= k <= n_gallery:
            raise ValueError(f"k must be in [1, {n_gallery}], got {k}")
        self.n_gallery, self.beta, self.k = n_gallery, beta, k
        self._lse = RunningLogSumExp(n_gallery, device)
        self.active = torch.zeros(n_gallery, dtype=torch.bool, device=device)
        self.n_bank = 0
        self._top_val = self._top_idx = None  # running top-k of the current group of bank rows

    def add(self, block: torch.Tensor, col0: int = 0, buffer: torch.Tensor | None = None) -> None:
        if block.ndim != 2 or col0 < 0 or col0 + block.shape[1] > self.n_gallery:
            raise ValueError(f"bank scores must have {self.n_gallery} gallery columns, got shape "
                             f"{tuple(block.shape)} at column {col0}")
        if len(block) == 0:
            return
        if col0 == 0:
            self._close_rows()
            self.n_bank += len(block)
        elif self._top_val is None or len(self._top_val) != len(block):
            raise ValueError("bank blocks must sweep the gallery from column 0 for each group of bank rows")
        cols = slice(col0, col0 + block.shape[1])
        out = buffer[: block.shape[0], : block.shape[1]] if buffer is not None else None
        scaled = torch.mul(block, self.beta, out=out)
        self._lse.add(cols, block_logsumexp(scaled, 0, buffer))
        self._merge_top(block, col0)

    def _merge_top(self, block: torch.Tensor, col0: int) -> None:
        k = min(self.k, block.shape[1])
        if self.k == 1:
            val, idx = block.amax(1, keepdim=True), block.argmax(1, keepdim=True)  # the first maximum
        else:
            val, idx = block.topk(k, dim=1)
        idx = idx + col0
        if self._top_val is None or col0 == 0:
            self._top_val, self._top_idx = val, idx
        elif self.k == 1:
            better = val > self._top_val  # an equal score further right does not replace the first maximum
            self._top_val = torch.where(better, val, self._top_val)
            self._top_idx = torch.where(better, idx, self._top_idx)
        else:
            val, idx = torch.cat([self._top_val, val], 1), torch.cat([self._top_idx, idx], 1)
            top = val.topk(min(self.k, val.shape[1]), dim=1)
            self._top_val, self._top_idx = top.values, idx.gather(1, top.indices)

    def _close_rows(self) -> None:
        if self._top_idx is not None:
            self.active[self._top_idx.flatten()] = True
        self._top_val = self._top_idx = None

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lse [n_gallery], active [n_gallery] bool) once every bank block has been added."""
        self._close_rows()
        if self.n_bank == 0:
            raise ValueError("the query bank is empty")
        return self._lse.value, self.active


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
      Top-1 ties go to the lowest gallery index, as ``argmax`` does.

    Defaults beta=20, k=1 are the paper's. beta is an inverse temperature for cosine-scale scores, so
    pass scores in that range (divide logits by the model's logit scale). Not transductive: only the
    bank, never the other test queries, affects a query's scores.
    """
    s = _as_tensor(sim)
    if s.ndim != 2:
        raise ValueError(f"sim must be 2-D (queries x gallery), got shape {tuple(s.shape)}")
    stats = QueryBankStats(s.shape[1], beta, k)
    for block in _bank_chunks(bank_sim, chunk):
        if block.ndim != 2 or block.shape[1] != s.shape[1]:
            raise ValueError(f"bank scores must have {s.shape[1]} gallery columns, got shape {tuple(block.shape)}")
        stats.add(block)
    lse, active = stats.finish()
    normalised = beta * s - lse
    use = active[s.argmax(dim=1)]  # rows whose top-1 gallery item is in the activation set
    return torch.where(use[:, None], normalised, s)


def dsl_direct(s: torch.Tensor, lse: torch.Tensor, alpha: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """``s * exp(alpha * s - lse)``: inference-time DSL of logits ``alpha * s`` divided by ``alpha * n``.

    ``lse`` (broadcast against ``s``) is the log-sum-exp of the whole matrix of logits along the softmax's
    dimension, and ``n`` its length. Dividing by the constant ``alpha * n`` leaves every order as it is, so
    this ranks as the matching part of ``dsl`` (temperature 1) does, up to float rounding.
    """
    out = torch.add(-lse, s, alpha=alpha, out=out)
    return out.exp_().mul_(s)


def qbnorm_t2v(sim, bank_sim, beta: float = 20.0, k: int = 1) -> torch.Tensor:
    """QB-Norm for text-to-video: ``sim`` texts x videos, ``bank_sim`` bank captions x the same videos."""
    return qbnorm(sim, bank_sim, beta, k)


def qbnorm_v2t(sim, bank_sim, beta: float = 20.0, k: int = 1) -> torch.Tensor:
    """QB-Norm for video-to-text: queries are the videos, the gallery the test captions.

    ``sim`` is texts x videos; ``bank_sim`` is bank videos x the same test captions (or row blocks of it).
    Returns texts x videos, ready for ``v2t_ranks``.
    """
    return qbnorm(_as_tensor(sim).T, bank_sim, beta, k).T
