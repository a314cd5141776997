"""Ranks counted tile by tile: the same ranks as the whole score matrix, in O(chunk^2 + M + N) memory.

- ``metrics.plan_blocks`` sorts the captions by video and cuts the matrix into tiles of at most ``chunk``
  captions x ``chunk`` videos so that the diagonal tile (b, b) holds every true pair of its captions and every
  caption of its videos.
- The diagonal tiles come first. Each gives the thresholds: the (re-scored) score of each caption against its
  own video (T2V), and each video's score against its own caption group, the max over its captions (V2T).
- A rank is then a count over all tiles: T2V, the videos scoring >= the caption's threshold; V2T, the caption
  groups whose max score >= the video's threshold. The count includes the true candidate itself, so it is
  exactly ``metrics.TIE_RULE``. Only the tile's comparisons and one number per query are kept.

What the counts are taken on comes from the rescoring method (``vtr.eval.rescorers``). A tie stays a tie and
counts against the model: a re-scored value depends only on its score and on per-row or per-column
statistics, never on the tile it sits in, so two identical captions or videos, wherever their tiles, get
bit-equal values. Scores that are NaN or infinite are refused in every mode (``metrics.NONFINITE_SCORES``).
docs/evaluation-ties.md has the details.
"""
from __future__ import annotations

import numpy as np
import torch

from vtr.core.metrics import DEFAULT_TILE, Blocks, check_every_video_captioned, plan_blocks
from vtr.eval import rescorers
from vtr.eval.rescorers import RankJob, Rescorer, TileValues
from vtr.eval.rescorers.dsl import DSL_MEMORY_MIB
from vtr.eval.tiles import Buffers, TileScorer, tiles


def count_ranks(score, blocks: Blocks, values: list[TileValues], progress: str = "", show=False, check: bool = True):
    """Rank counts [len(values), M] (sorted caption order) and [len(values), N], one row per ``TileValues``."""
    m, n = len(blocks.order), int(blocks.video_bounds[-1])
    tv = torch.as_tensor(blocks.text_video)
    cnt_t = cnt_v = thr_t = thr_v = buffers = device = ones = None  # made on the device of the first tile
    for r, c, rows, cols, s in tiles(score, blocks, progress, show, check):
        if cnt_t is None:
            device = s.device
            tv = tv.to(device)
            buffers = Buffers(device)
            cnt_t = torch.zeros(len(values), m, dtype=torch.int64, device=device)
            cnt_v = torch.zeros(len(values), n, dtype=torch.int64, device=device)
            thr_t = [torch.empty(m, dtype=v.dtype, device=device) for v in values]  # in each one's dtype
            thr_v = [torch.empty(n, dtype=v.dtype, device=device) for v in values]
            edge = int(max(np.diff(blocks.text_bounds).max(), np.diff(blocks.video_bounds).max()))
            ones = {v.dtype: torch.ones(edge, dtype=v.dtype, device=device) for v in values}
        nr, nc = s.shape
        own = (tv[rows] - cols.start) if r == c else None  # column of each caption's own video
        groups = tv[rows] - int(blocks.video_bounds[r])  # caption group (video) within block r
        n_groups = int(blocks.video_bounds[r + 1] - blocks.video_bounds[r])
        for k, value in enumerate(values):
            dtype = value.dtype
            value.begin(s, r, c, rows, cols, own, buffers)
            x = value.t2v(s, rows, cols, buffers("x", nr, nc, dtype))
            if own is not None:
                thr_t[k][rows] = x[torch.arange(nr, device=device), own]
            # the 0/1 hits overwrite the values' own buffer (one tile less to stream), never the scores s
            mask = buffers("mask", nr, nc, dtype) if x is s else x
            cnt_t[k, rows] += torch.ge(x, thr_t[k][rows, None], out=mask).sum(1).long()
            y = value.v2t(s, rows, cols, buffers("x", nr, nc, dtype))
            if own is not None:  # each video's best own caption
                thr_v[k][cols] = torch.full((nc,), float("-inf"), dtype=dtype, device=device).scatter_reduce_(
                    0, own, y[torch.arange(nr, device=device), own], "amax")
            if blocks.max_group[r] > 1:  # group max over each video's captions first
                y = buffers("groups", n_groups, nc, dtype).fill_(float("-inf")).scatter_reduce_(
                    0, groups[:, None].expand(nr, nc), y, "amax")
            hits = torch.ge(y, thr_v[k][cols], out=buffers("mask", y.shape[0], nc, dtype) if y is s else y)
            cnt_v[k, cols] += torch.mv(hits.T, ones[dtype][: hits.shape[0]]).long()  # column sums; mv is the fast one
    return cnt_t, cnt_v


@torch.no_grad()
def chunked_ranks(head, t, gate, v, text_video, *, rescore: str | Rescorer = "none", bank=None,
                  chunk: int = DEFAULT_TILE, beta: float = 20.0, k: int = 1, progress: bool = False,
                  dsl_memory_mib: float = DSL_MEMORY_MIB) -> tuple[np.ndarray, np.ndarray]:
    """1-based T2V ranks [M] and V2T ranks [N] of encoded captions ``(t, gate)`` against videos ``v``.

    The same ranks as building ``score_matrix``, re-scoring it (``rescore``: a name from ``rescorers.names()``,
    "none", "dsl" as ``dsl_t2v`` / ``dsl_v2t``, or "qbnorm" as ``qbnorm_t2v`` / ``qbnorm_v2t`` on cosine-scale
    scores, or a ``Rescorer``) and ranking it with ``t2v_ranks`` / ``v2t_ranks``, but computed tile by tile (see
    the module docstring): memory O(chunk^2 + M + N). ``text_video[i]`` is caption i's video. ``bank`` is
    ``(t, gate, v)`` of the query bank (QB-Norm only): its captions are the T2V bank, its videos the V2T bank.

    DSL keeps up to ``dsl_memory_mib`` MiB of pass 1's tiles for pass 2 instead of scoring them again: the
    whole matrix when it fits (a 10k x 10k float32 matrix is 381 MiB), so DSL then costs one matrix product,
    not two. 0 recomputes every tile, for the least memory. ``beta`` and ``k`` are QB-Norm's.
    """
    method = rescore if isinstance(rescore, Rescorer) else rescorers.get(rescore)(
        beta=beta, k=k, dsl_memory_mib=dsl_memory_mib)
    n_texts, n_videos = t.shape[0], v.shape[0]
    text_video = np.asarray(text_video.cpu() if isinstance(text_video, torch.Tensor) else text_video)
    if len(text_video) != n_texts:
        raise ValueError(f"text_video must have one entry per caption ({n_texts}), got {len(text_video)}")
    blocks = plan_blocks(text_video, n_videos, chunk)
    check_every_video_captioned(text_video, n_videos)
    if method.uses_bank and bank is None:
        raise ValueError(f"rescore={method.name!r} needs a query bank: bank=(t, gate, v)")
    if not np.array_equal(blocks.order, np.arange(n_texts)):  # captions not grouped by video yet: sort once
        order = torch.as_tensor(blocks.order, device=t.device)
        t_sorted, gate_sorted = t[order], gate[order]
    else:
        t_sorted, gate_sorted = t, gate
    score = TileScorer(head, t_sorted, gate_sorted, v, cosine=method.cosine, defer_scale=method.defer_scale)
    job = RankJob(head, t_sorted, gate_sorted, v, blocks, chunk, show=len(blocks) ** 2 >= 16 and progress,
                  t_given=t, gate_given=gate, bank=bank)
    plan = method.plan(job, score)
    cnt_t, cnt_v = count_ranks(plan.score, blocks, plan.values, method.progress, job.show, check=not plan.checked)
    t2v, v2t = plan.choose(cnt_t, cnt_v)
    ranks_t2v = np.empty(n_texts, dtype=np.int64)
    ranks_t2v[blocks.order] = t2v.cpu().numpy()
    return ranks_t2v, v2t.cpu().numpy().astype(np.int64)
