"""Decode a video with ffmpeg and sample frames the way CLIP4Clip does.

One ffmpeg process per video does all the pixel work: take one frame per second (``fps``), convert to
RGB, resize so the short side is ``resolution`` (bicubic), centre-crop a square, and write raw rgb24
frames to a pipe. Python only reads the frames and keeps ``max_frames`` of them, chosen uniformly. The
duration that says which frames to keep comes from the same ffmpeg's log, so no ffprobe runs (it cost
about a tenth of decoding's CPU on 10-30 s clips). Everything here is a pure function of (path,
settings), so it can run in worker processes.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np


class DecodeError(RuntimeError):
    """A video could not be read or decoded; the message names the file and the problem."""


def ffmpeg_binary() -> str:
    """The path of the ffmpeg executable (RuntimeError with install advice if it is missing)."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg not found on PATH; vtr needs it to read videos (install it with "
                           "`apt-get install ffmpeg`, `brew install ffmpeg` or `conda install ffmpeg`)")
    return path


@dataclass
class Frames:
    """The sampled frames of one video."""

    frames: np.ndarray  # [T, R, R, 3] uint8, RGB, T <= max_frames, in time order
    duration: float  # seconds, the container's duration as ffmpeg reads it (NaN when it has none)
    n_sampled: int  # frames at `fps` before the uniform choice of max_frames
    passes: int = 1  # ffmpeg runs it took: 2 when the frame count was not the one the duration predicted
    times: np.ndarray | None = None  # [T] float32 seconds of each kept frame (see kept_frame_times)


# A line of a log written with -loglevel level+info: "[h264 @ 0x55e5] [error] message" or "[error] message".
_TAGS = re.compile(r"^(?:\[[^\]]*\] )*")
_ERROR = re.compile(r"^(?:\[[^\]]* @ [^\]]*\] )?\[(?:error|fatal|panic)\] ")


def _errors(log: str) -> list[str]:
    """The error lines of an ffmpeg log, without their tags."""
    return [_TAGS.sub("", line).strip() for line in log.splitlines() if _ERROR.match(line)]


def _last_line(log: str) -> str:
    """The last error in an ffmpeg log (else its last line), without tags: the message to show."""
    lines = _errors(log) or [_TAGS.sub("", line).strip() for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


# ffmpeg's input header ("Duration: 00:01:19.50, start: ...", or "Duration: N/A"), logged at info level
# while it opens the file, before any frame is written.
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def header_duration(log: str) -> float:
    """The input duration in seconds from an ffmpeg log, NaN if it is N/A or absent."""
    m = _DURATION.search(log)
    if not m:
        return math.nan
    seconds = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    return seconds if seconds > 0 else math.nan


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DecodeError(f"{path}: no such file")
    if not path.is_file():
        raise DecodeError(f"{path}: not a file")


def _url(path: Path) -> str:
    # "file:" stops ffmpeg from reading a name like "a:b.mp4" as a protocol or "-x.mp4" as an option
    return "file:" + str(path.resolve())


def uniform_indices(n: int, max_frames: int) -> np.ndarray:
    """Which of ``n`` sampled frames to keep: all of them, or CLIP4Clip's ``max_frames`` uniform picks."""
    if n < 0 or max_frames < 1:
        raise ValueError(f"uniform_indices needs n >= 0 and max_frames >= 1, got n={n}, max_frames={max_frames}")
    if n <= max_frames:
        return np.arange(n)
    return np.linspace(0, n - 1, num=max_frames, dtype=int)


def kept_frame_times(n_sampled: int, fps: float, max_frames: int) -> np.ndarray:
    """Seconds of the frames ``uniform_indices`` keeps: with ``round=up``, sampled frame k is the one shown
    at k / fps (from the stream's start), so the time follows from the index alone."""
    return (uniform_indices(n_sampled, max_frames) / fps).astype(np.float32)


# How a frame is fitted to the model's square input: OpenAI's CLIP (and most open_clip weights) resize the
# short side and crop the centre; SigLIP's weights squash the whole frame to the square (open_clip's
# preprocessing config, "resize_mode").
RESIZE_MODES = ("shortest", "squash")


def _filter_graph(path: Path, resolution: int, fps: float, threads: int, resize: str = "shortest",
                  interpolation: str = "bicubic"):
    """The ffmpeg-python graph: fps -> RGB -> short side to ``resolution`` -> centre crop -> rawvideo (or,
    with ``resize="squash"``, the whole frame scaled to the square)."""
    r = int(resolution)
    # round=up puts output frame k on the input frame shown at time k/fps, so a clip of d seconds gives
    # ceil(d * fps) frames and a clip shorter than 1/fps still gives its first frame (the default,
    # round=near, gives none for clips under half a period).
    video = ffmpeg.input(_url(path), threads=threads)["V:0"].filter("fps", fps=fps, round="up")
    # Convert to RGB before resizing (only 1 frame/s reaches this point, so it is cheap): chroma is then
    # resampled once, at full resolution, like CLIP's PIL pipeline on decoded RGB images.
    video = video.filter("format", "rgb24")
    # Non-square pixels: size by the *display* aspect ratio (dar = iw/ih * sar, sar=1 when unknown) and
    # declare the output pixels square, so a 4:3 anamorphic clip is not squashed. max() keeps rounding
    # from ever leaving the short side at resolution-1.
    w = f"if(gte(dar,1),max({r},round({r}*dar)),{r})"
    h = f"if(gte(dar,1),{r},max({r},round({r}/dar)))"
    if resize == "squash":
        w = h = r
    elif resize != "shortest":
        raise ValueError(f"resize {resize!r}: choose one of {', '.join(RESIZE_MODES)}")
    video = video.filter("scale", w=w, h=h, flags=interpolation).filter("setsar", "1")
    video = video.filter("crop", r, r)  # x, y default to the centre
    out = video.output("pipe:", format="rawvideo", pix_fmt="rgb24", an=None, sn=None, dn=None)
    # Info level for the input header's duration (see header_duration); "level" tags each line, so errors
    # can be told apart; no banner, no progress lines.
    return out.global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info",
                           "-filter_threads", str(max(threads, 1)))


# How far the real number of sampled frames may be from ceil(duration * fps) and still be handled in one
# pass. The container's duration predicts the count exactly on every file we tried; the slack covers
# rounding, audio a little longer than the video, and container quirks, and anything further off is decoded
# a second time (exact, just slower).
COUNT_SLACK = 2


def expected_count(duration: float, fps: float) -> int | None:
    """How many frames ``fps=..:round=up`` gives for ``duration`` seconds; None when the duration is unknown."""
    if not math.isfinite(duration) or duration <= 0:
        return None
    return max(1, math.ceil(round(duration * fps, 6)))  # round(): 10.000000001 s is 10 frames, not 11


def candidate_indices(expected: int, max_frames: int, slack: int = COUNT_SLACK) -> np.ndarray:
    """Every frame ``uniform_indices(n, max_frames)`` may pick for n within ``slack`` of ``expected``."""
    counts = range(max(1, expected - slack), expected + slack + 1)
    return np.unique(np.concatenate([uniform_indices(n, max_frames) for n in counts]))


class _FrameKeeper:
    """Reads rgb24 frames off a pipe and keeps only those whose index is in ``wanted`` (None: keep all).

    Kept frames are read straight into a preallocated array, the others into one scratch frame, so a
    10-minute video holds a few dozen frames in memory instead of 600. With ``plan`` instead of ``wanted``,
    ``wanted = plan(log)`` is decided once the first frame is in, from ffmpeg's log so far (see
    ``read_all``); frame 0 is kept meanwhile, as every choice keeps it.
    """

    def __init__(self, resolution: int, wanted: np.ndarray | None = None, plan=None):
        self.shape = (resolution, resolution, 3)
        self.frame_bytes = resolution * resolution * 3
        self.plan = plan
        self.all: list[np.ndarray] = []
        self.scratch = np.empty(self.shape, np.uint8)
        self.count = 0
        self._want(None if plan else wanted)

    def _want(self, wanted: np.ndarray | None) -> None:
        self.slot = None if wanted is None else {int(i): k for k, i in enumerate(wanted)}
        self.kept = np.empty((0 if wanted is None else len(wanted), *self.shape), np.uint8)

    def _plan_after_first_frame(self, log) -> None:
        first = self.all.pop()
        self._want(self.plan(log()))
        self.plan = None
        if self.slot is None:
            self.all.append(first)
        else:
            self.kept[self.slot[0]] = first

    def _target(self) -> np.ndarray:
        if self.slot is None:
            frame = np.empty(self.shape, np.uint8)
            self.all.append(frame)
            return frame
        k = self.slot.get(self.count)
        return self.scratch if k is None else self.kept[k]

    def read_all(self, stream, log=lambda: "") -> None:
        """Read frames until the end of ``stream`` (a partial last frame, from a dying ffmpeg, is dropped).

        ``log()`` returns what ffmpeg has logged so far; ``plan`` gets it after the first frame, by when
        ffmpeg has logged its input header."""
        while True:
            view = memoryview(self._target()).cast("B")
            got = 0
            while got < self.frame_bytes:
                n = stream.readinto(view[got:])
                if not n:
                    break
                got += n
            if got < self.frame_bytes:
                if self.slot is None and self.all:
                    self.all.pop()
                return
            self.count += 1
            if self.plan is not None:
                self._plan_after_first_frame(log)

    def choose(self, max_frames: int) -> np.ndarray | None:
        """The CLIP4Clip choice over the ``count`` frames read, or None if a needed frame was not kept."""
        keep = uniform_indices(self.count, max_frames)
        if self.slot is None:
            return np.stack([self.all[i] for i in keep]) if len(keep) else self.kept
        if any(int(i) not in self.slot for i in keep):
            return None
        return self.kept[[self.slot[int(i)] for i in keep]]


def _log_so_far(file) -> str:
    """What has been written to ``file`` so far. pread leaves the file offset, which ffmpeg shares, alone."""
    chunks, offset = [], 0
    while chunk := os.pread(file.fileno(), 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode(errors="replace")


def _run_ffmpeg(path: Path, args: list[str], keeper: _FrameKeeper, timeout: float | None, nice: int) -> None:
    """Run ffmpeg, feeding its stdout to ``keeper``; DecodeError on a timeout or a failed exit, when the
    file has no video stream, or when no frame came."""
    # stderr goes to a temp file rather than a pipe: a chatty ffmpeg can then never block on a full pipe
    # while we are blocked reading stdout.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        if nice and hasattr(os, "setpriority"):
            try:  # set from outside: preexec_fn is unsafe in a threaded parent
                os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
            except OSError:
                pass  # it already finished, or the OS refuses: only the scheduling changes
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(timeout, kill) if timeout else None
        if watchdog:
            watchdog.start()
        try:
            keeper.read_all(proc.stdout, lambda: _log_so_far(err))
            proc.stdout.close()
            code = proc.wait()
        finally:
            if watchdog:
                watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if timed_out.is_set():
        raise DecodeError(f"{path}: ffmpeg did not finish within {timeout} s")
    if any("matches no streams" in e for e in _errors(stderr)):  # no first video stream (cover art aside)
        raise DecodeError(f"{path}: no video stream")
    if code != 0:
        raise DecodeError(f"{path}: ffmpeg could not decode it (exit {code}): {_last_line(stderr)}")
    if keeper.count == 0:
        raise DecodeError(f"{path}: ffmpeg decoded no frames" + (f": {_last_line(stderr)}" if _errors(stderr) else ""))


def sample_frames(
    path: str | Path, resolution: int, fps: float = 1.0, max_frames: int = 12, *, threads: int = 1,
    timeout: float | None = None, nice: int = 0, resize: str = "shortest", interpolation: str = "bicubic",
) -> Frames:
    """Decode ``path`` and return up to ``max_frames`` frames of ``resolution`` x ``resolution`` RGB.

    Frames are taken at ``fps`` (at times 0, 1/fps, 2/fps, ...), then ``uniform_indices`` keeps at most
    ``max_frames`` of them. ``threads`` is ffmpeg's decoder/filter thread count: 1 suits extraction, which
    runs one decoder per core; 0 lets ffmpeg pick when decoding a single video. ``timeout`` (seconds, None
    for no limit) kills an ffmpeg that takes longer, e.g. on a file that never ends. ``nice`` (Unix) lowers
    ffmpeg's scheduling priority by that much (0: unchanged). ``resize`` (`RESIZE_MODES`) and
    ``interpolation`` (ffmpeg's scaler: bicubic, bilinear) follow the model's preprocessing.
    No padding is done here.

    Only the frames the choice can need are kept while reading: the count is predicted from the duration in
    ffmpeg's input header (ceil(duration * fps)), and every frame the choice could pick for a count within
    ``COUNT_SLACK`` of it is kept. If the real count is further off, the video is decoded again keeping
    exactly the frames that count needs, so the frames returned never depend on the prediction.
    Raises DecodeError naming the file when it is missing, has no video, or ffmpeg fails or yields nothing.
    """
    path = Path(path)
    if resolution < 1 or fps <= 0 or max_frames < 1:
        raise ValueError(f"sample_frames needs resolution >= 1, fps > 0, max_frames >= 1 "
                         f"(got {resolution}, {fps}, {max_frames})")
    _check_exists(path)
    args = _filter_graph(path, resolution, fps, threads, resize, interpolation).compile(cmd=ffmpeg_binary())

    duration = math.nan  # read from the header once the first frame is in (_run_ffmpeg raises if none comes)

    def plan(log: str) -> np.ndarray | None:
        nonlocal duration
        duration = header_duration(log)
        expected = expected_count(duration, fps)
        return None if expected is None else candidate_indices(expected, max_frames)

    keeper = _FrameKeeper(resolution, plan=plan)
    _run_ffmpeg(path, args, keeper, timeout, nice)
    chosen = keeper.choose(max_frames)
    if chosen is not None:
        return Frames(frames=chosen, duration=duration, n_sampled=keeper.count,
                      times=kept_frame_times(keeper.count, fps, max_frames))
    # The duration misled us: decode again, now keeping exactly the frames the real count needs.
    count = keeper.count
    keeper = _FrameKeeper(resolution, uniform_indices(count, max_frames))
    _run_ffmpeg(path, args, keeper, timeout, nice)
    if keeper.count != count:
        raise DecodeError(f"{path}: ffmpeg gave {count} frames, then {keeper.count} on a second decode")
    return Frames(frames=keeper.choose(max_frames), duration=duration, n_sampled=count, passes=2,
                  times=kept_frame_times(count, fps, max_frames))
