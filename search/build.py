"""`vtr index`: a cache and a run (or zero-shot CLIP) -> an index folder; rerun after the cache grew, it
encodes only the new videos.

Exact by default: FAISS's exhaustive inner-product index over the video vectors (``vtr.search.vectors``),
extended by QB-Norm's lse_v coordinate when the cache has a query bank (``vtr.search.qbnorm``). Any other
FAISS factory string (``HNSW32``, ``IVF4096,PQ64``, ...) builds an approximate index over the plain
vectors; its recall@10 against the exact search is measured at build time, on up to 1,000 of the cache's
captions held out of the bank, and stored with it.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import torch

from vtr.core import __version__
from vtr.core.files import atomic_write_bytes
from vtr.cache.records import CacheTensors
from vtr.search import store
from vtr.search.moments import complete_frame_times
from vtr.search.qbnorm import BETA, BankStats, bank_stats
from vtr.search.vectors import caption_vectors, check_inner_product_head, expert_names, video_vectors

EXACT = "Flat"
RECALL_QUERIES, RECALL_K = 1000, 10


def _load_head(run: Path | None, zero_shot: bool, data: CacheTensors):
    from vtr.train.heads import MeanP
    from vtr.train.layers import use_model_logit_scale
    from vtr.train.runs import load_run

    # The backbone's own logit scale where the cache records one (open_clip), as vtr eval scores: the
    # index's scores are the head's logits.
    if zero_shot:
        if run is not None:
            raise ValueError("give a run or zero_shot, not both")
        return use_model_logit_scale(MeanP(data.dim), data.attrs), store.run_identity(None, None)
    if run is None:
        raise ValueError("give a run folder (--run), or --zero-shot for zero-shot CLIP")
    head, _, info = load_run(Path(run))
    trained_on = info["cache"].get("attrs", {})
    for key in ("clip_model", "clip_sha256"):
        if key in trained_on and trained_on.get(key) != data.attrs.get(key):
            raise ValueError(f"run {run} was trained on features of {key} {trained_on.get(key)!r}; the cache "
                             f"{data.attrs.get('path')} holds {data.attrs.get(key)!r}")
    if info["dim"] != data.dim:
        raise ValueError(f"run {run} takes {info['dim']}-d features; the cache holds {data.dim}-d ones")
    return use_model_logit_scale(head, data.attrs, trained=True), store.run_identity(Path(run), info["checkpoint"])


def _video_root(paths: list[str], given: Path | None) -> Path | None:
    if given is not None:
        return Path(given).resolve()
    parents = {str(Path(p).resolve().parent) for p in paths if p}
    if not parents:
        return None
    import os

    return Path(os.path.commonpath(sorted(parents)))


def _relative(path: str, root: Path | None) -> str:
    if root is None or not path:
        return path
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def _recall(index, vectors: np.ndarray, queries: np.ndarray) -> float:
    """Mean |approximate top-10 ∩ exact top-10| / 10 over ``queries``, exact by a matrix product."""
    k = min(RECALL_K, len(vectors))
    _, approx = index.search(queries, k)
    v = torch.from_numpy(vectors)
    exact = torch.cat([(torch.from_numpy(queries[i:i + 256]) @ v.T).topk(k, dim=1).indices
                       for i in range(0, len(queries), 256)]).numpy()
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))


def _approximate(factory: str, vectors: np.ndarray, search_params: str):
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        if search_params:
            faiss.ParameterSpace().set_index_parameters(index, search_params)
    except RuntimeError as e:  # FAISS says why in its message (bad string, too few training vectors, ...)
        first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ValueError(f"--factory {factory!r} on {len(vectors)} vectors: {first}") from None
    return index


def _flat(vectors: np.ndarray, lse: np.ndarray | None):
    ext = vectors if lse is None else np.hstack([vectors, lse[:, None].astype(np.float32)])
    index = faiss.IndexFlatIP(ext.shape[1])
    index.add(np.ascontiguousarray(ext))
    return index


def build_index(cache: Path, out: Path, run: Path | None = None, zero_shot: bool = False, factory: str = EXACT,
                progress: bool = True, *, split: str | None = None, bank_split: str = "train",
                video_root: Path | None = None, search_params: str = "",
                log: Callable[[str], None] = lambda m: None) -> Path:
    """Build or update the index folder ``out`` for the videos of ``cache`` (one ``split``, or all).

    An existing index of the same run, cache and engine is updated: only videos it lacks are encoded (a
    changed checkpoint re-encodes all). One of another run, cache or engine is refused by name.
    """
    from vtr.cache import CacheError, read_cache, unfinished_parts, writer_active

    cache, out = Path(cache), Path(out)
    t0 = time.time()
    if writer_active(cache) or unfinished_parts(cache):
        raise CacheError(f"{cache}: an extraction is unfinished (part files or a writer); let `vtr extract` "
                         f"finish, then index")
    data = read_cache(cache)
    head, run_id = _load_head(run, zero_shot, data)
    check_inner_product_head(head)
    cache_id = store.cache_identity(cache, {k: v for k, v in data.attrs.items() if k != "path"},
                                    len(data.video_ids), len(data.text_ids))
    chosen = data.video_ok & ((data.video_split == split) if split else True)
    rows = np.flatnonzero(chosen)
    if not len(rows):
        raise ValueError(f"{cache}: no usable videos" + (f" in split {split!r}" if split else ""))
    row_of = {data.video_ids[r]: int(r) for r in rows}

    old = _previous(out, run_id, cache_id, factory, split)
    keep: list[str] = []
    if old is not None:
        ids_before = old["videos"]["ids"]
        if old["meta"]["run"] != run_id:
            log(f"{out}: run {run_id['path']} changed since the index was built: re-encoding every video")
        elif not all(i in row_of for i in ids_before):
            log(f"{out}: videos it holds are no longer in {cache}: rebuilding it")
        else:
            keep = ids_before
    kept = set(keep)
    new_ids = [i for i in (data.video_ids[r] for r in rows) if i not in kept]
    ids = keep + new_ids

    bank_data = data.select(bank_split)
    bank_ids = sorted(bank_data.text_ids)
    bank_key = store.settings_sha256({"ids": bank_ids, "split": bank_split})
    exact = factory == EXACT
    qb = exact and len(bank_data.text_ids) > 0 and len(bank_data.video_ids) > 0
    # up to date only if nothing asked differs either: the QB-Norm bank (--bank-split) and --search-params
    same_options = old is not None and old["meta"].get("search_params", "") == search_params and \
        (old["meta"].get("bank") or {}).get("key") == (bank_key if qb else None)
    if not new_ids and old is not None and keep and old["meta"]["cache"] == cache_id and same_options:
        log(f"{out}: up to date ({len(ids)} videos)")
        return out

    log(f"encoding {len(new_ids)} videos ({len(keep)} already indexed) with {head.name}")
    new_vectors = video_vectors(head, data, [row_of[i] for i in new_ids], progress=progress)
    if not len(new_vectors):
        new_vectors = np.zeros((0, old["index"].d - (1 if old["meta"]["qbnorm"] else 0)), np.float32)

    stats, bank_recomputed = None, False
    if exact:
        before = _exact_vectors(old, len(keep))
        everything = new_vectors if before is None else np.concatenate([before, new_vectors])
        if qb:
            bank = caption_vectors(head, bank_data, np.arange(len(bank_data.text_ids)))
            same_bank = old is not None and keep and old["meta"].get("bank", {}).get("key") == bank_key
            if same_bank and old["bank"] is not None:
                stats = bank_stats(bank, new_vectors, previous=old["bank"])
            else:
                stats = bank_stats(bank, everything)
                bank_recomputed = True
        if keep and not bank_recomputed and old["meta"]["qbnorm"] == (stats is not None):
            index = old["index"]  # only the new rows go in
            add = new_vectors if stats is None else np.hstack([new_vectors, stats.lse[len(keep):, None]])
            index.add(np.ascontiguousarray(add, dtype=np.float32))
        else:
            index = _flat(everything, None if stats is None else stats.lse)
        recall = None
    else:
        if keep:
            index = old["index"]
            index.add(new_vectors)
            recall = old["meta"]["recall@10"]
        else:
            index = _approximate(factory, new_vectors, search_params)
            held_out = np.flatnonzero(data.text_split != bank_split) if (data.text_split != bank_split).any() \
                else np.arange(len(data.text_ids))
            held_out = np.random.default_rng(0).permutation(held_out)[:RECALL_QUERIES]
            queries = caption_vectors(head, data, np.sort(held_out))
            recall = {"value": _recall(index, new_vectors, queries), "queries": len(queries),
                      "videos": len(new_vectors), "k": RECALL_K}
            log(f"{factory}: recall@10 against exact search {recall['value']:.4f} on {len(queries)} captions")

    extra = _video_columns(cache)
    paths = [str(p) for p in extra["path"][rows]]
    path_of = dict(zip((data.video_ids[r] for r in rows), paths))
    root = _video_root(paths, video_root)
    captions: dict[int, list[str]] = {}
    for c, v in zip(data.captions, data.text_video):
        captions.setdefault(int(v), []).append(c)
    index_rows = np.asarray([row_of[i] for i in ids], np.int64)
    times, derived = complete_frame_times(
        None if data.frame_times is None else data.frame_times[index_rows], data.frame_mask[index_rows],
        extra["duration"][index_rows], float(data.attrs.get("fps", 1.0)))
    if derived:
        log(f"{derived} videos have no stored frame times (a cache from before they were kept): derived from "
            f"the fps and durations")

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / store.ENGINE, faiss.serialize_index(index).tobytes())
    store.write_json(out / store.VIDEOS, {
        "ids": ids, "paths": [_relative(path_of[i], root) for i in ids], "rows": index_rows.tolist(),
        "captions": [captions.get(int(r), []) for r in index_rows]})
    store.write_npy(out / store.TIMES, times)
    if stats is not None:
        buf = io.BytesIO()
        stats.save(buf)
        atomic_write_bytes(out / store.BANK, buf.getvalue())
    meta = {
        "format": store.FORMAT, "vtr_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": run_id, "cache": cache_id, "split": split, "model": head.name, "experts": expert_names(head),
        "scale": float(head.scale), "dim": int(new_vectors.shape[1]), "n_videos": len(ids), "engine": factory,
        "search_params": search_params, "recall@10": recall, "qbnorm": bool(stats is not None),
        "bank": {"split": bank_split, "captions": len(bank_ids), "key": bank_key, "beta": BETA, "k": 1}
        if stats is not None else None,
        "video_root": None if root is None else str(root),
        "clip": {"model": data.attrs.get("clip_model"), "sha256": data.attrs.get("clip_sha256"),
                 "random": data.attrs.get("clip_random"), "max_words": data.attrs.get("max_words", 77)},
        "last_update": {"videos_encoded": len(new_ids), "videos_kept": len(keep), "bank_recomputed": bank_recomputed,
                        "seconds": round(time.time() - t0, 3)},
    }
    store.write_json(out / store.META, meta)
    log(f"{out}: {len(ids)} videos ({len(new_ids)} encoded now), engine {factory}"
        + (", QB-Norm available" if stats is not None else ""))
    return out


def _video_columns(cache: Path) -> dict:
    """The videos' paths and durations, which ``CacheTensors`` does not carry (same rows as read_cache)."""
    from vtr.cache import read_sources

    v = read_sources(cache, {"videos": ("ids", "path", "duration"), "texts": ("ids",)})[1]["videos"]
    return {"path": np.asarray(v["path"], dtype=object), "duration": np.asarray(v["duration"], np.float32)}


def _exact_vectors(old: dict | None, n: int) -> np.ndarray | None:
    """The first ``n`` video vectors of an existing exact index (without its QB-Norm coordinate)."""
    if old is None or n == 0:
        return None
    full = old["index"].reconstruct_n(0, n)
    return full[:, :-1] if old["meta"]["qbnorm"] else full


def _previous(out: Path, run_id: dict, cache_id: dict, factory: str, split: str | None) -> dict | None:
    """The index already in ``out`` when it is one of this run, cache and engine; refuse another."""
    if not out.exists() or not (out / store.META).exists():
        if out.exists() and any(p.name not in ("thumbs",) for p in out.iterdir()):
            raise store.IndexStale(f"{out}: exists and is not a vtr search index; choose another --out")
        return None
    meta = store.read_meta(out)
    theirs = (meta["run"]["zero_shot"], meta["run"]["path"], meta["cache"]["path"], meta["cache"]["settings_sha256"],
              meta["engine"], meta.get("split"))
    ours = (run_id["zero_shot"], run_id["path"], cache_id["path"], cache_id["settings_sha256"], factory, split)
    if theirs != ours:
        names = ("zero-shot", "run", "cache", "cache settings", "engine", "split")
        diff = "; ".join(f"{n}: index has {a!r}, asked {b!r}" for n, a, b in zip(names, theirs, ours) if a != b)
        raise store.IndexStale(f"{out}: an index of {store.describe(meta)}, not of this ({diff}); choose another "
                               f"--out or delete it")
    import json

    index = faiss.read_index(str(out / store.ENGINE))
    bank = BankStats.load(out / store.BANK) if meta["qbnorm"] and (out / store.BANK).exists() else None
    videos = json.loads((out / store.VIDEOS).read_text())
    if index.ntotal != len(videos["ids"]) or meta["n_videos"] != len(videos["ids"]):
        return None  # an update killed half-way: rebuild from scratch
    return {"meta": meta, "index": index, "bank": bank, "videos": videos}
