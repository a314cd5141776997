"""Evaluate a head on one split of a cache: encode each side once, rank tile by tile, summarise.

Every head's score is a gated sum of per-expert dot products (see ``vtr.train.heads``), so captions and
videos are encoded once and the texts x videos score matrix is computed one tile at a time. It is never held
whole: memory is O(chunk^2 + M + N) for M captions and N videos, for raw scores, DSL and QB-Norm alike.

How the ranks are counted (``chunked_ranks``):

- ``metrics.plan_blocks`` sorts the captions by video and cuts the matrix into tiles of at most ``chunk``
  captions x ``chunk`` videos so that the diagonal tile (b, b) holds every true pair of its captions and every
  caption of its videos.
- The diagonal tiles come first. Each gives the thresholds: the (re-scored) score of each caption against its
  own video (T2V), and each video's score against its own caption group, the max over its captions (V2T).
- A rank is then a count over all tiles: T2V, the videos scoring >= the caption's threshold; V2T, the caption
  groups whose max score >= the video's threshold. The count includes the true candidate itself, so it is
  exactly ``metrics.TIE_RULE``. Only the tile's comparisons and one number per query are kept.
- DSL at inference normalises each video's column over ALL test captions (T2V) and each caption's row over all
  videos (V2T). Pass 1 over the tiles gathers both log-sum-exps (``_dsl_pass1``); pass 2 counts on
  ``S * exp(S - lse)``, both directions from one exp per score (``_Dsl``). Pass 2 reuses the tiles pass 1 kept
  within a memory budget (``_KeptTiles``) and scores the others again, so DSL costs one to two matrix products.
- QB-Norm: bank passes give each test video (T2V) and each test caption (V2T) its log-sum-exp over the query
  bank and whether it is in a bank query's top-1. Whether a query is normalised depends on its own top-1 over
  the whole gallery, known only at the end, so the raw and the normalised counts are both kept and each
  query takes one.

A tie stays a tie and counts against the model, as in ``metrics``: a re-scored value depends only on its score
and on its column's (row's) log-sum-exp, never on the tile it sits in. Every shift is one constant for the
whole matrix, the log-sum-exps are summed in float64 in one order for every row (column) and made equal where
they are the same numbers summed in another order (``rescore.snap_ties``), and QB-Norm compares in float64.
So two identical captions or videos, wherever their tiles, get bit-equal values. Compared with building the
whole matrix, only candidates within float32 rounding of each other can swap places. Scores that are NaN or
infinite are refused in every mode (``metrics.NONFINITE_SCORES``). docs/evaluation-ties.md has the details.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from vtr.eval.metrics import (DEFAULT_TILE, NONFINITE_SCORES, TIE_RULE, Blocks, check_every_video_captioned,
                              plan_blocks, retrieval_metrics)
from vtr.eval.report import RANDOM_CLIP_NOTE
from vtr.eval.rescore import SHARED_SHIFT_RANGE, QueryBankStats, dsl_direct, snap_ties
from vtr.records import CacheTensors
from vtr.train.heads import RetrievalHead, text_batch, video_batch

RESCORE = ("none", "dsl", "qbnorm")
DSL_MEMORY_MIB = 1024  # default budget for DSL's kept tiles: the whole matrix up to about 16k x 16k


@torch.no_grad()
def encode_all(head, data: CacheTensors, batch_size: int = 1024, device="cpu"):
    """Encode every caption and video of ``data``: returns (t [M, E, D], gate [M, E], v [N, E, D]) on ``device``."""
    head.eval()
    ts, gates, vs = [], [], []
    for i in range(0, len(data.text_video), batch_size):
        t, gate = head.encode_text(text_batch(data, np.arange(i, min(i + batch_size, len(data.text_video))), device))
        ts.append(t)
        gates.append(gate)
    for i in range(0, len(data.video_ids), batch_size):
        vs.append(head.encode_video(*video_batch(data, np.arange(i, min(i + batch_size, len(data.video_ids))), device)))
    if not ts or not vs:
        raise ValueError(f"nothing to encode: {len(data.text_video)} captions, {len(data.video_ids)} videos")
    return torch.cat(ts), torch.cat(gates), torch.cat(vs)


@torch.no_grad()
def score_matrix(head, t, gate, v, chunk: int = 4096) -> torch.Tensor:
    """Logits [M, N] = ``head.similarity`` of every caption against every video, chunked over text rows (on CPU)."""
    return torch.cat([head.similarity(t[i : i + chunk], gate[i : i + chunk], v).float().cpu()
                      for i in range(0, t.shape[0], chunk)])


class _Buffers:
    """Scratch tiles reused across tiles (allocating a fresh [chunk, chunk] tensor per op costs page faults)."""

    def __init__(self, device):
        self.device, self._store = device, {}

    def __call__(self, name: str, rows: int, cols: int, dtype=torch.float32) -> torch.Tensor:
        buf = self._store.get((name, dtype))
        if buf is None or buf.numel() < rows * cols:
            buf = self._store[name, dtype] = torch.empty(rows * cols, dtype=dtype, device=self.device)
        return buf[: rows * cols].view(rows, cols)


class TileScorer:
    """Scores of a block of captions against a block of videos (float32), as ``head.similarity`` gives them.

    A head that keeps ``RetrievalHead.similarity`` (every head in ``vtr.train.heads``) is scored with one
    matrix product, ``scale * <gate * t, v>`` over the experts' concatenated embeddings: the same gated sum of
    per-expert dot products, written into a reused buffer. A head with its own ``similarity`` is called as is.
    With ``cosine``, scores are divided by the logit scale (the range QB-Norm's beta is meant for). With
    ``defer_scale``, the one-product path leaves the scale out and ``alpha`` holds it: ``alpha * tile`` are
    the logits (DSL folds it into the op it needs anyway). ``alpha`` is 1 otherwise.

    The returned tile is overwritten by the next call.
    """

    def __init__(self, head, t: torch.Tensor, gate: torch.Tensor, v: torch.Tensor, *, cosine: bool = False,
                 defer_scale: bool = False):
        self.head, self.t, self.gate, self.v, self.cosine = head, t, gate, v, cosine
        self.scale = head.scale.detach().to(t.device)
        self.matmul = type(head).similarity is RetrievalHead.similarity
        self.defer = defer_scale and self.matmul and not cosine
        self.alpha = float(self.scale) if self.defer else 1.0
        if self.matmul:
            one_expert = t.shape[1] == 1 and bool((gate == 1).all())
            self._t = t[:, 0] if one_expert else (t * gate.unsqueeze(-1)).flatten(1)  # no copy for one expert
            self._v = v.flatten(1)
        self._buffers = _Buffers(t.device)

    def __call__(self, rows: slice, cols: slice, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tile's scores, written into ``out`` when given, else into the reused buffer."""
        if self.matmul:
            a, b = self._t[rows], self._v[cols]
            out = self._buffers("s", len(a), len(b)) if out is None else out
            torch.mm(a, b.T, out=out)
            if self.defer:
                return out
            out.mul_(self.scale)
        else:
            s = self.head.similarity(self.t[rows], self.gate[rows], self.v[cols]).float()
            out = s if out is None else out.copy_(s)
        return out.div_(self.scale) if self.cosine else out


class _KeptTiles:
    """A ``TileScorer`` that keeps the tiles it scores, up to ``budget`` bytes, and hands each out once more.

    DSL scores every tile twice, once per pass; kept tiles spare pass 2 the matrix product, the bulk of its
    time. A tile not kept on its first scoring is never kept later: the pool only fills. The tiles live in
    one pool allocated and zeroed up front: on the 2-core machine of bench/eval.py, page
    faults taken inside the matrix product made it up to 1.8 x slower, while zeroing first costs about a
    sixth of a product.
    """

    def __init__(self, score: TileScorer, budget: int, total: int):
        self.score, self.alpha = score, score.alpha
        self.pool = torch.zeros(min(budget, total) // 4, device=score.v.device)
        self.kept, self.used = {}, 0

    def __call__(self, rows: slice, cols: slice) -> torch.Tensor:
        kept = self.kept.pop((rows.start, cols.start), None)
        if kept is not None:
            return kept
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        size = shape[0] * shape[1]
        if self.used + size > len(self.pool):
            return self.score(rows, cols)
        out = self.pool[self.used : self.used + size].view(shape)
        self.kept[rows.start, cols.start] = s = self.score(rows, cols, out=out)
        self.used += size
        return s


def _check_tile(s: torch.Tensor) -> None:
    # One cheap reduction per tile; a non-finite sum (NaN, inf, or finite scores that overflow) triggers the exact
    # check.
    if not torch.isfinite(s.sum()) and not torch.isfinite(s).all():
        raise ValueError(NONFINITE_SCORES)


def _progress(total: int, desc: str, show: bool):
    return tqdm(total=total, desc=desc, unit="tile", leave=False, disable=None if show else True)


def _diagonal_first(n_blocks: int) -> Iterator[tuple[int, int]]:
    """Diagonal tiles (they set the thresholds), then the others row by row."""
    yield from ((b, b) for b in range(n_blocks))
    yield from ((r, c) for r in range(n_blocks) for c in range(n_blocks) if r != c)


def _row_major(n_blocks: int) -> Iterator[tuple[int, int]]:
    """Every tile row by row: each row block meets the column blocks in the same order, and vice versa."""
    yield from ((r, c) for r in range(n_blocks) for c in range(n_blocks))


def _tiles(score, blocks: Blocks, desc: str, show: bool, check: bool = True, order=_diagonal_first):
    """Yield (r, c, rows, cols, scores) for every non-empty tile in ``order``, non-finite scores refused
    (unless ``check`` is off: the caller checks, or an earlier pass over the same tiles did)."""
    with _progress(len(blocks) ** 2, desc, show) as bar:
        for r, c in order(len(blocks)):
            rows, cols = blocks.texts(r), blocks.videos(c)
            bar.update()
            if rows.start == rows.stop or cols.start == cols.stop:
                continue
            s = score(rows, cols)
            if check:
                _check_tile(s)
            yield r, c, rows, cols, s


class _Raw:
    """Rank raw scores. Variants rank ``t2v(...)`` and ``v2t(...)`` of each tile, written into ``out`` (of the
    variant's ``dtype``) or returned as is; ``begin`` sees the tile first."""

    dtype = torch.float32

    def begin(self, s, r, c, rows, cols, own, buffers):
        pass

    def t2v(self, s, rows, cols, out):
        return s

    v2t = t2v


@dataclass
class _DslPass1:
    """What pass 1 of DSL learns from the tiles. ``alpha * s`` are the logits of a tile ``s`` as scored."""

    lse_v: torch.Tensor  # [N] float64 log-sum-exp of each video's logits over all captions (``snap_ties``)
    lse_t: torch.Tensor  # [M] float64 log-sum-exp of each caption's logits over all videos
    shift: float  # the largest logit of the whole matrix (pass 2 keeps its factors in float32's range with it)
    bound: torch.Tensor  # max |s| over the matrix (0-dim tensor)
    alpha: float


class _Dsl(_Raw):
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

    def __init__(self, pass1: _DslPass1, n_texts: int, n_videos: int):
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


class _QbNormalised(_Raw):
    """QB-Norm's inverted softmax in log space, ``(beta * s - m) - r`` in float64 with the bank's ``lse = m + r``
    per video (T2V) or caption (V2T), as ``rescore.qbnorm`` computes it: the same value for the same score and
    statistics, and no float32 rounding of values near beta to merge or split ties."""

    dtype = torch.float64

    def __init__(self, beta, per_video, per_text):
        self.beta, (self.m_v, self.r_v), (self.m_t, self.r_t) = beta, per_video, per_text

    def t2v(self, s, rows, cols, out):
        return out.copy_(s).mul_(self.beta).sub_(self.m_v[cols]).sub_(self.r_v[cols])

    def v2t(self, s, rows, cols, out):
        return out.copy_(s).mul_(self.beta).sub_(self.m_t[rows, None]).sub_(self.r_t[rows, None])


class _Top1:
    """Each caption's top-1 video and each video's top-1 caption over the whole matrix, gathered tile by tile.

    Ties go to the lowest index in the unsorted matrix, as ``argmax`` over the full matrix does.
    """

    def __init__(self, blocks: Blocks, device):
        m, n = len(blocks.order), int(blocks.video_bounds[-1])
        self.order = torch.as_tensor(blocks.order, device=device)
        self.row_val = torch.full((m,), float("-inf"), device=device)
        self.row_idx = torch.zeros(m, dtype=torch.int64, device=device)
        self.col_val = torch.full((n,), float("-inf"), device=device)
        self.col_idx = torch.zeros(n, dtype=torch.int64, device=device)
        # Within a text block, is the original order increasing? Then the first maximum is the lowest index.
        self.monotone = [bool(np.all(np.diff(blocks.order[blocks.texts(b)]) > 0)) for b in range(len(blocks))]

    @staticmethod
    def _merge(val, idx, where, m, i):
        better = (m > val[where]) | ((m == val[where]) & (i < idx[where]))
        val[where] = torch.where(better, m, val[where])
        idx[where] = torch.where(better, i, idx[where])

    def update(self, s, rows, cols, block: int):
        # amax + argmax rather than max(dim): the latter is erratically slow on small tiles on a busy machine.
        m, a = s.amax(1), s.argmax(1)
        self._merge(self.row_val, self.row_idx, rows, m, a + cols.start)
        m, a = s.amax(0), s.argmax(0)
        ids = self.order[rows]
        if self.monotone[block]:
            i = ids[a]
        else:  # the lowest original index among the tied maxima
            i = torch.where(s == m, ids[:, None], torch.iinfo(torch.int64).max).amin(0)
        self._merge(self.col_val, self.col_idx, cols, m, i)


def _count_ranks(score, blocks: Blocks, variants, top1: _Top1 | None = None, progress: str = "", show=False,
                 check: bool = True):
    """Rank counts [variants, M] (sorted caption order) and [variants, N] for each variant's re-scoring."""
    m, n = len(blocks.order), int(blocks.video_bounds[-1])
    tv = torch.as_tensor(blocks.text_video)
    cnt_t = cnt_v = thr_t = thr_v = buffers = device = ones = None  # made on the device of the first tile
    for r, c, rows, cols, s in _tiles(score, blocks, progress, show, check):
        if cnt_t is None:
            device = s.device
            tv = tv.to(device)
            buffers = _Buffers(device)
            cnt_t = torch.zeros(len(variants), m, dtype=torch.int64, device=device)
            cnt_v = torch.zeros(len(variants), n, dtype=torch.int64, device=device)
            thr_t = [torch.empty(m, dtype=v.dtype, device=device) for v in variants]  # in each variant's dtype
            thr_v = [torch.empty(n, dtype=v.dtype, device=device) for v in variants]
            edge = int(max(np.diff(blocks.text_bounds).max(), np.diff(blocks.video_bounds).max()))
            ones = {v.dtype: torch.ones(edge, dtype=v.dtype, device=device) for v in variants}
        if top1 is not None:
            top1.update(s, rows, cols, r)
        nr, nc = s.shape
        own = (tv[rows] - cols.start) if r == c else None  # column of each caption's own video
        groups = tv[rows] - int(blocks.video_bounds[r])  # caption group (video) within block r
        n_groups = int(blocks.video_bounds[r + 1] - blocks.video_bounds[r])
        for k, variant in enumerate(variants):
            dtype = variant.dtype
            variant.begin(s, r, c, rows, cols, own, buffers)
            x = variant.t2v(s, rows, cols, buffers("x", nr, nc, dtype))
            if own is not None:
                thr_t[k][rows] = x[torch.arange(nr, device=device), own]
            # the 0/1 hits overwrite a variant's own buffer (one tile less to stream), never the scores s
            mask = buffers("mask", nr, nc, dtype) if x is s else x
            cnt_t[k, rows] += torch.ge(x, thr_t[k][rows, None], out=mask).sum(1).long()
            y = variant.v2t(s, rows, cols, buffers("x", nr, nc, dtype))
            if own is not None:  # each video's best own caption
                thr_v[k][cols] = torch.full((nc,), float("-inf"), dtype=dtype, device=device).scatter_reduce_(
                    0, own, y[torch.arange(nr, device=device), own], "amax")
            if blocks.max_group[r] > 1:  # group max over each video's captions first
                y = buffers("groups", n_groups, nc, dtype).fill_(float("-inf")).scatter_reduce_(
                    0, groups[:, None].expand(nr, nc), y, "amax")
            hits = torch.ge(y, thr_v[k][cols], out=buffers("mask", y.shape[0], nc, dtype) if y is s else y)
            cnt_v[k, cols] += torch.mv(hits.T, ones[dtype][: hits.shape[0]]).long()  # column sums; mv is the fast one
    return cnt_t, cnt_v


def _dsl_pass1(score, blocks: Blocks, m: int, n: int, show=False) -> _DslPass1:
    """Pass 1 of DSL: log-sum-exp over all captions for each video and over all videos for each caption, the
    largest logit and the bound on |s|. Non-finite scores are refused here, so pass 2 need not look again.

    Every term is ``exp(alpha s - c)`` with one shift c for the whole pass (the first tile's largest logit), so
    equal scores give equal terms in any tile. Each tile's row and column sums are taken in float64 and added up
    tile by tile in the same order for every row and column, then ``snap_ties`` makes equal the sums of the same
    numbers taken in another order. A row or column whose float32 terms left float32's range (overflow, or a
    sum so small that subnormal terms could matter) is summed again, alone, in float64 (``_exact_logsumexps``).
    """
    sum_v = sum_t = buffers = ones = shift = None
    high_all, bound = -math.inf, 0.0
    for r, c, rows, cols, s in _tiles(score, blocks, "DSL pass 1/2 (normalisers)", show, check=False,
                                      order=_row_major):
        if sum_v is None:
            device = s.device
            sum_v = torch.zeros(n, dtype=torch.float64, device=device)
            sum_t = torch.zeros(m, dtype=torch.float64, device=device)
            buffers = _Buffers(device)
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
            value[index] = _exact_logsumexps(getattr(score, "score", score), index, n if by_rows else m,
                                             int(np.diff(blocks.text_bounds).max()), score.alpha, by_rows)
            value = snap_ties(value)
        lse.append(value)
    alpha_high = float(torch.tensor(high_all, dtype=torch.float32) * score.alpha)
    return _DslPass1(lse[0], lse[1], alpha_high, torch.tensor(bound, device=sum_v.device), score.alpha)


def _exact_logsumexps(score, index: torch.Tensor, n_other: int, chunk: int, alpha: float, by_rows: bool):
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


def _bank_stats(score, n_bank: int, n_gallery: int, chunk: int, *, gallery_is_video: bool, beta, k, desc, show):
    """QB-Norm statistics (m, r, active) of a query bank against the test gallery, from tiles of ``score``
    (captions x videos): ``QueryBankStats.finish_parts``."""
    stats = buffers = None
    bank_blocks, gallery_blocks = range(0, n_bank, chunk), range(0, n_gallery, chunk)
    with _progress(len(bank_blocks) * len(gallery_blocks), desc, show) as bar:
        for b0 in bank_blocks:
            for g0 in gallery_blocks:
                bank, gallery = slice(b0, min(b0 + chunk, n_bank)), slice(g0, min(g0 + chunk, n_gallery))
                # Tiles are always captions x videos; the bank is on the rows of what the statistics see.
                tile = score(bank, gallery) if gallery_is_video else score(gallery, bank).T
                if stats is None:
                    stats, buffers = QueryBankStats(n_gallery, beta, k, tile.device), _Buffers(tile.device)
                stats.add(tile, g0, buffers("e", *tile.shape, dtype=torch.float64))
                bar.update()
    return stats.finish_parts()


@torch.no_grad()
def chunked_ranks(head, t, gate, v, text_video, *, rescore: str = "none", bank=None, chunk: int = DEFAULT_TILE,
                  beta: float = 20.0, k: int = 1, progress: bool = False,
                  dsl_memory_mib: float = DSL_MEMORY_MIB) -> tuple[np.ndarray, np.ndarray]:
    """1-based T2V ranks [M] and V2T ranks [N] of encoded captions ``(t, gate)`` against videos ``v``.

    The same ranks as building ``score_matrix``, re-scoring it (``rescore``: "none", "dsl" as ``dsl_t2v`` /
    ``dsl_v2t``, or "qbnorm" as ``qbnorm_t2v`` / ``qbnorm_v2t`` on cosine-scale scores) and ranking it with
    ``t2v_ranks`` / ``v2t_ranks``, but computed tile by tile (see the module docstring): memory
    O(chunk^2 + M + N). ``text_video[i]`` is caption i's video. ``bank`` is ``(t, gate, v)`` of the query bank
    (QB-Norm only): its captions are the T2V bank, its videos the V2T bank.

    DSL keeps up to ``dsl_memory_mib`` MiB of pass 1's tiles for pass 2 instead of scoring them again: the
    whole matrix when it fits (a 10k x 10k float32 matrix is 381 MiB), so DSL then costs one matrix product,
    not two. 0 recomputes every tile, for the least memory.
    """
    if rescore not in RESCORE:
        raise ValueError(f"rescore must be one of {RESCORE}, got {rescore!r}")
    n_texts, n_videos = t.shape[0], v.shape[0]
    text_video = np.asarray(text_video.cpu() if isinstance(text_video, torch.Tensor) else text_video)
    if len(text_video) != n_texts:
        raise ValueError(f"text_video must have one entry per caption ({n_texts}), got {len(text_video)}")
    blocks = plan_blocks(text_video, n_videos, chunk)
    check_every_video_captioned(text_video, n_videos)
    if not np.array_equal(blocks.order, np.arange(n_texts)):  # captions not grouped by video yet: sort once
        order = torch.as_tensor(blocks.order, device=t.device)
        t_sorted, gate_sorted = t[order], gate[order]
    else:
        t_sorted, gate_sorted = t, gate
    score = TileScorer(head, t_sorted, gate_sorted, v, cosine=rescore == "qbnorm", defer_scale=rescore == "dsl")
    big = len(blocks) ** 2 >= 16 and progress
    top1 = None
    if rescore == "none":
        variants = [_Raw()]
    elif rescore == "dsl":
        score = _KeptTiles(score, int(dsl_memory_mib * 2**20), n_texts * n_videos * 4)
        variants = [_Dsl(_dsl_pass1(score, blocks, n_texts, n_videos, big), n_texts, n_videos)]
    else:
        if bank is None:
            raise ValueError("rescore='qbnorm' needs a query bank: bank=(t, gate, v)")
        t_b, g_b, v_b = bank
        m_v, r_v, active_v = _bank_stats(TileScorer(head, t_b, g_b, v, cosine=True), t_b.shape[0], n_videos,
                                         chunk, gallery_is_video=True, beta=beta, k=k, desc="QB-Norm bank (T2V)",
                                         show=big)
        m_t, r_t, active_t = _bank_stats(TileScorer(head, t, gate, v_b, cosine=True), v_b.shape[0], n_texts,
                                         chunk, gallery_is_video=False, beta=beta, k=k, desc="QB-Norm bank (V2T)",
                                         show=big)
        order = torch.as_tensor(blocks.order, device=m_t.device)
        variants = [_Raw(), _QbNormalised(beta, (m_v, r_v), (m_t[order], r_t[order]))]
        top1 = _Top1(blocks, t.device)
    desc = {"none": "ranks", "dsl": "DSL pass 2/2 (ranks)", "qbnorm": "QB-Norm ranks"}[rescore]
    cnt_t, cnt_v = _count_ranks(score, blocks, variants, top1, desc, big, check=rescore != "dsl")
    if top1 is None:
        t2v, v2t = cnt_t[0], cnt_v[0]
    else:  # QB-Norm: a query is normalised only if its own top-1 is in the bank's activation set
        t2v = torch.where(active_v[top1.row_idx], cnt_t[1], cnt_t[0])
        v2t = torch.where(active_t[top1.col_idx], cnt_v[1], cnt_v[0])
    ranks_t2v = np.empty(n_texts, dtype=np.int64)
    ranks_t2v[blocks.order] = t2v.cpu().numpy()
    return ranks_t2v, v2t.cpu().numpy().astype(np.int64)


@torch.no_grad()
def evaluate(head, data: CacheTensors, *, split: str = "test", rescore: str = "none",
             bank: CacheTensors | None = None, bank_split: str = "train", cache_path: str = "",
             device="cpu", batch_size: int = 1024, chunk: int = DEFAULT_TILE, progress: bool = False,
             dsl_memory_mib: float = DSL_MEMORY_MIB) -> dict:
    """T2V and V2T retrieval metrics of ``head`` on ``data.select(split)``, as a JSON-ready report.

    ``rescore``: "none" ranks raw logits; "dsl" applies inference-time Dual Softmax (transductive);
    "qbnorm" applies QB-Norm with ``bank.select(bank_split)`` as query bank: its captions for T2V and its
    videos for V2T, encoded by the same head. QB-Norm runs on cosine-scale scores (logits divided by the
    head's logit scale), the range its beta=20 is meant for.

    Scores are ranked in tiles of at most ``chunk`` captions x ``chunk`` videos (``chunked_ranks``), so the
    full score matrix is never built; ``progress`` shows a bar on large splits. ``dsl_memory_mib``: see
    ``chunked_ranks``.
    """
    if rescore not in RESCORE:
        raise ValueError(f"rescore must be one of {RESCORE}, got {rescore!r}")
    if rescore == "qbnorm":
        if bank is None:
            raise ValueError("rescore='qbnorm' needs a query bank: pass bank= (the cache holding the training split)")
        if bank_split == split:
            raise ValueError(f"the query bank must not come from the evaluated split ({split!r})")
    test = data.select(split)
    n_texts, n_videos = len(test.text_video), len(test.video_ids)
    if n_texts == 0 or n_videos == 0:
        raise ValueError(f"split {split!r} is empty: {n_texts} captions, {n_videos} usable videos")

    head.eval()
    head.to(device)
    t, gate, v = encode_all(head, test, batch_size, device)
    notes, bank_emb = [], None
    if rescore == "dsl":
        notes.append("DSL at inference uses all test queries at once (transductive)")
    elif rescore == "qbnorm":
        b = bank.select(bank_split)
        if len(b.text_video) == 0 or len(b.video_ids) == 0:
            raise ValueError(f"query bank split {bank_split!r} is empty: {len(b.text_video)} captions, "
                             f"{len(b.video_ids)} usable videos")
        bank_emb = encode_all(head, b, batch_size, device)
        notes.append(f"QB-Norm (dynamic inverted softmax, beta=20, k=1) with a query bank of the {bank_split!r} "
                     f"split: {len(b.text_video)} captions (T2V), {len(b.video_ids)} videos (V2T)")
    t2v, v2t = chunked_ranks(head, t, gate, v, test.text_video, rescore=rescore, bank=bank_emb, chunk=chunk,
                             progress=progress, dsl_memory_mib=dsl_memory_mib)

    clip = data.attrs.get("clip_model", "")
    if str(clip).startswith("random:"):
        notes.append(RANDOM_CLIP_NOTE.format(model=clip))
    return {
        "model": head.name,
        "cache": cache_path,
        "split": split,
        "n_texts": n_texts,
        "n_videos": n_videos,
        "rescore": rescore,
        "transductive": rescore == "dsl",
        "clip": clip or None,
        "t2v": retrieval_metrics(t2v),
        "v2t": retrieval_metrics(v2t),
        "tie_rule": TIE_RULE,
        "notes": notes,
    }
