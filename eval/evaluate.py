"""Evaluate a head on one split of a cache: encode each side once, rank tile by tile, summarise.

The public entry points: ``evaluate`` (a cache split -> a JSON-ready report) and ``chunked_ranks`` (encoded
captions and videos -> ranks). The work lives beside it: ``tiles`` scores the matrix a tile at a time,
``ranks`` counts the ranks over the tiles, ``rescorers`` holds the rescoring methods (raw, DSL, QB-Norm), and
``rescore`` the whole-matrix definitions they are tested against.
"""
from __future__ import annotations

import torch

from vtr.cache.records import CacheTensors
from vtr.core.metrics import DEFAULT_TILE, TIE_RULE, retrieval_metrics
from vtr.eval import rescorers
from vtr.eval.ranks import chunked_ranks
from vtr.eval.report import RANDOM_CLIP_NOTE
from vtr.eval.rescorers.dsl import DSL_MEMORY_MIB
from vtr.eval.tiles import TileScorer
from vtr.train.encode import encode_all

__all__ = ["DSL_MEMORY_MIB", "TileScorer", "chunked_ranks", "evaluate"]


@torch.no_grad()
def evaluate(head, data: CacheTensors, *, split: str = "test", rescore: str = "none",
             bank: CacheTensors | None = None, bank_split: str = "train", cache_path: str = "",
             device="cpu", batch_size: int = 1024, chunk: int = DEFAULT_TILE, progress: bool = False,
             dsl_memory_mib: float = DSL_MEMORY_MIB) -> dict:
    """T2V and V2T retrieval metrics of ``head`` on ``data.select(split)``, as a JSON-ready report.

    ``rescore`` names a method of ``vtr.eval.rescorers``: "none" ranks raw logits; "dsl" applies
    inference-time Dual Softmax (transductive); "qbnorm" applies QB-Norm with ``bank.select(bank_split)`` as
    query bank: its captions for T2V and its videos for V2T, encoded by the same head. QB-Norm runs on
    cosine-scale scores (logits divided by the head's logit scale), the range its beta=20 is meant for.

    Scores are ranked in tiles of at most ``chunk`` captions x ``chunk`` videos (``chunked_ranks``), so the
    full score matrix is never built; ``progress`` shows a bar on large splits. ``dsl_memory_mib``: see
    ``chunked_ranks``.
    """
    method = rescorers.get(rescore)(dsl_memory_mib=dsl_memory_mib)
    if method.uses_bank:
        if bank is None:
            raise ValueError(f"rescore={rescore!r} needs a query bank: pass bank= (the cache holding the training "
                             f"split)")
        if bank_split == split:
            raise ValueError(f"the query bank must not come from the evaluated split ({split!r})")
    test = data.select(split)
    n_texts, n_videos = len(test.text_video), len(test.video_ids)
    if n_texts == 0 or n_videos == 0:
        raise ValueError(f"split {split!r} is empty: {n_texts} captions, {n_videos} usable videos")

    head.eval()
    head.to(device)
    t, gate, v = encode_all(head, test, batch_size, device)
    bank_data = bank_emb = None
    if method.uses_bank:
        bank_data = bank.select(bank_split)
        if len(bank_data.text_video) == 0 or len(bank_data.video_ids) == 0:
            raise ValueError(f"query bank split {bank_split!r} is empty: {len(bank_data.text_video)} captions, "
                             f"{len(bank_data.video_ids)} usable videos")
        bank_emb = encode_all(head, bank_data, batch_size, device)
    notes = method.notes(bank_split, bank_data)
    t2v, v2t = chunked_ranks(head, t, gate, v, test.text_video, rescore=method, bank=bank_emb, chunk=chunk,
                             progress=progress)

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
        "transductive": method.transductive,
        "clip": clip or None,
        "t2v": retrieval_metrics(t2v),
        "v2t": retrieval_metrics(v2t),
        "tie_rule": TIE_RULE,
        "notes": notes,
    }
