"""Scoring a texts x videos matrix one tile at a time: the tile scorer, its reused buffers, the tile orders.

Every head's score is a gated sum of per-expert dot products (see ``vtr.train.heads``), so captions and videos
are encoded once and any tile of the score matrix is one matrix product. The matrix is never held whole.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm import tqdm

from vtr.core.metrics import Blocks, require_finite
from vtr.train.heads import RetrievalHead


class Buffers:
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
        self._buffers = Buffers(t.device)

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


class KeptTiles:
    """A ``TileScorer`` that keeps the tiles it scores, up to ``budget`` bytes, and hands each out once more.

    A method that scores every tile twice (DSL, once per pass) is spared the second matrix product, the bulk
    of its time, for the kept tiles. A tile not kept on its first scoring is never kept later: the pool only
    fills. The tiles live in one pool allocated and zeroed up front: page faults taken inside the matrix
    product slow it more than zeroing first costs (docs/evaluation.md).
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


def check_tile(s: torch.Tensor) -> None:
    """ValueError (``NONFINITE_SCORES``) if the tile holds NaN or an infinity."""
    require_finite(s)


def progress(total: int, desc: str, show: bool):
    """A tqdm bar over ``total`` tiles, shown only when ``show`` (and, as tqdm decides, in a terminal)."""
    return tqdm(total=total, desc=desc, unit="tile", leave=False, disable=None if show else True)


def diagonal_first(n_blocks: int) -> Iterator[tuple[int, int]]:
    """Diagonal tiles (they set the thresholds), then the others row by row."""
    yield from ((b, b) for b in range(n_blocks))
    yield from ((r, c) for r in range(n_blocks) for c in range(n_blocks) if r != c)


def row_major(n_blocks: int) -> Iterator[tuple[int, int]]:
    """Every tile row by row: each row block meets the column blocks in the same order, and vice versa."""
    yield from ((r, c) for r in range(n_blocks) for c in range(n_blocks))


def tiles(score, blocks: Blocks, desc: str, show: bool, check: bool = True, order=diagonal_first):
    """Yield (r, c, rows, cols, scores) for every non-empty tile in ``order``, non-finite scores refused
    (unless ``check`` is off: the caller checks, or an earlier pass over the same tiles did)."""
    with progress(len(blocks) ** 2, desc, show) as bar:
        for r, c in order(len(blocks)):
            rows, cols = blocks.texts(r), blocks.videos(c)
            bar.update()
            if rows.start == rows.stop or cols.start == cols.stop:
                continue
            s = score(rows, cols)
            if check:
                check_tile(s)
            yield r, c, rows, cols, s
