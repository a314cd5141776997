"""Search an index folder (made by `vtr index`, ``build_index``): a sentence -> the ranked videos.

    index = SearchIndex.open(Path("cache/index/synthetic-camoe-dsl"))
    for hit in index.search("a red circle moves left on the grass", k=5):
        print(hit.rank, hit.video_id, hit.score, hit.path, hit.moment, hit.gate)

The query is encoded as extraction encodes a caption (``vtr.search.query``), turned into the head's query
vector (``vtr.search.vectors``) and searched by inner product: on the exact index, the ranking is eval's
(``vtr eval``) for that caption. ``qbnorm=True`` ranks by QB-Norm's dynamic inverted softmax against the
query bank stored with the index (``vtr.search.qbnorm``), eval's ``--qbnorm`` one query at a time. DSL at
inference is not offered: it normalises every video over all test queries at once, which a single query
does not have.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from vtr.search import store
from vtr.search.build import build_index  # noqa: F401  (part of this module's API)
from vtr.search.engine import exact_topk, flat_vectors
from vtr.search.moments import FrameReader, best_frames
from vtr.search.qbnorm import BankStats
from vtr.search.query import QueryEncoder
from vtr.search.vectors import query_vectors


@dataclass
class Hit:
    """One ranked video."""

    rank: int
    video_id: str
    score: float  # the head's logit (scale * inner product); under QB-Norm: beta * cosine - lse_v
    path: str  # the video's path as stored in the cache, relative to video_root when it lies inside it
    moment: float | None  # seconds: the kept frame whose CLIP embedding is closest to the query sentence
    captions: list[str]  # the captions this video has in the cache
    gate: dict[str, float] | None  # CAMoE: the query's gate weight per expert; None for single-stream heads

    def to_dict(self) -> dict:
        return asdict(self)


class SearchIndex:
    """An opened index folder. Use ``SearchIndex.open``; it refuses a stale or foreign index by name."""

    def __init__(self, folder: Path, meta: dict, engine, videos: dict, times: np.ndarray, bank: BankStats | None,
                 head, clip_cache: Path | None = None, device: str = "cpu"):
        self.folder, self.meta, self.engine, self.head = folder, meta, engine, head
        self.ids, self.paths, self.rows, self.captions = videos["ids"], videos["paths"], videos["rows"], videos["captions"]
        self.times, self.bank = times, bank
        self.active = bank.active(len(self.ids)) if bank is not None else None
        self.scale = float(meta["scale"])
        self.extended = bool(meta["qbnorm"])  # vectors carry QB-Norm's lse_v as a last coordinate
        self.experts = meta.get("experts")
        # exact: the bare product over FAISS's own storage (vtr.search.engine); approximate: FAISS searches
        self._flat = flat_vectors(engine) if meta["engine"] == "Flat" else None
        clip = meta["clip"]
        self.queries = QueryEncoder(clip["model"], clip["sha256"], int(clip["max_words"]),
                                    phrases=meta["model"].lower() == "camoe", clip_cache=clip_cache, device=device)
        cache = Path(meta["cache"]["path"])
        self.frames = FrameReader(cache) if cache.is_file() else None
        self.video_root = Path(meta["video_root"]) if meta.get("video_root") else None
        self.info = {
            "model": meta["model"], "run": meta["run"]["path"], "cache": meta["cache"]["path"],
            "n_videos": len(self.ids), "engine": meta["engine"], "split": meta.get("split"),
            "qbnorm": self.extended, "experts": self.experts, "clip": clip["model"],
            "clip_random": bool(clip.get("random")), "moments": self.frames is not None,
        }
        if meta.get("recall@10") is not None:
            self.info["recall@10"] = meta["recall@10"]["value"]
            self.info["recall@10_measured_on"] = {k: meta["recall@10"][k] for k in ("queries", "videos")}

    @classmethod
    def open(cls, folder: Path, *, clip_cache: Path | None = None, device: str = "cpu") -> "SearchIndex":
        folder = Path(folder)
        meta = store.read_meta(folder)
        fix = f"rerun `{store.rebuild_command(meta, folder)}`"
        head = _head(meta, folder, fix)
        cache = Path(meta["cache"]["path"])
        if cache.exists():
            now = store.current_cache_identity(cache)
            if now["fingerprint"] != meta["cache"]["fingerprint"]:
                what = ("grew or shrank" if now["settings_sha256"] == meta["cache"]["settings_sha256"]
                        else "was rebuilt with other settings")
                raise store.IndexStale(
                    f"{folder}: stale index: cache {cache} {what} since it was built ({meta['cache']['videos']} -> "
                    f"{now['videos']} videos, {meta['cache']['texts']} -> {now['texts']} captions); {fix}")
        try:
            engine = faiss.read_index(str(folder / store.ENGINE))
            videos = json.loads((folder / store.VIDEOS).read_text())
            times = np.load(folder / store.TIMES, allow_pickle=False)
            bank = BankStats.load(folder / store.BANK) if meta["qbnorm"] else None
        except (OSError, RuntimeError, ValueError) as e:
            raise store.IndexStale(f"{folder}: damaged index ({e}); {fix}") from e
        if not (engine.ntotal == len(videos["ids"]) == len(times) == meta["n_videos"]):
            raise store.IndexStale(f"{folder}: its files disagree on the number of videos (an update was killed "
                                   f"half-way?); {fix}")
        if meta.get("search_params"):
            faiss.ParameterSpace().set_index_parameters(engine, meta["search_params"])
        return cls(folder, meta, engine, videos, times, bank, head, clip_cache, device)

    # -- searching
    def search(self, query: str, k: int = 10, qbnorm: bool = False) -> list[Hit]:
        return self.search_many([query], k, qbnorm)[0]

    def search_many(self, queries: list[str], k: int = 10, qbnorm: bool = False) -> list[list[Hit]]:
        enc = self.queries.encode(list(queries))
        q, gate = query_vectors(self.head, enc.text)
        return self.search_vectors(q, k, qbnorm, gate=gate, sentence=enc.sentence)

    def search_vectors(self, q: np.ndarray, k: int = 10, qbnorm: bool = False, *, gate: np.ndarray | None = None,
                       sentence: np.ndarray | None = None) -> list[list[Hit]]:
        """Rank for query vectors ``q`` [B, d] (``vectors.query_vectors``). ``sentence`` [B, D]: the CLIP
        sentence embeddings, for the moments (None: no moments)."""
        scores, idx = self.rank_vectors(q, k, qbnorm)
        out = []
        for b in range(len(q)):
            moments = self._moments(sentence[b], idx[b]) if sentence is not None else [None] * len(idx[b])
            g = None if gate is None or not self.experts else {e: float(gate[b, j]) for j, e in enumerate(self.experts)}
            out.append([Hit(r + 1, self.ids[i], float(s), self.paths[i], m, list(self.captions[i]), g)
                        for r, (s, i, m) in enumerate(zip(scores[b], idx[b], moments)) if i >= 0])
        return out

    def rank_vectors(self, q: np.ndarray, k: int = 10, qbnorm: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k], video indices [B, k]) for query vectors ``q``: raw scores are logits; a query that
        QB-Norm normalises (its raw top-1 in the activation set) gets ``beta * cosine - lse_v`` instead."""
        if qbnorm and not self.extended:
            raise ValueError(f"{self.folder}: QB-Norm is not available in this index ("
                             + ("an approximate engine: build it with the exact one, --factory Flat"
                                if self.meta["engine"] != "Flat" else "its cache has no training captions to "
                                "serve as the query bank") + ")")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.meta["dim"]:
            raise ValueError(f"query vectors must be [B, {self.meta['dim']}], got {q.shape}")
        k = max(1, min(int(k), len(self.ids)))
        raw_q = np.hstack([q, np.zeros((len(q), 1), np.float32)]) if self.extended else q
        cos, idx = self._search(raw_q, k)
        scores = cos * self.scale
        if qbnorm:
            # the dynamic rule looks at the raw top-1; among exact ties, the lowest index (as eval's argmax)
            top1 = np.where(cos == cos[:, :1], idx, np.iinfo(np.int64).max).min(1)
            normalise = self.active[np.maximum(top1, 0)]
            if normalise.any():
                beta = self.bank.beta
                nq = np.hstack([beta * q[normalise], -np.ones((int(normalise.sum()), 1), np.float32)])
                s, i = self._search(np.ascontiguousarray(nq), k)
                scores[normalise], idx[normalise] = s, i
        return scores, idx

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._flat is not None:
            return exact_topk(self._flat, q, k)
        return self.engine.search(q, k)

    def _moments(self, sentence: np.ndarray, idx: np.ndarray) -> list[float | None]:
        idx = [int(i) for i in idx if i >= 0]
        if self.frames is None or not idx:
            return [None] * len(idx)
        frames, mask = self.frames.frames(np.asarray([self.rows[i] for i in idx]))
        best = best_frames(sentence, frames, mask)
        out = []
        for i, b in zip(idx, best):
            t = float(self.times[i, b]) if b >= 0 else math.nan
            out.append(None if math.isnan(t) else t)
        return out

    def close(self) -> None:
        if self.frames is not None:
            self.frames.close()


def _head(meta: dict, folder: Path, fix: str):
    """The head the index was built with, checked against the run's files as they are now."""
    from vtr.train.heads import MeanP

    run = meta["run"]
    if run["zero_shot"]:
        return MeanP(int(meta["dim"]))
    from vtr.train.runs import load_run

    run_dir = Path(run["path"])
    ckpt = run_dir / run["checkpoint"]
    if not ckpt.is_file():
        raise store.IndexStale(f"{folder}: built from run {run_dir}, whose {run['checkpoint']} is gone; {fix}")
    now = store.run_identity(run_dir, str(ckpt))
    if now != run:
        raise store.IndexStale(f"{folder}: stale index: run {run_dir} changed since it was built ({run['checkpoint']} "
                               f"or config.json rewritten, e.g. by more training); {fix}")
    head, _, _ = load_run(run_dir, which="last" if run["checkpoint"].startswith("last") else "best")
    return head
