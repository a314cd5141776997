"""QB-Norm (dynamic inverted softmax, Bogolin et al. 2022) tile by tile, with a query bank.

Bank passes give each test video (T2V) and each test caption (V2T) its log-sum-exp over the query bank and
whether it is in a bank query's top-1 (``rescore.QueryBankStats``). Whether a query is normalised depends on
its own top-1 over the whole gallery, known only at the end, so the raw and the normalised counts are both
kept and each query takes one. Normalised values are compared in float64 (docs/evaluation-ties.md).
"""
from __future__ import annotations

import numpy as np
import torch

from vtr.core.metrics import Blocks
from vtr.eval.rescore import QueryBankStats
from vtr.eval.rescorers.base import RankJob, RankPlan, Rescorer, TileValues, register
from vtr.eval.tiles import Buffers, TileScorer, progress


@register
class QbNorm(Rescorer):
    name = "qbnorm"
    label = "QB-Norm"
    flag_help = "QB-Norm (dynamic inverted softmax, training captions as the query bank)."
    uses_bank = True
    cosine = True  # beta is an inverse temperature for cosine-sized scores
    progress = "QB-Norm ranks"

    def __init__(self, beta: float = 20.0, k: int = 1, **options):
        super().__init__(**options)
        self.beta, self.k = beta, k

    def plan(self, job: RankJob, score) -> RankPlan:
        t_b, g_b, v_b = job.bank
        n_texts, n_videos = job.t.shape[0], job.v.shape[0]
        m_v, r_v, active_v = bank_stats(TileScorer(job.head, t_b, g_b, job.v, cosine=True), t_b.shape[0], n_videos,
                                        job.chunk, gallery_is_video=True, beta=self.beta, k=self.k,
                                        desc="QB-Norm bank (T2V)", show=job.show)
        m_t, r_t, active_t = bank_stats(TileScorer(job.head, job.t_given, job.gate_given, v_b, cosine=True),
                                        v_b.shape[0], n_texts, job.chunk, gallery_is_video=False, beta=self.beta,
                                        k=self.k, desc="QB-Norm bank (V2T)", show=job.show)
        order = torch.as_tensor(job.blocks.order, device=m_t.device)
        top1 = Top1(job.blocks, job.t.device)
        normalised = QbNormalised(self.beta, (m_v, r_v), (m_t[order], r_t[order]), top1)

        def choose(cnt_t, cnt_v):  # a query is normalised only if its own top-1 is in the bank's activation set
            return (torch.where(active_v[top1.row_idx], cnt_t[1], cnt_t[0]),
                    torch.where(active_t[top1.col_idx], cnt_v[1], cnt_v[0]))

        return RankPlan(score, [TileValues(), normalised], choose=choose)

    def notes(self, bank_split=None, bank=None) -> list[str]:
        return [(f"QB-Norm (dynamic inverted softmax, beta={self.beta:g}, k={self.k}) with a query bank of the "
                 f"{bank_split!r} split: {len(bank.text_video)} captions (T2V), {len(bank.video_ids)} videos (V2T)")]


class QbNormalised(TileValues):
    """QB-Norm's inverted softmax in log space, ``(beta * s - m) - r`` in float64 with the bank's ``lse = m + r``
    per video (T2V) or caption (V2T), as ``rescore.qbnorm`` computes it: the same value for the same score and
    statistics, and no float32 rounding of values near beta to merge or split ties. ``begin`` also feeds each
    tile to ``top1``, which decides at the end which queries are normalised."""

    dtype = torch.float64

    def __init__(self, beta, per_video, per_text, top1: Top1):
        self.beta, (self.m_v, self.r_v), (self.m_t, self.r_t) = beta, per_video, per_text
        self.top1 = top1

    def begin(self, s, r, c, rows, cols, own, buffers):
        self.top1.update(s, rows, cols, r)

    def t2v(self, s, rows, cols, out):
        return out.copy_(s).mul_(self.beta).sub_(self.m_v[cols]).sub_(self.r_v[cols])

    def v2t(self, s, rows, cols, out):
        return out.copy_(s).mul_(self.beta).sub_(self.m_t[rows, None]).sub_(self.r_t[rows, None])


class Top1:
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


def bank_stats(score, n_bank: int, n_gallery: int, chunk: int, *, gallery_is_video: bool, beta, k, desc, show):
    """QB-Norm statistics (m, r, active) of a query bank against the test gallery, from tiles of ``score``
    (captions x videos): ``QueryBankStats.finish_parts``."""
    stats = buffers = None
    bank_blocks, gallery_blocks = range(0, n_bank, chunk), range(0, n_gallery, chunk)
    with progress(len(bank_blocks) * len(gallery_blocks), desc, show) as bar:
        for b0 in bank_blocks:
            for g0 in gallery_blocks:
                bank, gallery = slice(b0, min(b0 + chunk, n_bank)), slice(g0, min(g0 + chunk, n_gallery))
                # Tiles are always captions x videos; the bank is on the rows of what the statistics see.
                tile = score(bank, gallery) if gallery_is_video else score(gallery, bank).T
                if stats is None:
                    stats, buffers = QueryBankStats(n_gallery, beta, k, tile.device), Buffers(tile.device)
                stats.add(tile, g0, buffers("e", *tile.shape, dtype=torch.float64))
                bar.update()
    return stats.finish_parts()
