"""Dual Softmax (DSL) at inference, tile by tile, in two passes over the tiles.

DSL normalises each video's column over ALL test captions (T2V) and each caption's row over all videos (V2T),
so it is transductive. Pass 1 (``dsl_pass1``) gathers both log-sum-exps; pass 2 counts ranks on
``S * exp(S - lse)``, both directions from one exp per score (``DslValues``). Pass 2 reuses the tiles pass 1
kept within a memory budget (``tiles.KeptTiles``) and scores the others again, so DSL costs one to two matrix
products. Equal scores get bit-equal values in any tile: docs/evaluation-ties.md says how.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vtr.core.metrics import NONFINITE_SCORES, Blocks
from vtr.eval.rescore import SHARED_SHIFT_RANGE, dsl_direct, snap_ties
from vtr.eval.rescorers.base import RankJob, RankPlan, Rescorer, TileValues, register
from vtr.eval.tiles import Buffers, KeptTiles, row_major, tiles

DSL_MEMORY_MIB = 1024  # default budget for DSL's kept tiles: the whole matrix up to about 16k x 16k


@register
class Dsl(Rescorer):
    name = "dsl"
    label = "DSL"
    flag_help = "Dual Softmax at inference. Transductive: it uses all test queries at once."
    transductive = True
    defer_scale = True
    progress = "DSL pass 2/2 (ranks)"

    def __init__(self, dsl_memory_mib: float = DSL_MEMORY_MIB, **options):
        super().__init__(**options)
        self.memory_mib = dsl_memory_mib

    def plan(self, job: RankJob, score) -> RankPlan:
        n_texts, n_videos = job.t.shape[0], job.v.shape[0]
        score = KeptTiles(score, int(self.memory_mib * 2**20), n_texts * n_videos * 4)
        values = DslValues(dsl_pass1(score, job.blocks, n_texts, n_videos, job.show), n_texts, n_videos)
        return RankPlan(score, [values], checked=True)  # pass 1 refused non-finite scores

    def notes(self, bank_split=None, bank=None) -> list[str]:
        return ["DSL at inference uses all test queries at once (transductive)"]


@dataclass
class DslPass1:
    """What pass 1 of DSL learns from the tiles. ``alpha * s`` are the logits of a tile ``s`` as scored."""

    lse_v: torch.Tensor  # [N] float64 log-sum-exp of each video's logits over all captions (``snap_ties``)
    lse_t: torch.Tensor  # [M] float64 log-sum-exp of each caption's logits over all videos
    shift: float  # the largest logit of the whole matrix (pass 2 keeps its factors in float32's range with it)
    bound: torch.Tensor  # max |s| over the matrix (0-dim tensor)
    alpha: float


def dsl_pass1(score, blocks: Blocks, m: int, n: int, show=False) -> DslPass1:
    """Pass 1 of DSL: log-sum-exp over all captions for each video and over all videos for each caption, the
    largest logit and the bound on |s|. Non-finite scores are refused here, so pass 2 need not look again.

    Every term is ``exp(alpha s - c)`` with one shift c for the whole pass (the first tile's largest logit), so
    equal scores give equal terms in any tile. Each tile's row and column sums are taken in float64 and added up
    tile by tile in the same order for every row and column, then ``snap_ties`` makes equal the sums of the same
    numbers taken in another order. A row or column whose float32 terms left float32's range (overflow, or a
    sum so small that subnormal terms could matter) is summed again, alone, in float64 (``exact_logsumexps``).
    """
    sum_v = sum_t = buffers = ones = shift = None
    high_all, bound = -math.inf, 0.0
    for r, c, rows, cols, s in tiles(score, blocks, "DSL pass 1/2 (normalisers)", show, check=False,
                                     order=row_major):
        if sum_v is None:
            device = s.device
            sum_v = torch.zeros(n, dtype=torch.float64, device=device)
            sum_t = torch.zeros(m, dtype=torch.float64, device=device)
            buffers = Buffers(device)
            edge = int(max(np.diff(blocks.text_bounds).max(), np.diff(blocks.video_bounds).max()))
            ones = torch.ones(edge, dtype=torch.float64, device=device)
        low, high = (float(x) for x in torch.aminmax(s))  # NaN anywhere makes both NaN
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(NONFINITE_SCORES)
        if shift is None:
            shift = float(torch.tensor(high, dtype=torch.float32) * score.alpha)
        high_all, bound = max(high_all, high), max(bound, abs(low), abs(high))
        e = torch.add(-shift, s, alpha=score.alpha, out=buffers("e", *s.shape)).exp_()
        e = buffers("e64", *s.shape, dtype=torch.float64).copy_(e)  # float64 sums by mv: the fast reduction
        sum_v[cols] += torch.mv(e.T, ones[: e.shape[0]])
        sum_t[rows] += torch.mv(e, ones[: e.shape[1]])
    lse = []
    for total, n_terms, by_rows in ((sum_v, m, False), (sum_t, n, True)):
        value = snap_ties(total.log() + shift)
        # Sums below n * 2^-100 may hold subnormal terms (float32's normal range ends at 2^-126).
        redo = ~(value >= shift + math.log(n_terms) - 100 * math.log(2)) | ~torch.isfinite(value)
        if redo.any():
            index = redo.nonzero().squeeze(1)
            value[index] = exact_logsumexps(getattr(score, "score", score), index, n if by_rows else m,
                                            int(np.diff(blocks.text_bounds).max()), score.alpha, by_rows)
            value = snap_ties(value)
        lse.append(value)
    alpha_high = float(torch.tensor(high_all, dtype=torch.float32) * score.alpha)
    return DslPass1(lse[0], lse[1], alpha_high, torch.tensor(bound, device=sum_v.device), score.alpha)


def exact_logsumexps(score, index: torch.Tensor, n_other: int, chunk: int, alpha: float, by_rows: bool):
    """float64 log-sum-exp of ``alpha * s`` over whole caption rows (``by_rows``) or video columns ``index``,
    each shifted by its own exact maximum: for the rare few whose pass-1 terms left float32's range."""
    chunk = max(chunk, 1)
    out = []
    for i0 in range(0, len(index), chunk):
        idx = index[i0 : i0 + chunk]

        def logits():
            for o0 in range(0, n_other, chunk):
                other = slice(o0, min(o0 + chunk, n_other))
                s = score(idx, other) if by_rows else score(other, idx).T
                yield s.double() * alpha

        top = torch.stack([x.amax(1) for x in logits()]).amax(0)
        total = sum(torch.exp(x - top[:, None]).sum(1) for x in logits())
        out.append(top + total.log())
    return torch.cat(out)


class DslValues(TileValues):
    """Inference-time DSL (``dsl_t2v``, ``dsl_v2t``) with one exp per score.

    T2V ranks ``x = s * exp(alpha s - lse_v[j])`` and V2T ``y = s * exp(alpha s - lse_t[i])``
    (``rescore.dsl_direct``): DSL over the constants alpha * M and alpha * N, which leave every order alone. x is
    computed as is, and y from it: ``y = x * g[j] * f[i]`` with ``g = exp(lse_v - C)``, ``f = exp(C - lse_t)``
    computed once per video and caption, C the largest logit of the whole matrix. Within a caption's row (T2V)
    x depends only on the score and its video's lse, and within a video's column (V2T) y only on the score and
    its caption's lse, whatever the tile: equal scores against equal lse (a duplicate caption or video) stay
    exactly equal.

    y is the direct form up to rounding unless x is subnormal, and then, when ``C - lse <= SHARED_SHIFT_RANGE``
    (30) for its video and caption, it is below ``max(S, 1) * M * e^-57`` in magnitude (S = max |s|, M captions).
    So a video or caption whose lse is more than 30 below C is computed directly (V2T), and so is, in every
    tile, a video whose own V2T score is below ``max(S, 1) * M * e^-50`` in magnitude, and a caption whose own
    T2V score is below ``max(S, 1) * e^-50``: the direct form of such a caption's row (video's column) is scaled
    by one constant per row (column), ``exp(-k)`` with k its own log-weight, so that its own value is about its
    score and nothing near it underflows (a positive factor leaves its order alone). Every other comparison
    with a threshold then falls on the same side as the direct form's.
    """

    def __init__(self, pass1: DslPass1, n_texts: int, n_videos: int):
        self.alpha, shift = pass1.alpha, pass1.shift
        self.lse_v, self.lse_t = pass1.lse_v.float(), pass1.lse_t.float()
        self.up_v = torch.exp(pass1.lse_v - shift).float()
        self.down_t = torch.exp(shift - pass1.lse_t).float()
        self.far_v = shift - pass1.lse_v > SHARED_SHIFT_RANGE
        self.far_t = shift - pass1.lse_t > SHARED_SHIFT_RANGE
        self.tiny_t = pass1.bound.clamp(min=1.0) * math.exp(-50.0)
        self.tiny_v = self.tiny_t * n_texts
        self.direct_t = torch.zeros(n_texts, dtype=torch.bool, device=self.lse_t.device)
        self.direct_v = torch.zeros(n_videos, dtype=torch.bool, device=self.lse_v.device)
        self.k_t = torch.zeros(n_texts, device=self.lse_t.device)  # the scaling log-weights of direct rows
        self.k_v = torch.zeros(n_videos, device=self.lse_v.device)

    def begin(self, s, r, c, rows, cols, own, buffers):
        self.tile_lse_v, self.tile_lse_t = lse_v, lse_t = self.lse_v[cols], self.lse_t[rows]
        self.x = dsl_direct(s, lse_v, self.alpha, out=buffers("p", *s.shape))
        self.y = torch.mul(self.x, self.up_v[cols], out=buffers("q", *s.shape)).mul_(self.down_t[rows, None])
        self.far_cols = self.far_v[cols].nonzero().squeeze(1)
        self.far_rows = self.far_t[rows].nonzero().squeeze(1)
        if own is not None:  # a diagonal tile: which captions and videos to rank with the (scaled) direct form
            s_own = s[torch.arange(len(own), device=s.device), own]
            x_own = dsl_direct(s_own, lse_v[own], self.alpha)
            self.direct_t[rows] = x_own.abs() < self.tiny_t
            self.k_t[rows] = torch.add(-lse_v[own], s_own, alpha=self.alpha)
            y_own = dsl_direct(s_own, lse_t, self.alpha)
            best = torch.full((s.shape[1],), float("-inf"), device=s.device).scatter_reduce_(0, own, y_own, "amax")
            self.direct_v[cols] = best.abs() < self.tiny_v
            self.k_v[cols] = torch.full((s.shape[1],), float("-inf"), device=s.device).scatter_reduce_(
                0, own, torch.add(-lse_t, s_own, alpha=self.alpha), "amax")

    def t2v(self, s, rows, cols, out):
        x = self.x
        direct = self.direct_t[rows].nonzero().squeeze(1)
        if len(direct):
            x[direct] = dsl_direct(s[direct], self.tile_lse_v + self.k_t[rows][direct, None], self.alpha)
        return x

    def v2t(self, s, rows, cols, out):
        y = self.y
        if len(self.far_rows):
            far = self.far_rows
            y[far] = dsl_direct(s[far], self.tile_lse_t[far, None], self.alpha)
        if len(self.far_cols):
            far = self.far_cols
            y[:, far] = dsl_direct(s[:, far], self.tile_lse_t[:, None], self.alpha)
        direct = self.direct_v[cols].nonzero().squeeze(1)
        if len(direct):
            y[:, direct] = dsl_direct(s[:, direct], self.tile_lse_t[:, None] + self.k_v[cols][direct], self.alpha)
        return y
