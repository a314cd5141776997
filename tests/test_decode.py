"""Tests for vtr.extract.decode: frame counts, uniform choice, crop geometry, errors, real sample videos."""
from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vtr.extract.decode import DecodeError, Frames, header_duration, sample_frames, uniform_indices

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


def write_video(path: Path, frames: np.ndarray, fps: float, sar: str | None = None) -> Path:
    """Encode [F, H, W, 3] uint8 RGB frames to a lossless H.264 file (optionally with a sample aspect ratio)."""
    n, h, w, _ = frames.shape
    vf = ["-vf", f"setsar={sar}"] if sar else []
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", *vf, "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
           "-pix_fmt", "yuv444p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def grey_clip(seconds: float, fps: int = 5, size=(48, 64)) -> np.ndarray:
    """A clip whose grey level encodes the second each frame belongs to: 20 + 10 * floor(t)."""
    n = int(round(seconds * fps))
    levels = 20 + 10 * (np.arange(n) // fps)
    return np.broadcast_to(levels[:, None, None, None], (n, *size, 3)).astype(np.uint8)


def banded(h: int, w: int, vertical: bool) -> np.ndarray:
    """One frame cut in three equal bands, red / green / blue (left to right, or top to bottom)."""
    img = np.zeros((h, w, 3), np.uint8)
    n = h if vertical else w
    for k, colour in enumerate((RED, GREEN, BLUE)):
        band = slice(k * n // 3, (k + 1) * n // 3)
        if vertical:
            img[band] = colour
        else:
            img[:, band] = colour
    return img


def seconds_of(frames: np.ndarray) -> np.ndarray:
    """Recover the encoded second of each frame of a grey_clip from its mean brightness."""
    return np.round((frames.reshape(len(frames), -1).mean(1) - 20) / 10).astype(int)


def test_uniform_indices():
    assert uniform_indices(5, 12).tolist() == [0, 1, 2, 3, 4]
    assert uniform_indices(12, 12).tolist() == list(range(12))
    idx = uniform_indices(20, 12)
    assert idx.tolist() == np.linspace(0, 19, num=12, dtype=int).tolist()
    assert idx[0] == 0 and idx[-1] == 19 and np.all(np.diff(idx) > 0)
    assert uniform_indices(0, 12).tolist() == []


def test_three_second_clip_gives_three_frames(tmp_path):
    path = write_video(tmp_path / "three.mp4", grey_clip(3), fps=5)
    out = sample_frames(path, resolution=32)
    assert isinstance(out, Frames)
    assert out.frames.shape == (3, 32, 32, 3) and out.frames.dtype == np.uint8
    assert out.n_sampled == 3
    assert seconds_of(out.frames).tolist() == [0, 1, 2]
    assert abs(out.duration - 3.0) < 0.1


def test_long_clip_keeps_uniform_choice_in_time_order(tmp_path):
    path = write_video(tmp_path / "twenty.mp4", grey_clip(20), fps=5)
    out = sample_frames(path, resolution=32, fps=1.0, max_frames=12)
    assert out.n_sampled == 20
    assert out.frames.shape == (12, 32, 32, 3)
    secs = seconds_of(out.frames)
    assert secs.tolist() == uniform_indices(20, 12).tolist()
    assert np.all(np.diff(secs) > 0)  # time order


def test_higher_fps_samples_more(tmp_path):
    path = write_video(tmp_path / "four.mp4", grey_clip(4, fps=10), fps=10)
    out = sample_frames(path, resolution=16, fps=2.0, max_frames=64)
    assert out.n_sampled == 8
    assert seconds_of(out.frames).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_clip_shorter_than_one_period_gives_one_frame(tmp_path):
    frames = np.full((3, 48, 64, 3), 100, np.uint8)  # 0.3 s at 10 fps
    path = write_video(tmp_path / "short.mp4", frames, fps=10)
    out = sample_frames(path, resolution=32)
    assert out.n_sampled == 1
    assert out.frames.shape == (1, 32, 32, 3)
    assert abs(int(out.frames.mean()) - 100) <= 2


@pytest.mark.parametrize("h, w", [(48, 96), (96, 48), (45, 71), (71, 45)])
def test_output_is_square_for_landscape_and_portrait(tmp_path, h, w):
    frames = np.random.default_rng(0).integers(0, 255, (20, h, w, 3), dtype=np.uint8)
    path = write_video(tmp_path / f"{h}x{w}.mp4", frames, fps=10)
    for res in (32, 33):  # odd and even sizes; rounding must never leave the short side short
        out = sample_frames(path, resolution=res)
        assert out.frames.shape == (2, res, res, 3)


def _assert_centre_is_green(frame: np.ndarray):
    inner = frame[2:-2, 2:-2].reshape(-1, 3).astype(int)  # skip bicubic ringing at the very border
    assert np.abs(inner - np.array(GREEN)).max() < 25, "centre crop is not the middle band"


def test_centre_crop_landscape(tmp_path):
    frames = np.broadcast_to(banded(40, 120, vertical=False), (10, 40, 120, 3)).copy()
    path = write_video(tmp_path / "bands.mp4", frames, fps=10)
    out = sample_frames(path, resolution=20)  # 120x40 -> 60x20 -> middle 20 columns
    _assert_centre_is_green(out.frames[0])


def test_centre_crop_portrait(tmp_path):
    frames = np.broadcast_to(banded(120, 40, vertical=True), (10, 120, 40, 3)).copy()
    path = write_video(tmp_path / "bands_portrait.mp4", frames, fps=10)
    out = sample_frames(path, resolution=20)
    _assert_centre_is_green(out.frames[0])


def test_non_square_pixels_use_display_aspect(tmp_path):
    # 60x40 coded with 2:1 pixels is 120x40 on screen: the centre square is exactly the green band.
    # Ignoring the SAR would crop 40 of 60 coded columns and catch red and blue at the edges.
    frames = np.broadcast_to(banded(40, 60, vertical=False), (10, 40, 60, 3)).copy()
    path = write_video(tmp_path / "anamorphic.mp4", frames, fps=10, sar="2/1")
    out = sample_frames(path, resolution=40)
    _assert_centre_is_green(out.frames[0])


def test_duration_comes_from_ffmpegs_own_header(tmp_path):
    path = write_video(tmp_path / "p.mp4", grey_clip(2, fps=10, size=(48, 64)), fps=10)
    assert abs(sample_frames(path, resolution=16).duration - 2.0) < 0.1
    assert header_duration("[info]   Duration: 01:02:03.50, start: 0.000000, bitrate: 9 kb/s") == 3723.5
    assert math.isnan(header_duration("[info]   Duration: N/A, bitrate: N/A"))
    assert math.isnan(header_duration(""))


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere.mp4"
    with pytest.raises(DecodeError, match=re.escape(str(path)) + ".*no such file"):
        sample_frames(path, resolution=32)


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    # the message is ffmpeg's last error line without its log tags ("[error] ...")
    with pytest.raises(DecodeError, match=re.escape(str(path)) + r": ffmpeg could not decode it \(exit \d+\): "
                       r"file:.*garbage\.mp4: Invalid data found"):
        sample_frames(path, resolution=32)


def test_file_without_video_stream(tmp_path):
    path = tmp_path / "audio.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1",
                    "-c:a", "aac", str(path)], check=True)
    with pytest.raises(DecodeError, match=re.escape(str(path)) + ".*no video stream"):
        sample_frames(path, resolution=32)


# --- real sample videos (shared/data/videos, see its SOURCES.md) ---------------------------------------

REAL = {  # file: (codec, width, height, duration), as SOURCES.md gives them
    "bikes.mp4": ("h264", 640, 272, 10.0),
    "bigbuckbunny.mp4": ("h264", 1280, 720, 5.3),
    "carphone_pristine.mp4": ("h264", 176, 144, 4.0),
    "vtest.avi": ("msmpeg4v3", 768, 576, 79.5),
    "tree.avi": ("cinepak", 320, 240, 29.6),
}


def shared_videos() -> Path:
    shared = os.environ.get("VTR_SHARED_DIR")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    folder = root / "data" / "videos"
    if not folder.is_dir():
        pytest.fail(f"sample videos not found at {folder}; set VTR_SHARED_DIR to the shared folder")
    return folder


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_videos(name):
    path = shared_videos() / name
    duration = REAL[name][3]
    out = sample_frames(path, resolution=224, fps=1.0, max_frames=12)
    assert abs(out.duration - duration) < 0.2 and out.passes == 1  # the header predicted the count
    assert abs(out.n_sampled - duration) <= 1
    assert out.frames.shape == (min(out.n_sampled, 12), 224, 224, 3)
    assert out.frames.dtype == np.uint8 and out.frames.std() > 5  # real content, not a blank frame


def test_timeout_kills_a_slow_ffmpeg(tmp_path):
    path = write_video(tmp_path / "slow.mp4", grey_clip(3), fps=5)
    # a timeout far below ffmpeg's start-up time stands in for a decode that never ends
    with pytest.raises(DecodeError, match=re.escape(str(path)) + ".*did not finish within"):
        sample_frames(path, resolution=32, timeout=1e-4)
    assert sample_frames(path, resolution=32, timeout=30).n_sampled == 3


# --- frames kept while reading: bounded memory, the same choice as keeping everything ------------------

def test_candidates_cover_every_count_in_the_slack():
    from vtr.extract.decode import candidate_indices

    for expected in (1, 5, 12, 13, 20, 600):
        cand = set(candidate_indices(expected, 12, slack=2).tolist())
        for n in range(max(1, expected - 2), expected + 3):
            assert set(uniform_indices(n, 12).tolist()) <= cand
        assert len(cand) <= 5 * 12  # bounded by the slack, not by the video's length


def test_keeper_holds_few_frames_of_a_long_stream():
    import io

    from vtr.extract.decode import _FrameKeeper, candidate_indices

    n, res = 600, 4  # a 10-minute video at 1 fps
    frames = np.random.default_rng(0).integers(0, 256, (n, res, res, 3), dtype=np.uint8)
    stream = io.BufferedReader(io.BytesIO(frames.tobytes() + b"\0" * 7))  # a partial frame at the end
    keeper = _FrameKeeper(res, candidate_indices(n, 12))
    keeper.read_all(stream)
    assert keeper.count == n and len(keeper.kept) <= 60
    np.testing.assert_array_equal(keeper.choose(12), frames[uniform_indices(n, 12)])


def _header_says(monkeypatch, duration):
    import vtr.extract.decode as D

    monkeypatch.setattr(D, "header_duration", lambda log: duration)


@pytest.mark.parametrize("duration, passes", [(19.2, 1), (21.5, 1), (3.0, 2), (90.0, 2), (float("nan"), 1)])
def test_a_misleading_duration_never_changes_the_frames(tmp_path, monkeypatch, duration, passes):
    """Near misses are covered by the slack, far misses by a second decode, no duration by keeping all."""
    path = write_video(tmp_path / "twenty.mp4", grey_clip(20), fps=5)
    honest = sample_frames(path, resolution=16)
    assert honest.passes == 1 and seconds_of(honest.frames).tolist() == uniform_indices(20, 12).tolist()
    _header_says(monkeypatch, duration)
    out = sample_frames(path, resolution=16)
    assert (out.n_sampled, out.passes) == (20, passes)
    np.testing.assert_array_equal(out.frames, honest.frames)


def test_nice_decodes_the_same_frames(tmp_path):
    path = write_video(tmp_path / "three.mp4", grey_clip(3), fps=5)
    np.testing.assert_array_equal(sample_frames(path, 16, nice=10).frames, sample_frames(path, 16).frames)
