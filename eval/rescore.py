"""Inference-time re-scoring of a similarity matrix: Dual Softmax (DSL) and QB-Norm.

Both functions take a queries x gallery matrix and return one of the same shape whose rows are ranked in
place of the raw scores. Helpers named ``*_t2v`` / ``*_v2t`` take the usual texts x videos matrix and
return texts x videos, so ``metrics.t2v_ranks`` / ``metrics.v2t_ranks`` apply unchanged (V2T still takes
the max over a video's captions, now on the re-scored values). These whole-matrix forms are the definitions.

``vtr.eval.rescorers`` applies the same re-scoring one tile at a time, with the pieces below: ``snap_ties``,
``dsl_direct``, and ``QueryBankStats``, which ``qbnorm`` itself uses, so both gather the bank's statistics the
same way. DSL's formula is training's (``vtr.train.losses.dual_softmax``) with a tie-safe softmax.

A tie stays a tie: the re-scored value of a score depends only on that score and its column's (or row's)
log-sum-exp, and two columns holding the same numbers, in any order, get the same log-sum-exp (``snap_ties``).
The definitions are computed in float64 and returned in float64 (see docs/evaluation-ties.md).
"""
from __future__ import annotations

from typing import Iterable

import torch

from vtr.core.metrics import require_finite
from vtr.train.losses import dual_softmax

BANK_CHUNK = 4096
# Sums of the same n terms in two orders differ by float64 rounding, about sqrt(n) * 2^-53; values closer than
# this (relative) are taken as one value. It is far below float32's resolution (2^-24) of the scores themselves,
# and below what tells apart sums that differ by a term e^-20 (QB-Norm's beta on cosines one step apart).
TIE_TOLERANCE = 2.0 ** -40


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(x).float()


def _finite(x) -> torch.Tensor:
    """``x`` as a float32 tensor; ValueError when it holds NaN or an infinity (ranks would be undefined)."""
    s = _as_tensor(x)
    require_finite(s)
    return s


def snap_ties(values: torch.Tensor, rel: float = TIE_TOLERANCE) -> torch.Tensor:
    """``values`` in float64, with each run of sorted neighbours closer than ``rel * max(1, |v|)`` set to the
    run's smallest value.

    A log-sum-exp over the same numbers in another order (two identical captions in different tiles, two rows
    that are permutations of each other) comes out a few float64 roundings apart; this makes them equal, so
    equal inputs keep equal re-scored values. Any two values within the tolerance end up in the same run.
    """
    v = values.double()
    if v.numel() < 2:
        return v.clone()
    ordered, order = torch.sort(v)
    gap = ordered[1:] - ordered[:-1]
    close = (gap <= rel * ordered[1:].abs().clamp(min=1.0)) & torch.isfinite(ordered[1:])  # infinities stay
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=v.device), ~close])
    first = starts.nonzero().squeeze(1)
    out = torch.empty_like(v)
    out[order] = ordered[first][starts.cumsum(0) - 1]
    return out


def logsumexp_tie_safe(x: torch.Tensor, dim: int) -> torch.Tensor:
    """float64 ``logsumexp(x, dim)``, each slice shifted by its own (exact) maximum, then ``snap_ties``: slices
    holding the same numbers in any order get bit-equal results."""
    x = x.double()
    m = x.amax(dim, keepdim=True)
    return snap_ties(m.squeeze(dim) + torch.exp(x - m).sum(dim).log())


def dsl(sim, temperature: float = 1.0) -> torch.Tensor:
    """Dual Softmax at inference, on a queries x gallery matrix S:

        S' = S * softmax(S / temperature, dim=0) * S.shape[0]

    The softmax runs over the queries for each gallery item, so a "hub" item that scores high against
    every query has its prior spread thin and is demoted. The factor S.shape[0] only rescales.

    Transductive: every query's score depends on all the other test queries, so results are not those
    of a system answering one query at a time. Reports must say so.

    Training's formula (``dual_softmax``), computed and returned in float64 with the softmax taken as
    ``exp(S / temperature - lse)``, each column's lse from ``logsumexp_tie_safe``: equal scores in columns
    holding the same numbers stay equal. NaN or infinite scores raise ValueError.
    """
    return dual_softmax(_finite(sim).double(), temperature, softmax=_tie_safe_softmax)


def _tie_safe_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 whose columns holding the same numbers, in any order, get bit-equal normalisers."""
    return torch.exp(logits - logsumexp_tie_safe(logits, 0))


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


# Chunked DSL (``vtr.eval.rescorers.dsl.DslValues``) derives V2T's values from T2V's through per-video and per-caption
# factors shifted by C, the matrix's largest logit. A video or caption whose lse is more than SHARED_SHIFT_RANGE
# below C is computed directly, so no value that matters comes near float32's underflow at exp(-87).
SHARED_SHIFT_RANGE = 30.0


class QueryBankStats:
    """QB-Norm's two statistics of a query bank against a gallery, gathered from blocks of bank scores.

    - ``lse[g] = logsumexp_b(beta * s[b, g])``: the log denominator of the inverted softmax, kept as
      ``m[g] + r[g]`` with ``m[g] = beta * max_b s[b, g]`` (exact) and ``r[g]`` the log of the sum of
      ``exp(beta * s[b, g] - m[g])``, in float64 and through ``snap_ties``: two gallery items whose bank scores
      are the same numbers, or the same numbers plus a constant, get bit-equal ``r``;
    - ``active[g]``: gallery item g is in the top-k of at least one bank query (the activation set).

    Feed blocks with ``add(block, col0)``: a block holds the scores of some bank queries against gallery
    items ``col0 .. col0 + block.shape[1]``. A bank query's top-k needs its whole row, so the blocks of one
    group of bank rows must come as one sweep over the gallery, the first with ``col0 = 0``; a block with
    ``col0 = 0`` starts the next group. Ties in the top-1 go to the lowest gallery index (as ``argmax``);
    for k > 1 ties are broken as ``torch.topk`` breaks them. NaN or infinite scores raise ValueError.
    """

    def __init__(self, n_gallery: int, beta: float = 20.0, k: int = 1, device="cpu"):
        if not 1 <= k <= n_gallery:
            raise ValueError(f"k must be in [1, {n_gallery}], got {k}")
        self.n_gallery, self.beta, self.k = n_gallery, beta, k
        self._max = torch.full((n_gallery,), float("-inf"), dtype=torch.float64, device=device)
        self._sum = torch.zeros(n_gallery, dtype=torch.float64, device=device)  # of exp(beta * s - _max)
        self.active = torch.zeros(n_gallery, dtype=torch.bool, device=device)
        self.n_bank = 0
        self._top_val = self._top_idx = None  # running top-k of the current group of bank rows

    def add(self, block: torch.Tensor, col0: int = 0, buffer: torch.Tensor | None = None) -> None:
        """Fold in one block; ``buffer``, a float64 tensor of at least the block's size, spares an allocation."""
        if block.ndim != 2 or col0 < 0 or col0 + block.shape[1] > self.n_gallery:
            raise ValueError(f"bank scores must have {self.n_gallery} gallery columns, got shape "
                             f"{tuple(block.shape)} at column {col0}")
        if len(block) == 0:
            return
        require_finite(block)
        if col0 == 0:
            self._close_rows()
            self.n_bank += len(block)
        elif self._top_val is None or len(self._top_val) != len(block):
            raise ValueError("bank blocks must sweep the gallery from column 0 for each group of bank rows")
        cols = slice(col0, col0 + block.shape[1])
        if buffer is None or buffer.dtype != torch.float64 or buffer.numel() < block.numel():
            buffer = torch.empty(block.numel(), dtype=torch.float64, device=block.device)
        z = buffer.view(-1)[: block.numel()].view(block.shape).copy_(block).mul_(self.beta)  # exact for beta=20
        old = self._max[cols]
        new = torch.maximum(old, z.amax(0))
        self._sum[cols] = self._sum[cols] * torch.exp(old - new) + z.sub_(new).exp_().sum(0)
        self._max[cols] = new
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

    def finish_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(m, r, active): ``lse = m + r`` in the tie-keeping split (see the class docstring), float64."""
        self._close_rows()
        if self.n_bank == 0:
            raise ValueError("the query bank is empty")
        return self._max, snap_ties(self._sum.log()), self.active

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lse [n_gallery] float64, active [n_gallery] bool) once every bank block has been added."""
        m, r, active = self.finish_parts()
        return m + r, active


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

    Returned in float64, the normalised rows as ``(beta * s - m) - r`` (``QueryBankStats``): float32 would
    round values near 60 to steps of 4e-6, merging and splitting ties. NaN or infinite scores raise ValueError.
    """
    s = _finite(sim)
    if s.ndim != 2:
        raise ValueError(f"sim must be 2-D (queries x gallery), got shape {tuple(s.shape)}")
    stats = QueryBankStats(s.shape[1], beta, k)
    for block in _bank_chunks(bank_sim, chunk):
        if block.ndim != 2 or block.shape[1] != s.shape[1]:
            raise ValueError(f"bank scores must have {s.shape[1]} gallery columns, got shape {tuple(block.shape)}")
        stats.add(block)
    m, r, active = stats.finish_parts()
    s = s.double()
    normalised = (beta * s - m) - r
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
