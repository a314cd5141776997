"""The extract stage end to end on real (synthetic) video files: incremental, failure-tolerant, kill-safe."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from vtr.cache import CacheError, parts_dir, read_cache
from vtr.extract.synthetic import generate, read_synthetic
from vtr.extract.stage import run_extract
from vtr.cache.records import VideoItem

QUIET = dict(progress=False, log=lambda msg: None)


def test_extract_then_rerun_does_nothing(tmp_path, synthetic_root, tiny_clip):
    ds = read_synthetic(synthetic_root)
    out = tmp_path / "c.h5"
    first = run_extract(ds, tiny_clip, out, **QUIET)
    assert (first.videos_decoded, first.videos_failed, first.videos_cached) == (24, 0, 0)
    assert first.captions_encoded == len(ds.captions)

    data = read_cache(out)
    assert data.video_ids == [v.id for v in ds.videos]
    assert data.frames.shape == (24, 12, tiny_clip.dim)
    # 6 s clips sampled at 1 fps: 6 real frames, the rest padding.
    assert data.frame_mask.sum(1).tolist() == [6] * 24
    assert np.abs(data.frames[:, :6].astype(np.float32)).sum(-1).min() > 0
    assert data.text_ids == [c.id for c in ds.captions]
    assert data.attrs["clip_model"] == "random:tiny" and data.attrs["clip_random"] is True

    # The cached embedding of a caption is what CLIP gives for it.
    np.testing.assert_allclose(data.text_emb[:3].astype(np.float32),
                               tiny_clip.encode_texts(data.captions[:3]).astype(np.float32), atol=2e-3)

    # Every synthetic caption names a shape, a motion and a background: all three streams are there.
    assert data.phrase_emb.shape == (len(ds.captions), 3, tiny_clip.dim)
    assert data.phrase_mask.mean(0).min() > 0.9
    import h5py
    with h5py.File(out) as f:
        parse = json.loads(f["texts/parse"].asstr()[0])
    assert parse["caption"] == data.captions[0] and parse["action"] and parse["entity"] and parse["tree"]
    # Each distinct phrase went through CLIP once; the stream embedding is the mean of its phrases'.
    assert first.phrases_encoded >= len(set(parse["action"] + parse["entity"] + parse["scene"]))
    want = tiny_clip.encode_texts(parse["entity"]).astype(np.float32).mean(0)
    np.testing.assert_allclose(data.phrase_emb[0, 1].astype(np.float32), want, atol=2e-3)

    second = run_extract(ds, tiny_clip, out, **QUIET)
    assert (second.videos_decoded, second.captions_encoded, second.frames_encoded) == (0, 0, 0)
    assert second.phrases_encoded == 0  # nothing parsed or encoded again
    assert (second.videos_cached, second.captions_cached) == (24, len(ds.captions))


def test_new_videos_only_are_processed(tmp_path, tiny_clip):
    root = tmp_path / "syn"
    generate(root, n_videos=10, seed=3, progress=False)
    out = tmp_path / "c.h5"
    assert run_extract(read_synthetic(root), tiny_clip, out, **QUIET).videos_decoded == 10
    before = read_cache(out)

    generate(root, n_videos=14, seed=3, progress=False)
    stats = run_extract(read_synthetic(root), tiny_clip, out, **QUIET)
    assert (stats.videos_decoded, stats.videos_cached) == (4, 10)
    after = read_cache(out)
    assert after.video_ids[:10] == before.video_ids and len(after.video_ids) == 14
    np.testing.assert_array_equal(after.frames[:10], before.frames)


def test_corrupt_video_is_recorded_and_skipped(tmp_path, synthetic_root, tiny_clip):
    ds = read_synthetic(synthetic_root)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    ds.videos[3] = replace(ds.videos[3], path=bad)
    ds.videos.append(VideoItem("ghost", tmp_path / "nope.mp4", "test"))
    out = tmp_path / "c.h5"
    stats = run_extract(ds, tiny_clip, out, **QUIET)
    assert (stats.videos_decoded, stats.videos_failed) == (23, 2)

    data = read_cache(out)
    bad_row = data.video_ids.index(ds.videos[3].id)
    assert not data.video_ok[bad_row] and not data.frame_mask[bad_row].any()
    assert data.video_ok.sum() == 23
    import h5py
    with h5py.File(out) as f:
        reasons = dict(zip(f["videos/ids"].asstr()[()], f["videos/reason"].asstr()[()]))
    assert "broken.mp4" in reasons[ds.videos[3].id]
    assert "nope.mp4" in reasons["ghost"]
    # Its captions are kept but drop out of every split's evaluation set.
    assert ds.videos[3].id not in data.select(ds.videos[3].split).video_ids

    again = run_extract(ds, tiny_clip, out, **QUIET)
    assert again.videos_decoded == 0 and again.videos_failed == 0  # failures are not retried by default
    retried = run_extract(ds, tiny_clip, out, retry_failed=True, **QUIET)
    assert retried.videos_failed == 2


def test_other_frame_setting_is_refused(tmp_path, synthetic_root, tiny_clip):
    ds = read_synthetic(synthetic_root)
    ds.videos, ds.captions = ds.videos[:4], [c for c in ds.captions if c.video_id in {v.id for v in ds.videos[:4]}]
    out = tmp_path / "c.h5"
    run_extract(ds, tiny_clip, out, **QUIET)
    with pytest.raises(CacheError, match="max_frames"):
        run_extract(ds, tiny_clip, out, max_frames=8, **QUIET)
    with pytest.raises(CacheError, match="fps"):
        run_extract(ds, tiny_clip, out, fps=2.0, **QUIET)
    assert len(read_cache(out).video_ids) == 4


def _extract_cmd(root, out):
    # fp32: resuming must give the uninterrupted run's features. (int8, auto's choice on AVX2 CPUs, scales
    # activations per batch, so a frame's features move within int8's error when its batch changes.)
    return [sys.executable, "-m", "vtr", "extract", "--dataset", "synthetic", "--root", str(root),
            "--out", str(out), "--clip", "random:tiny", "--device", "cpu", "--n-videos", "24",
            "--flush-every", "2", "--workers", "1", "--precision", "fp32", "--quiet"]


@pytest.mark.slow  # three `vtr extract` processes, one of them killed
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, synthetic_root):
    root = tmp_path / "syn"
    shutil.copytree(synthetic_root, root)
    killed, clean = tmp_path / "killed.h5", tmp_path / "clean.h5"

    proc = subprocess.Popen(_extract_cmd(root, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts_dir(killed).glob("part-*.h5"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not killed.exists(), "the run finished before the kill"

    partial = read_cache(killed)  # readable as it was left
    assert 6 <= len(partial.video_ids) < 24

    resumed = subprocess.run(_extract_cmd(root, killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "decoded" in resumed.stdout and "already cached" in resumed.stdout
    subprocess.run(_extract_cmd(root, clean), check=True, capture_output=True)

    a, b = read_cache(killed), read_cache(clean)
    assert a.video_ids == b.video_ids and a.text_ids == b.text_ids
    np.testing.assert_array_equal(a.frame_mask, b.frame_mask)
    # CLIP saw different batches in the two runs; float16 storage, so equal to within rounding.
    np.testing.assert_allclose(a.frames.astype(np.float32), b.frames.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(a.text_emb.astype(np.float32), b.text_emb.astype(np.float32), atol=2e-3)
    assert not parts_dir(killed).exists()
