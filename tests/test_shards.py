"""Sharded extraction: a stable partition of the videos, shard caches combined without copying, failures named."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from vtr.cache import CacheError, CacheWriter, VideoRow, cache_summary, parts_dir, read_cache
from vtr.cli import main
from vtr.eval.stage import evaluate_zero_shot
from vtr.extract.datasets import load_dataset
from vtr.extract.stage import run_extract
from vtr.cache.records import CaptionItem, Dataset, VideoItem
from vtr.extract.shards import (ShardError, combine_shards, parse_shard, shard_dataset, shard_of, shard_path,
                        shards_dir)

N = 3
QUIET = dict(progress=False, log=lambda msg: None)
NOLOG = dict(log=lambda msg: None)
# CLIP on CPU is not batch-invariant: a video or caption encoded beside others can differ in its last
# float16 bit, and a shard batches other neighbours than a single run. So the shards are compared with a
# single run to within one float16 step, and the combined cache with its shards bit for bit.
FP16_STEP = dict(rtol=2 ** -10, atol=2 ** -20)


def toy_dataset(ids) -> Dataset:
    return Dataset("toy", [VideoItem(v, f"/v/{v}.mp4", "train") for v in ids],
                   [CaptionItem(f"{v}#{k}", v, f"caption {k}", "train") for v in ids for k in range(2)])


# ----------------------------------------------------------------------------- the partition


def test_shards_cover_every_video_once_and_are_stable():
    ids = [f"video{i:05d}" for i in range(2000)] + ["ünïcode clip", "a/b/c", ""]
    ds = toy_dataset(ids)
    parts = [shard_dataset(ds, i, 7) for i in range(7)]
    seen = [v.id for p in parts for v in p.videos]
    assert sorted(seen) == sorted(ids)  # each video in exactly one shard
    for p in parts:  # captions go with their video
        assert {c.video_id for c in p.captions} == {v.id for v in p.videos}
        assert len(p.captions) == 2 * len(p.videos)
        assert 2003 / 7 * 0.8 < len(p.videos) < 2003 / 7 * 1.2  # a hash spreads them evenly

    reordered = toy_dataset(list(reversed(ids)))  # a reordered annotation file
    grown = toy_dataset(ids + [f"new{i}" for i in range(500)])  # videos added later
    for i in range(7):
        before = {v.id for v in parts[i].videos}
        assert {v.id for v in shard_dataset(reordered, i, 7).videos} == before
        assert {v.id for v in shard_dataset(grown, i, 7).videos} & set(ids) == before
    # A fixed hash, not Python's per-process salted hash(): these values hold on every machine.
    assert [shard_of(v, 16) for v in ("video00000", "video00001", "msvd_-4wsuPCjDBc_5_15")] == \
        [shard_of(v, 16) for v in ("video00000", "video00001", "msvd_-4wsuPCjDBc_5_15")]
    assert shard_of("video00000", 1) == 0


def test_shard_spec_and_names():
    assert parse_shard("3/16") == (3, 16) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("16/16", "-1/4", "3", "a/b", "1/0"):
        with pytest.raises(ValueError, match="I/N"):
            parse_shard(bad)
    assert shards_dir("cache/msvd.h5").as_posix() == "cache/msvd.shards"
    assert shard_path("cache/msvd.h5", 3, 16).as_posix() == "cache/msvd.shards/shard-003-of-016.h5"
    assert shard_path("x.h5", 12, 1024).name == "shard-0012-of-1024.h5"


# ----------------------------------------------------------------------------- combining real shard caches


@pytest.fixture(scope="module")
def subset(synthetic_root, tmp_path_factory):
    """9 of the session's synthetic clips as a byo JSONL (a dataset the CLI and Ray workers can read)."""
    ann = tmp_path_factory.mktemp("subset") / "annotations.jsonl"
    lines = (synthetic_root / "annotations.jsonl").read_text().splitlines()[:9]
    ann.write_text("\n".join(lines) + "\n")
    return synthetic_root, ann


@pytest.fixture(scope="module")
def built(subset, tiny_clip, tmp_path_factory):
    """A single run and the same data as 3 shards (made with `vtr extract --shard`), combined."""
    root, ann = subset
    work = tmp_path_factory.mktemp("shards")
    ds = load_dataset("byo", root, annotations=ann)
    run_extract(ds, tiny_clip, work / "single.h5", **QUIET)
    out = work / "sharded.h5"
    for i in range(N):
        r = CliRunner().invoke(main, ["extract", "--dataset", "byo", "--root", str(root), "--annotations", str(ann),
                                      "--clip", "random:tiny", "--precision", "fp32", "--device", "cpu", "--out", str(out),
                                      "--shard", f"{i}/{N}", "--quiet"])
        assert r.exit_code == 0, r.output
        assert f"vtr combine {out}" in r.output
    r = CliRunner().invoke(main, ["combine", str(out)])
    assert r.exit_code == 0, r.output
    assert "combined 3 of 3 shards (9 videos, 45 captions)" in r.output
    return work, ds


def by_id(ids, rows):
    return rows[np.argsort(np.asarray(ids))]


def assert_same_cache(a, b, exact=True):
    """Same videos, captions, masks and embeddings, whatever the row order (embeddings: see FP16_STEP)."""
    assert sorted(a.video_ids) == sorted(b.video_ids) and sorted(a.text_ids) == sorted(b.text_ids)
    for field in ("frame_mask", "video_split", "video_ok"):
        np.testing.assert_array_equal(by_id(a.video_ids, getattr(a, field)), by_id(b.video_ids, getattr(b, field)))
    for field in ("phrase_mask", "text_split"):
        np.testing.assert_array_equal(by_id(a.text_ids, getattr(a, field)), by_id(b.text_ids, getattr(b, field)))
    same = np.testing.assert_array_equal if exact else (
        lambda x, y: np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), **FP16_STEP))
    same(by_id(a.video_ids, a.frames), by_id(b.video_ids, b.frames))
    same(by_id(a.text_ids, a.text_emb), by_id(b.text_ids, b.text_emb))
    same(by_id(a.text_ids, a.phrase_emb), by_id(b.text_ids, b.phrase_emb))
    for data in (a, b):  # every caption still points at its own video
        assert all(t.split("#")[0] == data.video_ids[v] for t, v in zip(data.text_ids, data.text_video))
    assert dict(zip(a.text_ids, a.captions)) == dict(zip(b.text_ids, b.captions))
    assert {k: v for k, v in a.attrs.items() if k != "path"} == {k: v for k, v in b.attrs.items() if k != "path"}


def shards_concatenated(out, n):
    """The shard caches read one by one and stacked in shard order: what the combined cache must hold."""
    parts = [read_cache(shard_path(out, i, n)) for i in range(n)]
    return parts[0].__class__(
        video_ids=[v for p in parts for v in p.video_ids], frames=np.concatenate([p.frames for p in parts]),
        frame_mask=np.concatenate([p.frame_mask for p in parts]),
        video_split=np.concatenate([p.video_split for p in parts]),
        video_ok=np.concatenate([p.video_ok for p in parts]), text_ids=[t for p in parts for t in p.text_ids],
        captions=[c for p in parts for c in p.captions],
        text_video=np.concatenate([p.text_video + sum(len(q.video_ids) for q in parts[:k])
                                   for k, p in enumerate(parts)]),
        text_split=np.concatenate([p.text_split for p in parts]), text_emb=np.concatenate([p.text_emb for p in parts]),
        attrs=parts[0].attrs, phrase_emb=np.concatenate([p.phrase_emb for p in parts]),
        phrase_mask=np.concatenate([p.phrase_mask for p in parts]))


def test_combined_equals_single_run_without_copying(built):
    work, ds = built
    single, combined = read_cache(work / "single.h5"), read_cache(work / "sharded.h5")
    assert_same_cache(single, combined, exact=False)
    stacked = shards_concatenated(work / "sharded.h5", N)  # combining itself changes no bit
    assert_same_cache(stacked, combined)
    assert combined.video_ids == stacked.video_ids and combined.text_ids == stacked.text_ids
    np.testing.assert_array_equal(combined.text_video, stacked.text_video)
    # Rows are in shard order; within a shard, in dataset order.
    order = [v.id for i in range(N) for v in shard_dataset(ds, i, N).videos]
    assert combined.video_ids == order

    with h5py.File(work / "sharded.h5") as f:  # the big datasets are virtual, over the shard files
        for name in ("videos/frames", "texts/embedding", "texts/phrase_embedding", "texts/caption"):
            assert f[name].is_virtual
            files = {m.file_name for m in f[name].virtual_sources()}
            assert files == {f"sharded.shards/shard-00{i}-of-003.h5" for i in range(N)}
        index = f["texts/video_index"][()]
        assert not f["texts/video_index"].is_virtual
        np.testing.assert_array_equal(index, combined.text_video)
    shard_bytes = sum(p.stat().st_size for p in shards_dir(work / "sharded.h5").glob("*.h5"))
    assert (work / "sharded.h5").stat().st_size < shard_bytes / 5


def test_fit_and_eval_read_the_combined_cache(built, tmp_path):
    from vtr.train.fit import FitConfig, fit

    work, _ = built
    zs_shards = evaluate_zero_shot(work / "sharded.h5", data=shards_concatenated(work / "sharded.h5", N))
    zs_combined = evaluate_zero_shot(work / "sharded.h5")
    assert zs_combined["n_videos"] == 3 and zs_combined["n_texts"] == 15  # the test split of the 9 clips
    assert zs_combined["t2v"] == zs_shards["t2v"] and zs_combined["v2t"] == zs_shards["v2t"]
    fit(work / "sharded.h5", tmp_path / "run", FitConfig(epochs=1, batch_size=4, device="cpu"), progress=False,
        log=lambda m: None)
    assert (tmp_path / "run" / "best.safetensors").exists()
    s = cache_summary(work / "sharded.h5")
    assert s["combined"]["n"] == N and len(s["combined"]["shards"]) == N
    r = CliRunner().invoke(main, ["info", str(work / "sharded.h5")])
    assert r.exit_code == 0 and "combined from 3 of 3 shards" in r.output


def test_the_folder_can_move(built, tmp_path):
    work, _ = built
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy2(work / "sharded.h5", moved)
    shutil.copytree(shards_dir(work / "sharded.h5"), shards_dir(moved / "sharded.h5"))
    assert_same_cache(read_cache(work / "sharded.h5"), read_cache(moved / "sharded.h5"))


@pytest.fixture()
def copy_of(built, tmp_path):
    """A private copy of the sharded cache and its shards, for tests that break things."""
    work, _ = built
    shutil.copy2(work / "sharded.h5", tmp_path)
    shutil.copytree(shards_dir(work / "sharded.h5"), shards_dir(tmp_path / "sharded.h5"))
    return tmp_path / "sharded.h5"


def test_missing_shard_is_named(copy_of, built):
    shard_path(copy_of, 1, N).unlink()
    with pytest.raises(CacheError, match="shard-001-of-003.h5 is missing"):
        read_cache(copy_of)  # a virtual dataset would read zeros there: refused instead
    with pytest.raises(ShardError, match=r"1 of its 3 shards not ready[\s\S]*shard-001-of-003.h5: missing; "
                                         r"rerun `vtr extract ... --shard 1/3`"):
        combine_shards(copy_of, **NOLOG)

    report = combine_shards(copy_of, partial=True, **NOLOG)  # an explicit partial cache: the others
    assert report.combined == [0, 2] and list(report.left_out) == ["shard-001-of-003.h5"]
    data = read_cache(copy_of)
    assert set(data.video_ids) == {v.id for i in (0, 2) for v in shard_dataset(built[1], i, N).videos}
    r = CliRunner().invoke(main, ["info", str(copy_of)])
    assert "combined from 2 of 3 shards" in r.output and "left out shard-001-of-003.h5: missing" in r.output


def test_unfinished_shard_is_named(copy_of):
    # What a killed shard leaves: committed rows plus a whole part file the combined file could not see.
    shard = shard_path(copy_of, 2, N)
    parts_dir(shard).mkdir()
    shutil.copy2(shard, parts_dir(shard) / "part-000001.h5")
    with pytest.raises(ShardError, match="shard-002-of-003.h5: 1 uncommitted part files"):
        combine_shards(copy_of, **NOLOG)
    r = CliRunner().invoke(main, ["combine", str(copy_of)])
    assert r.exit_code != 0 and "shard-002-of-003.h5" in r.output and "--shard 2/3" in r.output


def test_shard_being_written_is_named(copy_of):
    shard = shard_path(copy_of, 1, N)
    data = read_cache(shard)
    settings = {k: v for k, v in data.attrs.items() if k != "path"}
    with CacheWriter(shard, settings, max_frames=data.max_frames, dim=data.dim):  # a run holds its lock
        with pytest.raises(ShardError, match="shard-001-of-003.h5: a run is writing it now"):
            combine_shards(copy_of, **NOLOG)
    combine_shards(copy_of, **NOLOG)


def test_shard_with_other_settings_is_refused(copy_of):
    with h5py.File(shard_path(copy_of, 1, N), "r+") as f:
        settings = json.loads(f.attrs["settings"])
        f.attrs["settings"] = json.dumps(dict(settings, clip_model="ViT-B/32", max_frames=64))
    with pytest.raises(CacheError, match=r"shard-001-of-003.h5: made with other settings[\s\S]*clip_model: "
                                         r"shard-000-of-003.h5 has 'random:tiny', shard-001-of-003.h5 has 'ViT-B/32'"):
        combine_shards(copy_of, **NOLOG)


def test_reextracted_shard_makes_the_combined_cache_stale(copy_of):
    shard = shard_path(copy_of, 0, N)
    data = read_cache(shard)
    new_id = next(f"added{k}" for k in range(1000) if shard_of(f"added{k}", N) == 0)
    settings = {k: v for k, v in data.attrs.items() if k != "path"}
    with CacheWriter(shard, settings, max_frames=data.max_frames, dim=data.dim) as w:  # shard 0 extracted again
        w.add_video(VideoRow(new_id, "test", "/v/new.mp4", 1.0, np.ones((2, data.dim), np.float16)))
        w.commit()
    with pytest.raises(CacheError, match="shard-000-of-003.h5 changed after it was combined.*vtr combine"):
        read_cache(copy_of)
    combine_shards(copy_of, **NOLOG)  # combining again brings it up to date
    assert len(read_cache(copy_of).video_ids) == 10 and new_id in read_cache(copy_of).video_ids


def test_foreign_shard_file_is_refused(copy_of):
    a, b = shard_path(copy_of, 0, N), shard_path(copy_of, 1, N)
    b.unlink()
    shutil.copy2(a, b)  # shard 0's data under shard 1's name
    with pytest.raises(ShardError, match=r"shard-001-of-003.h5: holds video '.*', which belongs to shard 0/3"):
        combine_shards(copy_of, **NOLOG)


def test_combined_cache_is_read_only_and_never_overwrites_a_cache(copy_of, built):
    data = read_cache(copy_of)
    with pytest.raises(CacheError, match="combined from 3 shard caches and is read-only"):
        CacheWriter(copy_of, {}, max_frames=data.max_frames, dim=data.dim).__enter__()
    single = copy_of.with_name("single.h5")
    shutil.copy2(built[0] / "single.h5", single)
    shutil.copytree(shards_dir(copy_of), shards_dir(single))
    with pytest.raises(CacheError, match="holds an extracted cache"):
        combine_shards(single, **NOLOG)
    assert read_cache(single).video_ids == read_cache(built[0] / "single.h5").video_ids  # untouched


def test_copy_makes_a_standalone_cache(copy_of, built):
    out = copy_of.with_name("copied.h5")
    shutil.copytree(shards_dir(copy_of), shards_dir(out))
    r = CliRunner().invoke(main, ["combine", str(out), "--copy"])
    assert r.exit_code == 0 and "copied into a standalone cache" in r.output
    shutil.rmtree(shards_dir(out))  # no longer needed
    with h5py.File(out) as f:
        assert not f["videos/frames"].is_virtual
    assert_same_cache(read_cache(built[0] / "sharded.h5"), read_cache(out))


def test_no_shards_and_mixed_splittings(tmp_path, copy_of):
    with pytest.raises(ShardError, match="no shard caches there"):
        combine_shards(tmp_path / "none.h5", **NOLOG)
    shutil.copy2(shard_path(copy_of, 0, N), shards_dir(copy_of) / "shard-000-of-002.h5")
    with pytest.raises(ShardError, match=r"several splittings \(of 2, 3\)"):
        combine_shards(copy_of, **NOLOG)
    assert combine_shards(copy_of, n=3, **NOLOG).combined == [0, 1, 2]


def test_empty_shard_is_a_valid_cache(tmp_path, tiny_clip):
    ds = replace(toy_dataset(["only-one"]), videos=[], captions=[])
    run_extract(ds, tiny_clip, tmp_path / "empty.h5", **QUIET)  # nothing to do still leaves a cache
    data = read_cache(tmp_path / "empty.h5")
    assert data.video_ids == [] and data.frames.shape[0] == 0


def test_cli_refuses_bad_shard_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were a check to pass, nothing lands in the source tree

    def extract(*args):
        return CliRunner().invoke(main, ["extract", "--dataset", "synthetic", "--clip", "random:tiny", *args])

    r = extract("--shard", "3/3")
    assert r.exit_code != 0 and "--shard must be I/N with 0 <= I < N" in r.output
    r = extract("--ray")
    assert r.exit_code != 0 and "--ray needs --shards N" in r.output
    r = extract("--shards", "4")
    assert r.exit_code != 0 and "--ray and --shards N go together" in r.output
    r = extract("--shard", "0/2", "--ray", "--shards", "2")
    assert r.exit_code != 0 and "choose one" in r.output
    r = CliRunner().invoke(main, ["combine", "--help"])
    assert r.exit_code == 0 and "--partial" in r.output and "--copy" in r.output
