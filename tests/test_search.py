"""Search: the exhaustive index ranks as `vtr eval` does (raw and QB-Norm), stale indexes are refused, a grown
cache adds only its new videos, approximate engines store their recall, and a sentence goes end to end."""
from __future__ import annotations

import json
import math
import shutil

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vtr.cache import CacheWriter, TextRow, VideoRow, read_cache
from vtr.cli import main
from vtr.extract.decode import kept_frame_times
from vtr.eval.evaluate import chunked_ranks
from vtr.train.encode import encode_all, score_matrix
from vtr.core.metrics import retrieval_metrics
from vtr.eval.rescore import qbnorm_t2v
from vtr.search.index import SearchIndex, build_index
from vtr.search.store import IndexStale
from vtr.search.vectors import caption_vectors, video_vectors
from vtr.train.fit import FitConfig, fit
from vtr.train.heads import MeanP

D, T = 32, 6
SETTINGS = {"dataset": "toy", "clip_model": "synthetic", "clip_sha256": "", "fps": 1.0, "max_words": 32}


def toy_rows(n_train=160, n_test=120, captions=3, seed=0, dim=D):
    """Random features with a latent per video; the last two test videos duplicate two others (exact ties)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    z = rng.normal(size=(n, dim))
    frames = z[:, None] + 0.6 * rng.normal(size=(n, T, dim))
    lengths = rng.integers(2, T + 1, size=n)
    frames[n - 2], lengths[n - 2] = frames[n_train], lengths[n_train]
    frames[n - 1], lengths[n - 1] = frames[n_train + 1], lengths[n_train + 1]
    A = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    # frames sampled at 1/s before the choice of T (as the decoder samples them), and the times it keeps
    sampled = np.where(lengths < T, lengths, rng.integers(T, 3 * T, size=n))
    videos, texts = [], []
    for i in range(n):
        split = "train" if i < n_train else "test"
        videos.append(VideoRow(f"v{i:03d}", split, f"/data/toy/v{i:03d}.mp4", float(sampled[i]) - 0.5,
                               frames[i, :lengths[i]].astype(np.float16),
                               frame_times=kept_frame_times(int(sampled[i]), 1.0, T)))
        for c in range(captions):
            emb = z[i] @ A.T + 0.4 * rng.normal(size=dim)
            texts.append(TextRow(f"v{i:03d}#{c}", f"v{i:03d}", split, f"caption {c} of v{i:03d}", emb.astype(np.float16),
                                 phrase_emb=rng.normal(size=(3, dim)).astype(np.float16),
                                 phrase_mask=rng.random(3) > 0.3))
    return videos, texts


def write(path, videos, texts):
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D, flush_every=1000) as w:
        for v in videos:
            if v.id not in w.video_ids:
                w.add_video(v)
        for t in texts:
            if t.id not in w.text_ids and t.video_id in w.video_status:
                w.add_text(t)
        w.commit()
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    videos, texts = toy_rows()
    cache = write(root / "toy.h5", videos, texts)
    run = fit(cache, root / "run", FitConfig(model="camoe", epochs=2, batch_size=32, lr=3e-3, num_threads=2),
              progress=False, log=lambda m: None)
    return root, cache, run


def search_ranks(index: SearchIndex, q: np.ndarray, own: list[str], qbnorm=False) -> np.ndarray:
    """Each query's rank of its own video in the full result list, ties counted eval's way (>=)."""
    scores, idx = index.rank_vectors(q, len(index.ids), qbnorm)
    pos = {v: i for i, v in enumerate(index.ids)}
    ranks = []
    for s, i, vid in zip(scores, idx, own):
        mine = s[list(i).index(pos[vid])]
        ranks.append(int((s >= mine).sum()))
    return np.asarray(ranks)


def near_ties(logits: torch.Tensor, text_video, tol: float) -> np.ndarray:
    """Captions whose own video's score has another video within ``tol`` (float32 rounding may reorder them)."""
    own = logits[torch.arange(len(logits)), torch.as_tensor(text_video)]
    close = ((logits - own[:, None]).abs() <= tol).sum(1) - 1
    return (close > 0).numpy()


def compare(mine, theirs, ties, label):
    differ = mine != theirs
    assert not (differ & ~ties).any(), f"{label}: ranks differ beyond float32 near-ties: {np.flatnonzero(differ & ~ties)}"
    assert differ.sum() <= max(1, len(mine) // 100), f"{label}: {differ.sum()} near-tie swaps"


def recall_equal(mine, theirs):
    """R@1/5/10 and MdR equal; the mean rank moves by at most the near-tie swaps (one place each)."""
    a, b = retrieval_metrics(mine), retrieval_metrics(theirs)
    assert {k: a[k] for k in ("R@1", "R@5", "R@10", "MdR")} == {k: b[k] for k in ("R@1", "R@5", "R@10", "MdR")}
    assert abs(a["MnR"] - b["MnR"]) <= np.abs(mine - theirs).sum() / len(mine) + 1e-9


def test_exact_index_ranks_as_eval(toy, tmp_path):
    root, cache, run = toy
    out = build_index(cache, tmp_path / "idx", run, split="test", progress=False)
    index = SearchIndex.open(out)
    data = read_cache(cache)
    test = data.select("test")
    head = index.head
    q = caption_vectors(head, test, np.arange(len(test.text_ids)))
    own = [test.video_ids[v] for v in test.text_video]
    t, gate, v = encode_all(head, test, 1024, "cpu")
    eval_raw, _ = chunked_ranks(head, t, gate, v, test.text_video)
    logits = score_matrix(head, t, gate, v)
    ties = near_ties(logits, test.text_video, 1e-5 * float(logits.abs().max()))
    mine = search_ranks(index, q, own)
    compare(mine, eval_raw, ties, "raw")
    recall_equal(mine, eval_raw)
    assert index.info["n_videos"] == len(test.video_ids) and index.info["engine"] == "Flat"
    # the duplicated videos tie exactly in both, and both count the tie against the model
    assert (mine == eval_raw).sum() >= len(mine) - ties.sum()

    # QB-Norm at query time against eval's non-transductive QB-Norm with the same bank (training captions)
    bank = encode_all(head, data.select("train"), 1024, "cpu")
    eval_qb, _ = chunked_ranks(head, t, gate, v, test.text_video, rescore="qbnorm", bank=bank)
    mine_qb = search_ranks(index, q, own, qbnorm=True)
    qb = qbnorm_t2v(logits / head.scale, score_matrix(head, *bank[:2], v) / head.scale)  # eval's definition
    top2 = logits.topk(2, dim=1).values
    top1_tie = ((top2[:, 0] - top2[:, 1]).abs() <= 1e-5 * float(logits.abs().max())).numpy()  # the rule may flip
    assert top1_tie.any()  # the duplicated videos tie at some captions' top-1: the tie rule is exercised
    allowed = near_ties(qb, test.text_video, 1e-5 * float(qb.abs().max())) | ties | (top1_tie & (eval_qb != eval_raw))
    compare(mine_qb, eval_qb, allowed, "qbnorm")
    recall_equal(mine_qb, eval_qb)
    assert not np.array_equal(mine_qb, mine)  # QB-Norm changed some ranks: the test compares something

    hits = index.search_vectors(q[:1], k=5, gate=np.full((1, 4), 0.25))
    assert [h.rank for h in hits[0]] == [1, 2, 3, 4, 5] and hits[0][0].captions
    assert set(hits[0][0].gate) == {"global", "action", "entity", "scene"}


def test_zero_shot_index_ranks_as_eval(toy, tmp_path):
    _, cache, _ = toy
    index = SearchIndex.open(build_index(cache, tmp_path / "zs", zero_shot=True, split="test", progress=False))
    test = read_cache(cache).select("test")
    head = MeanP(D)
    t, gate, v = encode_all(head, test, 1024, "cpu")
    eval_raw, _ = chunked_ranks(head, t, gate, v, test.text_video)
    q = caption_vectors(head, test, np.arange(len(test.text_ids)))
    logits = score_matrix(head, t, gate, v)
    mine = search_ranks(index, q, [test.video_ids[i] for i in test.text_video])
    compare(mine, eval_raw, near_ties(logits, test.text_video, 1e-5 * float(logits.abs().max())), "zero-shot")
    assert index.info["model"] == "meanP" and index.info["run"] is None


def test_scores_use_the_backbones_own_logit_scale(tmp_path):
    """An open_clip cache records its backbone's logit scale; the index's scores are logits at that scale,
    as vtr eval scores them (CLIP's 100 would be wrong for, say, a SigLIP backbone)."""
    videos, texts = toy_rows(n_train=0, n_test=20)
    with CacheWriter(tmp_path / "oc.h5", dict(SETTINGS, clip_logit_scale=30.0), max_frames=T, dim=D) as w:
        for v in videos:
            w.add_video(v)
        for t in texts:
            w.add_text(t)
        w.commit()
    index = SearchIndex.open(build_index(tmp_path / "oc.h5", tmp_path / "zs", zero_shot=True, split="test",
                                         progress=False))
    assert index.scale == pytest.approx(30.0, rel=1e-6)
    test = read_cache(tmp_path / "oc.h5").select("test")
    q = caption_vectors(MeanP(D), test, np.arange(3))
    scores, idx = index.rank_vectors(q, k=5)
    cos = np.einsum("bd,bkd->bk", q, video_vectors(MeanP(D), test, np.arange(len(test.video_ids)))[idx])
    assert np.allclose(scores, 30.0 * cos, rtol=1e-5, atol=1e-5)


def test_grown_cache_adds_only_new_videos_and_stale_is_refused(toy, tmp_path):
    root, _, run = toy
    videos, texts = toy_rows()
    first = [v for v in videos if v.split == "train" or int(v.id[1:]) < 250]
    cache = write(tmp_path / "grow.h5", first, texts)
    out = build_index(cache, tmp_path / "idx", run, split="test", progress=False)
    meta = json.loads((out / "index.json").read_text())
    assert meta["last_update"]["videos_encoded"] == 90 and meta["n_videos"] == 90

    write(cache, videos, texts)  # the cache grows by 30 test videos and their captions
    with pytest.raises(IndexStale, match=r"stale index: cache .*grow.h5 grew"):
        SearchIndex.open(out)
    build_index(cache, out, run, split="test", progress=False)
    meta = json.loads((out / "index.json").read_text())
    assert meta["last_update"] == {**meta["last_update"], "videos_encoded": 30, "videos_kept": 90,
                                   "bank_recomputed": False}
    grown = SearchIndex.open(out)
    fresh = SearchIndex.open(build_index(cache, tmp_path / "fresh", run, split="test", progress=False))
    assert grown.ids == fresh.ids
    np.testing.assert_array_equal(grown.active, fresh.active)
    np.testing.assert_allclose(grown.bank.lse, fresh.bank.lse, rtol=1e-6)
    q = caption_vectors(grown.head, read_cache(cache).select("test"), np.arange(50))
    for qb in (False, True):
        np.testing.assert_array_equal(grown.rank_vectors(q, 20, qb)[1], fresh.rank_vectors(q, 20, qb)[1])
    build_index(cache, out, run, split="test", progress=False)  # nothing new: nothing encoded, index unchanged
    assert json.loads((out / "index.json").read_text())["last_update"]["videos_encoded"] == 30
    build_index(cache, out, run, split="test", bank_split="test", progress=False)  # another QB-Norm bank asked
    rebanked = json.loads((out / "index.json").read_text())
    assert rebanked["bank"]["split"] == "test" and rebanked["last_update"]["bank_recomputed"]
    assert rebanked["last_update"]["videos_encoded"] == 0

    with pytest.raises(IndexStale, match="not of this"):  # another run into the same folder
        build_index(cache, out, zero_shot=True, split="test", progress=False)
    other = fit(cache, tmp_path / "other", FitConfig(model="camoe", epochs=1, batch_size=32, seed=1, num_threads=2),
                progress=False, log=lambda m: None)
    ckpt = run / meta["run"]["checkpoint"]  # the run's checkpoint is replaced (retrained elsewhere, say)
    shutil.copy(ckpt, tmp_path / "saved")
    try:
        shutil.copy(other / meta["run"]["checkpoint"], ckpt)
        with pytest.raises(IndexStale, match=r"stale index: run .* changed"):
            SearchIndex.open(out)
    finally:
        shutil.copy(tmp_path / "saved", ckpt)


def test_approximate_engine_stores_its_recall(toy, tmp_path):
    _, cache, run = toy
    out = build_index(cache, tmp_path / "hnsw", run, factory="HNSW8", search_params="efSearch=4", progress=False)
    index = SearchIndex.open(out)
    recall = json.loads((out / "index.json").read_text())["recall@10"]
    assert index.info["engine"] == "HNSW8" and 0 < index.info["recall@10"] <= 1
    assert recall["queries"] == 360 and recall["videos"] == 280  # the test captions, held out of the bank
    # the stored figure is what the engine gives against exact search on those captions
    data = read_cache(cache)
    q = caption_vectors(index.head, data, np.flatnonzero(data.text_split == "test"))
    exact = (torch.from_numpy(q) @ torch.from_numpy(index.engine.reconstruct_n(0, 280)).T).topk(10).indices.numpy()
    approx = index.rank_vectors(q, 10)[1]
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)]) == pytest.approx(recall["value"])
    with pytest.raises(ValueError, match="QB-Norm is not available"):
        index.rank_vectors(q[:1], 5, qbnorm=True)
    with pytest.raises(ValueError, match="IVF256,Flat.* on 120 vectors"):  # fewer vectors than lists: FAISS's reason
        build_index(cache, tmp_path / "ivf", run, factory="IVF256,Flat", split="test", progress=False)
    ivf = SearchIndex.open(build_index(cache, tmp_path / "ivf4", run, factory="IVF4,Flat", search_params="nprobe=4",
                                       split="test", progress=False))
    # every list probed: exhaustive, but for the duplicated videos, which tie at 10th place for a few captions
    assert 0.99 <= ivf.info["recall@10"] <= 1.0


def test_frame_times_stored_and_derived_for_old_caches(toy, tmp_path):
    _, cache, _ = toy
    data = read_cache(cache)
    assert np.array_equal(np.isnan(data.frame_times), ~data.frame_mask)
    old = tmp_path / "old.h5"
    shutil.copy(cache, old)
    with h5py.File(old, "a") as f:  # a cache written before frame times were kept
        del f["videos/frame_times"]
    assert np.isnan(read_cache(old).frame_times).all()
    index = SearchIndex.open(build_index(old, tmp_path / "idx", zero_shot=True, progress=False))
    rows = np.asarray(index.rows)
    np.testing.assert_array_equal(index.times, data.frame_times[rows])  # derived from fps and durations


def test_cli_search_a_sentence(toy, tiny_clip, tmp_path):
    """`vtr index --zero-shot` then `vtr search`: a sentence through the random CLIP's text tower (no videos
    needed: the cache holds features with the random CLIP's name and checksum); table and JSON."""
    videos, texts = toy_rows(n_train=20, n_test=20, dim=tiny_clip.dim)
    cache = tmp_path / "tiny.h5"
    settings = dict(SETTINGS, clip_model="random:tiny", clip_sha256=tiny_clip.sha256, clip_random=True)
    with CacheWriter(cache, settings, max_frames=T, dim=tiny_clip.dim) as w:
        for row in videos + texts:
            (w.add_video if isinstance(row, VideoRow) else w.add_text)(row)
        w.commit()
    r = CliRunner().invoke(main, ["index", "--zero-shot", "--cache", str(cache), "--out", str(tmp_path / "idx"),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["search", "a red circle moves left on the grass", "--index", str(tmp_path / "idx"),
                                  "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [h["rank"] for h in out["hits"]] == [1, 2, 3] and out["index"]["n_videos"] == 40
    for h in out["hits"]:
        row = [v.id for v in videos].index(h["video_id"])
        assert h["moment"] in videos[row].frame_times.tolist() and h["gate"] is None
        assert h["path"] == f"{h['video_id']}.mp4"  # relative to the videos' folder, the index's video root
    assert out["hits"][0]["score"] >= out["hits"][1]["score"] >= out["hits"][2]["score"]
    r = CliRunner().invoke(main, ["search", "a red circle", "--index", str(tmp_path / "idx"), "--qbnorm"])
    assert r.exit_code == 0 and "moment" in r.output and "random" in r.output, r.output
    r = CliRunner().invoke(main, ["search", "x", "--index", str(tmp_path)])
    assert r.exit_code != 0 and "not a vtr search index" in r.output


@pytest.mark.slow  # renders, extracts and trains on 24 clips
def test_sentence_end_to_end(synthetic_root, tiny_clip, tmp_path):
    """extract -> fit -> `vtr index` -> `vtr search` on rendered clips: the text query gets the cached
    embeddings bit for bit, its video's position is eval's rank, and moments are frame times."""
    from vtr.extract.datasets import load_dataset
    from vtr.extract.stage import run_extract

    cache = tmp_path / "synthetic.h5"
    ds = load_dataset("synthetic", synthetic_root, n_videos=24, progress=False)
    run_extract(ds, tiny_clip, cache, progress=False, log=lambda m: None)
    data = read_cache(cache)
    n_kept = data.frame_mask.sum(1)
    for i in range(len(data.video_ids)):  # the protocol's times, as the decoder kept them
        np.testing.assert_array_equal(data.frame_times[i, :n_kept[i]], kept_frame_times(int(n_kept[i]), 1.0, 12)
                                      if n_kept[i] < 12 else data.frame_times[i, :12])
    run = fit(cache, tmp_path / "run", FitConfig(model="camoe", epochs=2, batch_size=8, num_threads=2),
              progress=False, log=lambda m: None)
    r = CliRunner().invoke(main, ["index", "--run", str(run), "--cache", str(cache), "--split", "test",
                                  "--out", str(tmp_path / "idx"), "--quiet"])
    assert r.exit_code == 0, r.output
    test = data.select("test")
    caption, vid = test.captions[0], test.video_ids[test.text_video[0]]
    r = CliRunner().invoke(main, ["search", caption, "--index", str(tmp_path / "idx"), "-k", "100", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)["hits"]
    assert len(hits) == len(test.video_ids) and set(hits[0]["gate"]) == {"global", "action", "entity", "scene"}

    index = SearchIndex.open(tmp_path / "idx")
    enc = index.queries.encode([caption])  # as extraction encoded it, up to one float16 step (other batch shapes)
    np.testing.assert_allclose(enc.text["sentence"].numpy()[0], test.text_emb[0].astype(np.float32), rtol=1e-3)
    head = index.head
    t, gate, v = encode_all(head, test, 1024, "cpu")
    eval_rank = chunked_ranks(head, t, gate, v, test.text_video)[0][0]
    logits = score_matrix(head, t[:1], gate[:1], v)
    scores = [h["score"] for h in hits]
    if not near_ties(logits, test.text_video[:1], 1e-3 * float(logits.abs().max()))[0]:
        assert sum(s >= scores[[h["video_id"] for h in hits].index(vid)] for s in scores) == eval_rank
    for h in hits:
        assert h["moment"] is not None and 0 <= h["moment"] < 12 and h["path"].endswith(".mp4")
        assert math.isclose(h["moment"] % 1, 0) and h["captions"]
    r = CliRunner().invoke(main, ["search", caption, "--index", str(tmp_path / "idx"), "-k", "3", "--qbnorm"])
    assert r.exit_code == 0 and "moment" in r.output and "gate" in r.output, r.output


def test_exact_topk_in_blocks_equals_a_full_sort(monkeypatch):
    """The exact engine's blocked batch path (large batches) gives the full sort's top-k."""
    import vtr.search.engine as engine

    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((1000, 16), dtype=np.float32), rng.standard_normal((7, 16), dtype=np.float32)
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    for block in (1 << 26, 700, 30):  # one product, blocks of 100 rows, blocks of 10 rows (== k)
        monkeypatch.setattr(engine, "BLOCK", block)
        scores, idx = engine.exact_topk(x, q, 10)
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, want, 1), rtol=1e-5)
    scores, idx = engine.exact_topk(x, q[:1], 10)  # the single-query path
    np.testing.assert_array_equal(idx, want[:1])


def test_decoder_reports_the_kept_frames_times(synthetic_root):
    """sample_frames says when each kept frame is shown: frame i of the fps sampling at i / fps."""
    from vtr.extract.decode import sample_frames, uniform_indices

    path = sorted((synthetic_root / "videos").glob("*.mp4"))[0]
    for fps, max_frames in ((1.0, 12), (4.0, 5)):
        out = sample_frames(path, resolution=32, fps=fps, max_frames=max_frames)
        assert len(out.times) == len(out.frames)
        np.testing.assert_allclose(out.times, uniform_indices(out.n_sampled, max_frames) / fps)
