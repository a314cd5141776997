"""Retrieval ranks and the usual summary metrics (R@K, median rank, mean rank).

Similarity matrices are texts x videos: ``sim[i, j]`` is the score of caption i against video j, and
``text_video[i]`` is the index of caption i's own video.

- Text-to-video (T2V): each caption ranks all N videos; its rank is that of its own video.
- Video-to-text (V2T), multi-caption protocol as in CLIP4Clip: the captions of video g form group g and
  score against video v as ``G[v, g] = max_{c in g} sim[c, v]``; video v's rank is that of its own group
  among all N groups.

Tie rule (ties count against the model)::

    rank = 1 + #{other candidates k : score_k >= score_true}

so a model that gives every candidate the same score gets the worst rank N, never rank 1. (CLIP4Clip's
``np.where(sorted == diag)`` takes the first match in a sorted row, which resolves ties in the model's
favour.) NaN and infinite scores cannot be ranked and raise ValueError (``NONFINITE_SCORES``), in every path:
whole matrix, tiled, raw, DSL and QB-Norm.

``t2v_ranks`` / ``v2t_ranks`` rank a matrix that exists whole (or as an array-like read block by block).
``vtr.eval.ranks`` never builds the matrix: it counts the same ranks tile by tile over ``plan_blocks``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TIE_RULE = "rank = 1 + number of other candidates scoring >= the true one (ties count against the model)"
NONFINITE_SCORES = "similarity matrix contains NaN or infinite scores; ranks are undefined"
DEFAULT_CHUNK = 4096
# Tile edge for chunked evaluation: a 1024 x 1024 float32 tile is 4 MiB, large enough for an efficient matrix
# product, and the tile with DSL's three scratch tiles fits a 32 MiB L3 cache (docs/evaluation.md, "Tile size").
DEFAULT_TILE = 1024


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(sim, text_video) -> tuple[np.ndarray, np.ndarray]:
    sim, text_video = _as_numpy(sim), _as_numpy(text_video)
    if sim.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D (texts x videos), got shape {sim.shape}")
    if text_video.ndim != 1 or len(text_video) != sim.shape[0]:
        raise ValueError(
            f"text_video must have one entry per similarity row ({sim.shape[0]}), got shape {text_video.shape}"
        )
    text_video = text_video.astype(np.int64)
    if len(text_video) and (text_video.min() < 0 or text_video.max() >= sim.shape[1]):
        raise ValueError(f"text_video holds video indices outside [0, {sim.shape[1]})")
    return sim, text_video


def require_finite(scores) -> None:
    """ValueError (``NONFINITE_SCORES``) if ``scores`` (a numpy array or a torch tensor) holds NaN or an infinity.

    One cheap reduction first: a finite sum proves every score finite; a non-finite one (NaN, an infinity, or
    finite scores that overflow) triggers the exact check."""
    if isinstance(scores, np.ndarray):
        ok = bool(np.isfinite(scores.sum())) or bool(np.isfinite(scores).all())
    else:
        ok = bool(scores.sum().isfinite()) or bool(scores.isfinite().all())
    if not ok:
        raise ValueError(NONFINITE_SCORES)


def t2v_ranks(sim, text_video, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """1-based rank of each caption's own video among all videos (tie rule in the module docstring).

    ``#{k : sim[i, k] >= sim[i, true]}`` counts the true video itself once, which is the "1 +".
    """
    sim, text_video = _check_inputs(sim, text_video)
    ranks = np.empty(sim.shape[0], dtype=np.int64)
    for i0 in range(0, sim.shape[0], chunk):
        block = np.asarray(sim[i0 : i0 + chunk])
        require_finite(block)
        true = block[np.arange(len(block)), text_video[i0 : i0 + chunk]]
        ranks[i0 : i0 + chunk] = (block >= true[:, None]).sum(1)
    return ranks


def v2t_ranks(sim, text_video, n_videos: int | None = None, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """1-based rank of each video's own caption group among all groups (group score = max over captions).

    ``sim`` is still texts x videos (for a re-scored V2T matrix, transpose it back first). Every video
    must have at least one caption, else its rank is undefined and ValueError is raised.
    """
    sim, text_video = _check_inputs(sim, text_video)
    n = sim.shape[1]
    if n_videos is not None and n_videos != n:
        raise ValueError(f"n_videos={n_videos} but the similarity matrix has {n} video columns")
    counts = check_every_video_captioned(text_video, n)
    # Sort captions by video so each group is a contiguous run of rows: group max is one reduceat.
    order = np.argsort(text_video, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = np.empty(n, dtype=np.int64)
    for v0 in range(0, n, chunk):
        block = np.asarray(sim[:, v0 : v0 + chunk])[order]  # [M, c], rows grouped by video
        require_finite(block)
        group = np.maximum.reduceat(block, starts, axis=0)  # [N groups, c]: G[g, v] for v in the chunk
        cols = np.arange(group.shape[1])
        true = group[v0 + cols, cols]
        ranks[v0 : v0 + chunk] = (group >= true[None, :]).sum(0)
    return ranks


def check_every_video_captioned(text_video, n_videos: int) -> np.ndarray:
    """Captions per video; ValueError if a video has none (its V2T rank would be undefined)."""
    counts = np.bincount(_as_numpy(text_video).astype(np.int64), minlength=n_videos)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} of {n_videos} videos have no caption; V2T ranks are undefined")
    return counts


@dataclass(frozen=True)
class Blocks:
    """A texts x videos matrix cut into tiles so that every true pair lies on a diagonal tile.

    Texts are taken in ``order`` (a stable sort by video), so each video's captions are contiguous. Block b
    holds videos ``video_bounds[b]:video_bounds[b + 1]`` and, in sorted order, exactly their captions,
    ``text_bounds[b]:text_bounds[b + 1]``. So tile (b, b) holds the true pair of each of its captions and
    every caption of each of its videos: every threshold a rank is counted against comes from that tile.
    """

    order: np.ndarray  # [M] original index of the caption at each sorted position
    text_video: np.ndarray  # [M] video of the caption at each sorted position
    video_bounds: np.ndarray  # [B + 1]
    text_bounds: np.ndarray  # [B + 1]
    max_group: np.ndarray  # [B] most captions of one video in the block (> 1: V2T needs a group max)

    def __len__(self) -> int:
        return len(self.video_bounds) - 1

    def texts(self, b: int) -> slice:
        return slice(int(self.text_bounds[b]), int(self.text_bounds[b + 1]))

    def videos(self, b: int) -> slice:
        return slice(int(self.video_bounds[b]), int(self.video_bounds[b + 1]))


def plan_blocks(text_video, n_videos: int, chunk: int = DEFAULT_TILE) -> Blocks:
    """Cut texts x videos into tiles of at most ``chunk`` videos and ``chunk`` captions (a video with more
    captions than ``chunk`` gets a block of its own), keeping each video's captions in its own block."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    text_video = _as_numpy(text_video).astype(np.int64)
    if len(text_video) and (text_video.min() < 0 or text_video.max() >= n_videos):
        raise ValueError(f"text_video holds video indices outside [0, {n_videos})")
    order = np.argsort(text_video, kind="stable")
    counts = np.bincount(text_video, minlength=n_videos)
    video_bounds, n_v, n_t = [0], 0, 0
    for j, c in enumerate(counts.tolist()):
        if n_v and (n_v == chunk or n_t + c > chunk):
            video_bounds.append(j)
            n_v, n_t = 0, 0
        n_v, n_t = n_v + 1, n_t + c
    video_bounds.append(n_videos)
    video_bounds = np.asarray(video_bounds, dtype=np.int64)
    text_bounds = np.concatenate([[0], np.cumsum(counts)])[video_bounds]
    max_group = np.array([counts[a:b].max(initial=0) for a, b in zip(video_bounds[:-1], video_bounds[1:])])
    return Blocks(order, text_video[order], video_bounds, text_bounds, max_group)


def retrieval_metrics(ranks) -> dict[str, float]:
    """R@1, R@5, R@10 (percent of queries whose rank <= K), median rank (MdR) and mean rank (MnR)."""
    ranks = _as_numpy(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to summarise")
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based; got a rank below 1")
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in (1, 5, 10)}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out
