"""A rerun of `vtr extract` brings the cache in line with the annotations it was given, or says why not.

Each case goes through the CLI on a small bring-your-own dataset (synthetic clips + a CSV); the last test
kills an update run at several moments and checks that the resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from vtr.cache import parts_dir, read_cache
from vtr.cli import main

CLIP = ["--clip", "random:tiny", "--device", "cpu", "--precision", "fp32", "--workers", "1", "--quiet"]
N = 6  # clips in the byo dataset


def _clip_id(i: int) -> str:
    return f"synth_{i:05d}"


def _write_csv(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = root / "annotations.csv"
    lines = ["video,caption,split"] + [f'{v}.mp4,"{c}",{s}' for v, c, s in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(split_of=None, text_of=None, videos=range(N)) -> list[tuple[str, str, str]]:
    """Two captions per clip; clips 0-3 train, 4-5 test unless ``split_of`` says otherwise."""
    rows = []
    for i in videos:
        vid = _clip_id(i)
        split = (split_of or {}).get(vid, "train" if i < 4 else "test")
        for k in range(2):
            rows.append((vid, (text_of or {}).get(f"{vid}#{k}", f"clip {i} caption {k} a red ball rolls on grass"),
                         split))
    return rows


@pytest.fixture
def byo(tmp_path, synthetic_root):
    """A byo dataset folder holding copies of the first clips (so a test may replace one) and its CSV."""
    root = tmp_path / "byo"
    (root / "videos").mkdir(parents=True)
    for i in range(N + 1):
        shutil.copy2(synthetic_root / "videos" / f"{_clip_id(i)}.mp4", root / "videos")
    _write_csv(root, _rows())
    return root


def _extract(root: Path, out: Path, *extra: str):
    r = CliRunner().invoke(main, ["extract", "--dataset", "byo", "--root", str(root), "--annotations",
                                  str(root / "annotations.csv"), "--out", str(out), *CLIP, *extra])
    return r


def _ok(r):
    assert r.exit_code == 0, r.output
    return r


def _row(data, text_id: str) -> int:
    return data.text_ids.index(text_id)


def test_changed_caption_is_encoded_again(byo, tmp_path):
    out = tmp_path / "c.h5"
    _ok(_extract(byo, out))
    before = read_cache(out)
    new_text = "a purple star spins in the night sky"
    _write_csv(byo, _rows(text_of={"synth_00001#0": new_text}))

    r = _ok(_extract(byo, out))
    assert "nothing to do" not in r.output
    assert "1 captions changed text" in r.output and "1 captions changed" in r.stdout
    after = read_cache(out)
    n = _row(after, "synth_00001#0")
    assert after.captions[n] == new_text
    assert not np.allclose(after.text_emb[n].astype(np.float32), before.text_emb[n].astype(np.float32), atol=1e-2)
    # The other captions were not touched; the frames neither.
    others = [i for i in range(len(after.text_ids)) if i != n]
    np.testing.assert_array_equal(after.text_emb[others], before.text_emb[others])
    np.testing.assert_array_equal(after.frames, before.frames)
    # The new embedding (and phrase streams, and parse) is what a fresh extraction gives for the new text.
    fresh_out = tmp_path / "fresh.h5"
    _ok(_extract(byo, fresh_out))
    fresh = read_cache(fresh_out)
    m = _row(fresh, "synth_00001#0")
    np.testing.assert_allclose(after.text_emb[n].astype(np.float32), fresh.text_emb[m].astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(after.phrase_emb[n].astype(np.float32), fresh.phrase_emb[m].astype(np.float32),
                               atol=2e-3)
    with h5py.File(out) as f:
        assert new_text in f["texts/parse"].asstr()[n] and "night" in f["texts/parse"].asstr()[n]


def test_split_moved_to_test_is_updated_and_no_longer_trained_on(byo, tmp_path):
    out = tmp_path / "c.h5"
    _ok(_extract(byo, out))
    before = read_cache(out)
    moved = _clip_id(1)
    _write_csv(byo, _rows(split_of={moved: "test"}))

    r = _ok(_extract(byo, out))
    assert "nothing to do" not in r.output and "decoded 0 videos" in r.stdout  # no decoding for a split change
    assert "1 videos updated" in r.stdout and "2 captions updated" in r.stdout
    after = read_cache(out)
    row = after.video_ids.index(moved)
    assert after.video_split[row] == "test"
    assert {after.text_split[i] for i in range(len(after.text_ids)) if after.text_video[i] == row} == {"test"}
    np.testing.assert_array_equal(after.frames, before.frames)
    assert moved not in after.select("train").video_ids and moved in after.select("test").video_ids

    # A fit made from the updated cache trains on the 3 videos left in train, not on the moved one.
    r = CliRunner().invoke(main, ["fit", "--cache", str(out), "--run", str(tmp_path / "run"), "--epochs", "1",
                                  "--batch-size", "2", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "on 3 training videos" in r.output


def test_video_removed_from_annotations_is_reported_and_removed(byo, tmp_path):
    out = tmp_path / "c.h5"
    _ok(_extract(byo, out))
    gone = _clip_id(5)
    _write_csv(byo, _rows(videos=range(5)))

    kept = tmp_path / "kept.h5"
    shutil.copy(out, kept)
    r = _ok(_extract(byo, kept, "--keep-removed"))
    assert "keeping 1 videos and 2 captions" in r.output
    assert gone in read_cache(kept).video_ids
    r = _ok(_extract(byo, kept, "--keep-removed"))  # kept rows are no change: the rerun has nothing to do
    assert "nothing to do" in r.stdout and "keeping 1 videos and 2 captions" in r.output

    r = _ok(_extract(byo, out))
    assert "removing 1 videos and 2 captions that are no longer in the annotations" in r.output
    assert "1 videos removed, 2 captions removed" in r.stdout
    after = read_cache(out)
    assert gone not in after.video_ids and not any(t.startswith(gone) for t in after.text_ids)
    assert len(after.video_ids) == N - 1 and len(after.text_ids) == 2 * (N - 1)
    # A rerun with the same annotations has nothing left to do.
    assert "nothing to do" in _ok(_extract(byo, out)).stdout


def test_video_whose_file_is_missing_is_kept(byo, tmp_path):
    """The annotations still name it (only the disk lacks it, e.g. an unmounted drive): not a removal."""
    out = tmp_path / "c.h5"
    _ok(_extract(byo, out))
    before = read_cache(out)
    (byo / "videos" / f"{_clip_id(3)}.mp4").unlink()
    r = _ok(_extract(byo, out))
    assert "1 videos named in the annotations are missing" in r.output and "removing" not in r.output
    after = read_cache(out)
    assert after.video_ids == before.video_ids and after.text_ids == before.text_ids


def test_replaced_video_file_is_decoded_again(byo, tmp_path):
    out = tmp_path / "c.h5"
    _ok(_extract(byo, out))
    before = read_cache(out)
    target = byo / "videos" / f"{_clip_id(2)}.mp4"
    shutil.copy(byo / "videos" / f"{_clip_id(6)}.mp4", target)  # another clip's content, same name
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))

    r = _ok(_extract(byo, out))
    assert "1 video files changed" in r.output and "decoded 1 videos" in r.stdout
    after = read_cache(out)
    row = after.video_ids.index(_clip_id(2))
    assert not np.allclose(after.frames[row].astype(np.float32), before.frames[row].astype(np.float32), atol=1e-2)
    # Now the frames are those of the clip copied over it (extracted fresh from its own file).
    fresh_root = tmp_path / "fresh"
    (fresh_root / "videos").mkdir(parents=True)
    shutil.copy(byo / "videos" / f"{_clip_id(6)}.mp4", fresh_root / "videos")
    _write_csv(fresh_root, [(_clip_id(6), "a clip", "test")])
    _ok(_extract(fresh_root, tmp_path / "fresh.h5"))
    fresh = read_cache(tmp_path / "fresh.h5")
    np.testing.assert_allclose(after.frames[row].astype(np.float32), fresh.frames[0].astype(np.float32), atol=2e-3)
    others = [i for i in range(len(after.video_ids)) if i != row]
    np.testing.assert_array_equal(after.frames[others], before.frames[others])
    with h5py.File(out) as f:
        assert f["videos/file_size"][row] == target.stat().st_size
        assert f["videos/file_mtime_ns"][row] == target.stat().st_mtime_ns
    assert "nothing to do" in _ok(_extract(byo, out)).stdout


def test_synthetic_seed_is_a_setting_and_refused(tmp_path, synthetic_root):
    seed0 = tmp_path / "seed0"
    shutil.copytree(synthetic_root, seed0)
    out = tmp_path / "syn.h5"

    def run(root, seed):
        return CliRunner().invoke(main, ["extract", "--dataset", "synthetic", "--root", str(root), "--seed",
                                         str(seed), "--n-videos", "3", "--out", str(out), *CLIP])

    _ok(run(seed0, 0))
    before = read_cache(out)
    r = run(tmp_path / "seed1", 1)
    assert r.exit_code != 0
    # The existing "other settings" refusal, with one line naming the setting (the only one that differs).
    assert "was made with other settings" in r.output
    lines = [line.strip() for line in r.output.splitlines() if "cache has" in line]
    assert lines == ["dataset_settings.seed: cache has 0, asked 1"], r.output
    after = read_cache(out)
    assert after.captions == before.captions
    np.testing.assert_array_equal(after.frames, before.frames)


def test_info_shows_when_and_which_annotation_files(byo, tmp_path):
    out = tmp_path / "c.h5"
    _ok(_extract(byo, out))
    csv = byo / "annotations.csv"

    def shown():
        r = _ok(CliRunner().invoke(main, ["info", str(out)]))
        m = re.search(r"in line with its annotations since (\S+)", r.stdout)
        assert m, r.stdout
        return m.group(1), r.stdout

    at, text = shown()
    assert f"{csv.resolve()}  sha256 {hashlib.sha256(csv.read_bytes()).hexdigest()}" in text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at)

    _write_csv(byo, _rows(split_of={_clip_id(0): "val"}))
    _ok(_extract(byo, out))
    at2, text2 = shown()
    assert at2 >= at and hashlib.sha256(csv.read_bytes()).hexdigest() in text2
    r = _ok(CliRunner().invoke(main, ["info", str(out), "--json", str(tmp_path / "info.json")]))
    import json
    synced = json.loads((tmp_path / "info.json").read_text())["synced"]
    assert synced["annotations"][0]["path"] == str(csv.resolve()) and synced["changes"] == {
        "videos_updated": 1, "captions_updated": 2}


def _as_schema_1(path: Path) -> None:
    """Make a committed cache look as vtr wrote it before schema 2 (no stats, no synced record)."""
    with h5py.File(path, "r+") as f:
        for k in ("file_size", "file_mtime_ns", "frame_times"):
            if k in f["videos"]:
                del f["videos"][k]
        for k in ("synced", "folded_parts"):
            if k in f.attrs:
                del f.attrs[k]
        f.attrs["schema_version"] = 1


def test_cache_of_schema_1_reads_and_is_migrated_by_the_next_run(byo, tmp_path):
    out = tmp_path / "c.h5"
    _ok(_extract(byo, out))
    before = read_cache(out)
    _as_schema_1(out)
    old = read_cache(out)  # reads with defaults
    assert old.video_ids == before.video_ids
    np.testing.assert_array_equal(old.frames, before.frames)

    r = _ok(_extract(byo, out))  # adopts the files' stats: nothing decoded, the file rewritten at schema 2
    assert "decoded 0 videos" in r.stdout or "nothing to do" in r.stdout
    with h5py.File(out) as f:
        assert f.attrs["schema_version"] == 2 and "synced" in f.attrs
        assert (f["videos/file_size"][()] > 0).all()
    np.testing.assert_array_equal(read_cache(out).frames, before.frames)
    # From now on a changed file is noticed.
    target = byo / "videos" / f"{_clip_id(0)}.mp4"
    shutil.copy(byo / "videos" / f"{_clip_id(6)}.mp4", target)
    assert "decoded 1 videos" in _ok(_extract(byo, out)).stdout


# ----------------------------------------------------------------------------- kill safety of an update run

_KILLER = '''
import os, signal, sys
import vtr.cache.writer as c

moment, args = sys.argv[1], sys.argv[2:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def is_part(path):
    return path.parent.name.endswith(".parts")

write_file, replace = c._write_file, c._durable_replace

def write_file_then_die(path, *a, **k):  # "part": right after the update run's first part file
    write_file(path, *a, **k)
    if is_part(path):
        die()

def die_before_main(tmp, path):  # "commit": the new main file written, not yet renamed into place
    if not is_part(path):
        die()
    replace(tmp, path)

def die_after_main(tmp, path):  # "folded": the new main file in place, its parts not yet deleted
    replace(tmp, path)
    if not is_part(path):
        die()

if moment == "part":
    c._write_file = write_file_then_die
elif moment == "commit":
    c._durable_replace = die_before_main
elif moment == "folded":
    c._durable_replace = die_after_main
from vtr.cli import main
main(args)
'''


def _cli_args(root: Path, out: Path) -> list[str]:
    return ["extract", "--dataset", "byo", "--root", str(root), "--annotations", str(root / "annotations.csv"),
            "--out", str(out), "--flush-every", "1", *CLIP]


def _columns(path: Path) -> dict:
    data = read_cache(path)
    with h5py.File(path) as f:
        stat = (f["videos/file_size"][()].tolist(), f["videos/file_mtime_ns"][()].tolist())
    return {"video_ids": data.video_ids, "video_split": list(data.video_split), "text_ids": data.text_ids,
            "captions": data.captions, "text_split": list(data.text_split), "text_video": data.text_video.tolist(),
            "mask": data.frame_mask.tolist(), "stat": stat, "frames": data.frames.astype(np.float32),
            "text_emb": data.text_emb.astype(np.float32)}


def _assert_same(a: dict, b: dict) -> None:
    for k in a:
        if k in ("frames", "text_emb"):  # CLIP saw other batches: float16 storage, equal within rounding
            np.testing.assert_allclose(a[k], b[k], atol=2e-3, err_msg=k)
        else:
            assert a[k] == b[k], k


@pytest.mark.slow
def test_update_run_killed_at_any_moment_resumes_to_the_uninterrupted_result(byo, tmp_path):
    v1 = tmp_path / "v1.h5"
    _ok(_extract(byo, v1))
    # The update: a caption changed, a video moved to test, a file replaced, a video removed, one added.
    _write_csv(byo, _rows(text_of={"synth_00000#1": "a green square sinks into the water"},
                          split_of={_clip_id(1): "test"}, videos=[0, 1, 2, 3, 4, 6]))
    shutil.copy(byo / "videos" / f"{_clip_id(5)}.mp4", byo / "videos" / f"{_clip_id(2)}.mp4")
    clean = tmp_path / "clean.h5"
    shutil.copy(v1, clean)
    _ok(CliRunner().invoke(main, _cli_args(byo, clean)))
    want = _columns(clean)
    assert _clip_id(5) not in want["video_ids"] and _clip_id(6) in want["video_ids"]

    killer = tmp_path / "killer.py"
    killer.write_text(_KILLER)
    for moment in ("part", "commit", "folded"):
        killed = tmp_path / f"killed-{moment}.h5"
        shutil.copy(v1, killed)
        p = subprocess.run([sys.executable, str(killer), moment, *_cli_args(byo, killed)], capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, (moment, p.stderr)
        left = read_cache(killed)  # readable as it was left: the old rows, or the new ones, never a mix
        if moment == "folded":  # the new main file is in place: its leftover parts must not undo it
            assert parts_dir(killed).exists()
            _assert_same(_columns(killed), want)
        else:
            assert _clip_id(5) in left.video_ids  # the removal is applied only by the commit
        resumed = subprocess.run([sys.executable, "-m", "vtr", *_cli_args(byo, killed)], capture_output=True,
                                 text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        _assert_same(_columns(killed), want)
        assert not parts_dir(killed).exists() and not Path(str(killed) + ".tmp").exists()
        assert not list(tmp_path.glob(f".{killed.name}.*.tmp")), "a killed write's temporary is left"
