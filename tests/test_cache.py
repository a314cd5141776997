"""The HDF5 cache: round trip, crash-safe parts, settings refusal, the writer lock, combined caches."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from vtr.cache import (DONE, FAILED, CacheError, CacheWriter, TextRow, VideoRow, cache_summary, parts_dir,
                       read_cache, write_combined)

T, D = 4, 8
SETTINGS = {"dataset": "toy", "clip_model": "random:tiny", "fps": 1.0}


def video(i, n_frames=3, split="train", status=DONE):
    rng = np.random.default_rng(i)
    frames = rng.normal(size=(n_frames, D)).astype(np.float16) if status == DONE else np.zeros((0, D), np.float16)
    return VideoRow(f"v{i}", split, f"/videos/v{i}.mp4", 2.5 + i, frames, status, "" if status == DONE else "bad")


def text(i, k, split="train"):
    return TextRow(f"v{i}#{k}", f"v{i}", split, f"caption {k} of video {i}",
                   np.full(D, i + k / 10, dtype=np.float16))


def test_round_trip(tmp_path):
    path = tmp_path / "toy.h5"
    rows = [video(0, 3), video(1, 4, "test"), video(2, 0, "test", FAILED)]
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D, flush_every=2) as w:
        for r in rows:
            w.add_video(r)
        for i in range(3):
            for k in range(2):
                w.add_text(text(i, k, rows[i].split))
        w.commit()
    assert path.exists() and not parts_dir(path).exists()

    data = read_cache(path)
    assert data.video_ids == ["v0", "v1", "v2"]
    assert data.frames.shape == (3, T, D) and data.frames.dtype == np.float16
    np.testing.assert_array_equal(data.frames[0, :3], rows[0].frames)
    np.testing.assert_array_equal(data.frames[0, 3], 0)  # padding
    np.testing.assert_array_equal(data.frame_mask[0], [True, True, True, False])
    np.testing.assert_array_equal(data.frame_mask[1], [True] * 4)
    assert list(data.video_ok) == [True, True, False]
    assert list(data.video_split) == ["train", "test", "test"]
    assert data.text_ids == ["v0#0", "v0#1", "v1#0", "v1#1", "v2#0", "v2#1"]
    np.testing.assert_array_equal(data.text_video, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(data.text_emb[3], np.full(D, 1.1, np.float16))
    assert data.attrs["clip_model"] == "random:tiny" and data.attrs["max_frames"] == T

    with h5py.File(path) as f:  # the schema other tools see
        assert f.attrs["schema_version"] == 2
        assert f["videos/reason"].asstr()[2] == "bad"
        assert f["videos/duration"][1] == pytest.approx(3.5)
        np.testing.assert_array_equal(f["texts/video_index"][()], [0, 0, 1, 1, 2, 2])

    test = data.select("test")  # failed video and its captions drop out
    assert test.video_ids == ["v1"] and test.text_ids == ["v1#0", "v1#1"]
    np.testing.assert_array_equal(test.text_video, [0, 0])

    s = cache_summary(path)
    assert s["videos"] == 2 and s["captions"] == 6 and s["failed_videos"] == {"v2": "bad"}
    assert s["splits"]["test"] == {"videos": 1, "captions": 4}


def test_uncommitted_parts_are_readable_and_resume(tmp_path):
    """What a killed run leaves (whole parts, no new main file) reads fine and is picked up next time."""
    path = tmp_path / "toy.h5"
    w = CacheWriter(path, SETTINGS, max_frames=T, dim=D, flush_every=2)
    with w:
        for i in range(5):
            w.add_video(video(i))
        # no commit: as if killed after two parts were written (the 5th row is still buffered)
        w._videos.clear()
    assert not path.exists() and len(list(parts_dir(path).glob("part-*.h5"))) == 2
    assert read_cache(path).video_ids == ["v0", "v1", "v2", "v3"]
    assert cache_summary(path)["unfinished_parts"] == 2

    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:
        assert w.video_ids == {"v0", "v1", "v2", "v3"}
        w.add_video(video(4))
        w.commit()
    assert read_cache(path).video_ids == ["v0", "v1", "v2", "v3", "v4"]
    assert not parts_dir(path).exists()


def test_later_row_wins_and_duplicates_after_commit_crash(tmp_path):
    path = tmp_path / "toy.h5"
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:
        w.add_video(video(0, 0, status=FAILED))
        w.add_video(video(1))
        w.commit()
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:
        w.add_video(video(0))  # a retried video
        w.flush()
    # The part is also in the main file when a run died between replacing the main file and deleting
    # the parts: simulate by keeping a copy of the part.
    part = next(parts_dir(path).glob("part-*.h5"))
    keep = part.read_bytes()
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:
        w.commit()
    parts_dir(path).mkdir()
    part.write_bytes(keep)
    data = read_cache(path)
    assert data.video_ids == ["v0", "v1"] and list(data.video_ok) == [True, True]


def test_updates_and_removals_survive_a_kill_between_commit_and_deleting_parts(tmp_path):
    """A part holding a row the commit then updated or removed must not bring the old row back."""
    path = tmp_path / "toy.h5"
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:
        w.add_video(video(0))
        w.add_text(text(0, 0))
        w.commit()
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:  # a run killed after writing a part
        w.add_video(video(1))
        w.add_text(text(1, 0))
        w.add_video(video(2))
        w.flush()
    kept = {p.name: p.read_bytes() for p in parts_dir(path).glob("part-*.h5")}
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:  # the next run, after the annotations changed
        w.update_video("v2", split="test")
        w.remove(["v1"])
        w.commit()
    want = read_cache(path)
    assert want.video_ids == ["v0", "v2"] and list(want.video_split) == ["train", "test"]
    assert want.text_ids == ["v0#0"]  # v1's caption went with it
    parts_dir(path).mkdir()  # killed between renaming the new main file and deleting the parts
    for name, data in kept.items():
        (parts_dir(path) / name).write_bytes(data)
    data = read_cache(path)
    assert data.video_ids == want.video_ids and list(data.video_split) == ["train", "test"]
    assert data.text_ids == ["v0#0"]
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:  # the next writer drops them
        assert w.video_ids == {"v0", "v2"}
    assert not parts_dir(path).exists()


def test_dataset_settings_are_compared_per_key_and_adopted_by_older_caches(tmp_path):
    path = tmp_path / "toy.h5"
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:  # made before dataset_settings existed
        w.add_video(video(0))
        w.commit()
    seeded = dict(SETTINGS, dataset_settings={"seed": 0, "width": 128})
    with CacheWriter(path, seeded, max_frames=T, dim=D) as w:  # adopted, written at the commit
        w.add_video(video(1))
        w.commit()
    assert read_cache(path).attrs["dataset_settings"] == {"seed": 0, "width": 128}
    with pytest.raises(CacheError, match=r"dataset_settings\.seed: cache has 0, asked 1") as e:
        CacheWriter(path, dict(SETTINGS, dataset_settings={"seed": 1, "width": 128}), max_frames=T,
                    dim=D).__enter__()
    assert "width" not in str(e.value)
    with pytest.raises(CacheError, match="dataset_settings: cache has"):  # once there, it is a setting
        CacheWriter(path, SETTINGS, max_frames=T, dim=D).__enter__()


def test_other_settings_are_refused(tmp_path):
    path = tmp_path / "toy.h5"
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:
        w.add_video(video(0))
        w.commit()
    with pytest.raises(CacheError, match="max_frames: cache has 4, asked 5"):
        CacheWriter(path, SETTINGS, max_frames=T + 1, dim=D).__enter__()
    with pytest.raises(CacheError, match="clip_model"):
        CacheWriter(path, dict(SETTINGS, clip_model="ViT-B/32"), max_frames=T, dim=D).__enter__()
    assert read_cache(path).video_ids == ["v0"]  # nothing lost


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "toy.h5"
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D):
        with pytest.raises(CacheError, match="another `vtr extract` is writing"):
            CacheWriter(path, SETTINGS, max_frames=T, dim=D).__enter__()


def test_not_a_cache(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match="bad.h5"):
        read_cache(bad)
    with pytest.raises(CacheError, match="no such cache"):
        read_cache(tmp_path / "missing.h5")


def test_phrases_round_trip(tmp_path):
    path = tmp_path / "toy.h5"
    phrase_emb = np.arange(3 * D, dtype=np.float16).reshape(3, D)
    row = TextRow("v0#0", "v0", "train", "a man slices a tomato in the kitchen", np.ones(D, np.float16),
                  parse='{"action": ["slices a tomato"], "entity": ["a man"], "scene": []}',
                  phrase_emb=phrase_emb, phrase_mask=np.array([True, True, False]))
    with CacheWriter(path, SETTINGS, max_frames=T, dim=D) as w:
        w.add_video(video(0))
        w.add_text(row)
        w.add_text(text(0, 1))  # no parse given: no phrases
        w.commit()
    data = read_cache(path)
    np.testing.assert_array_equal(data.phrase_emb[0], phrase_emb)
    np.testing.assert_array_equal(data.phrase_mask, [[True, True, False], [False, False, False]])
    with h5py.File(path) as f:
        assert f["texts/parse"].asstr()[0] == row.parse
    assert data.select("train").phrase_emb.shape == (2, 3, D)


def _toy_cache(path, ids, settings=SETTINGS):
    with CacheWriter(path, settings, max_frames=T, dim=D) as w:
        for i in ids:
            w.add_video(video(i, split="test"))
            w.add_text(text(i, 0, "test"))
        w.commit()
    return path


def test_combined_cache_reads_its_sources_without_copying(tmp_path):
    a = _toy_cache(tmp_path / "s" / "a.h5", [0, 1])
    empty = _toy_cache(tmp_path / "s" / "empty.h5", [])  # an empty source is a valid cache, and combines
    b = _toy_cache(tmp_path / "s" / "b.h5", [2])
    out = tmp_path / "all.h5"
    info = write_combined(out, [a, empty, b])
    assert [s["file"] for s in info["shards"]] == ["s/a.h5", "s/empty.h5", "s/b.h5"]
    data = read_cache(out)
    assert data.video_ids == ["v0", "v1", "v2"] and data.text_ids == ["v0#0", "v1#0", "v2#0"]
    np.testing.assert_array_equal(data.frames, np.concatenate([read_cache(a).frames, read_cache(b).frames]))
    with h5py.File(out) as f:
        assert f["videos/frames"].is_virtual and f["texts/parse"].is_virtual
        np.testing.assert_array_equal(f["texts/video_index"][()], [0, 1, 2])  # shifted to the combined rows
    assert cache_summary(out)["combined"]["shards"][2]["videos"] == 1

    with pytest.raises(CacheError, match="read-only"):  # appending would write beside the virtual data
        CacheWriter(out, SETTINGS, max_frames=T, dim=D).__enter__()
    with pytest.raises(CacheError, match="holds an extracted cache"):
        write_combined(a, [b])
    other = _toy_cache(tmp_path / "s" / "other.h5", [3], dict(SETTINGS, fps=2.0))
    with pytest.raises(CacheError, match="other.h5: made with other settings.*\n  fps: a.h5 has 1.0, other.h5 has 2.0"):
        write_combined(tmp_path / "mixed.h5", [a, other])

    _toy_cache(b, [2, 4])  # b written again after combining
    with pytest.raises(CacheError, match="s/b.h5 changed after it was combined"):
        read_cache(out)
    b.unlink()
    with pytest.raises(CacheError, match="s/b.h5 is missing"):
        read_cache(out)

    write_combined(tmp_path / "copy.h5", [a, empty], copy=True)
    with h5py.File(tmp_path / "copy.h5") as f:
        assert not f["videos/frames"].is_virtual
    assert read_cache(tmp_path / "copy.h5").video_ids == ["v0", "v1"]
