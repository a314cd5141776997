"""Evaluate a head on one split of a cache: encode each side once, score in chunks, rank, summarise.

Because every head's score is a gated sum of per-expert dot products (see ``vtr.train.heads``), texts
and videos are encoded independently and the texts x videos matrix is built a block of text rows at a
time.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from vtr.eval.metrics import TIE_RULE, retrieval_metrics, t2v_ranks, v2t_ranks
from vtr.eval.report import RANDOM_CLIP_NOTE
from vtr.eval.rescore import dsl_t2v, dsl_v2t, qbnorm_t2v, qbnorm_v2t
from vtr.records import CacheTensors
from vtr.train.heads import text_batch, video_batch

RESCORE = ("none", "dsl", "qbnorm")


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


def _bank_t2v(head, t_bank, g_bank, v, chunk) -> Iterator[torch.Tensor]:
    """Bank captions x test videos, one block of bank rows at a time."""
    for i in range(0, t_bank.shape[0], chunk):
        yield score_matrix(head, t_bank[i : i + chunk], g_bank[i : i + chunk], v, chunk) / head.scale.cpu()


def _bank_v2t(head, t, gate, v_bank, chunk) -> Iterator[torch.Tensor]:
    """Bank videos x test captions, one block of bank rows at a time."""
    for i in range(0, v_bank.shape[0], chunk):
        yield score_matrix(head, t, gate, v_bank[i : i + chunk], chunk).T / head.scale.cpu()


@torch.no_grad()
def evaluate(head, data: CacheTensors, *, split: str = "test", rescore: str = "none",
             bank: CacheTensors | None = None, bank_split: str = "train", cache_path: str = "",
             device="cpu", batch_size: int = 1024, chunk: int = 4096) -> dict:
    """T2V and V2T retrieval metrics of ``head`` on ``data.select(split)``, as a JSON-ready report.

    ``rescore``: "none" ranks raw logits; "dsl" applies inference-time Dual Softmax (transductive);
    "qbnorm" applies QB-Norm with ``bank.select(bank_split)`` as query bank: its captions for T2V and its
    videos for V2T, encoded by the same head. QB-Norm runs on cosine-scale scores (logits divided by the
    head's logit scale), the range its beta=20 is meant for.
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
    sim = score_matrix(head, t, gate, v, chunk)
    notes = []
    if rescore == "none":
        s_t2v = s_v2t = sim
    elif rescore == "dsl":
        s_t2v, s_v2t = dsl_t2v(sim), dsl_v2t(sim)
        notes.append("DSL at inference uses all test queries at once (transductive)")
    else:
        b = bank.select(bank_split)
        if len(b.text_video) == 0 or len(b.video_ids) == 0:
            raise ValueError(f"query bank split {bank_split!r} is empty: {len(b.text_video)} captions, "
                             f"{len(b.video_ids)} usable videos")
        t_b, g_b, v_b = encode_all(head, b, batch_size, device)
        cos = sim / head.scale.cpu()
        s_t2v = qbnorm_t2v(cos, _bank_t2v(head, t_b, g_b, v, chunk))
        s_v2t = qbnorm_v2t(cos, _bank_v2t(head, t, gate, v_b, chunk))
        notes.append(f"QB-Norm (dynamic inverted softmax, beta=20, k=1) with a query bank of the {bank_split!r} "
                     f"split: {len(b.text_video)} captions (T2V), {len(b.video_ids)} videos (V2T)")

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
        "t2v": retrieval_metrics(t2v_ranks(s_t2v, test.text_video)),
        "v2t": retrieval_metrics(v2t_ranks(s_v2t, test.text_video, n_videos)),
        "tie_rule": TIE_RULE,
        "notes": notes,
    }
