"""Encode a cache's captions and videos with a head once, and score them: training's validation and every
evaluation start from these."""
from __future__ import annotations

import numpy as np
import torch

from vtr.cache.records import CacheTensors
from vtr.train.heads import text_batch, video_batch


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
