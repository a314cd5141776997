"""Thumbnails for the search page: one JPEG per (video, moment), grabbed by ffmpeg and kept on disk.

A result's thumbnail shows the frame at the moment that matched the query, so it is made on demand
(the moments depend on the query) and cached under the index folder, keyed by the video's id and the
time in milliseconds. Each file is written under a temporary name and renamed into place, so a reader
never sees half a JPEG, even with several server processes sharing the folder. Within one process a
lock per key makes concurrent requests for the same thumbnail wait for one ffmpeg instead of each
starting their own.
"""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import tempfile
import threading
from pathlib import Path

from vtr.extract.decode import ffmpeg_binary

# ffmpeg on a sane file takes well under a second; a broken or huge one must not hold a server thread.
FFMPEG_TIMEOUT_S = 30


class ThumbnailError(RuntimeError):
    """ffmpeg could not make the thumbnail (the message names the file and ffmpeg's reason)."""


def thumbnail_key(video_id: str, t: float, width: int) -> str:
    """The file name of a thumbnail: a hash of the id (ids may hold any character), the time, the width."""
    digest = hashlib.sha256(video_id.encode("utf-8")).hexdigest()[:24]
    return f"{digest}-{round(t * 1000)}ms-w{width}.jpg"


class ThumbnailCache:
    """JPEG frames of videos at given times, cached in ``folder`` (created on first use)."""

    def __init__(self, folder: Path, width: int = 320, quality: int = 4):
        self.folder = Path(folder)
        self.width = width  # thumbnails are scaled down to this width, never up
        self.quality = quality  # ffmpeg's -q:v for mjpeg: 2 (best) .. 31
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # a page of results asks for all its thumbnails at once: one ffmpeg per core, the rest wait
        self._jobs = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def path_for(self, video_id: str, t: float) -> Path:
        return self.folder / thumbnail_key(video_id, t, self.width)

    def get(self, video_id: str, video_path: Path, t: float) -> Path:
        """The thumbnail of ``video_path`` at ``t`` seconds, made now unless it is already cached."""
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"thumbnail time must be a finite number of seconds >= 0, not {t}")
        t = round(t, 3)  # the key's resolution: a cached file is exactly the frame its name says
        out = self.path_for(video_id, t)
        if out.exists():
            return out
        with self._lock_for(out.name):
            if out.exists():  # another thread made it while this one waited
                return out
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jpg", dir=self.folder)
            os.close(fd)
            try:
                with self._jobs:
                    self._grab(Path(video_path), t, Path(tmp))
                os.replace(tmp, out)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                with self._guard:  # safe: a later caller finds the file before it needs the lock
                    self._locks.pop(out.name, None)
        return out

    def _grab(self, video: Path, t: float, out: Path) -> None:
        # -ss before -i seeks to the keyframe before t, then decodes up to t: exact, and fast on long files.
        # A time past the last frame yields no frame; the last frame is then the right picture.
        for seek in (["-ss", f"{t:.3f}"], ["-sseof", "-0.5"]):
            err = self._ffmpeg(seek, video, out)
            if out.exists() and out.stat().st_size > 0:
                return
        raise ThumbnailError(f"{video}: ffmpeg made no frame at {t:.3f} s" + (f": {err}" if err else ""))

    def _ffmpeg(self, seek: list[str], video: Path, out: Path) -> str:
        cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *seek, "-i", str(video),
               "-frames:v", "1", "-vf", f"scale='min({self.width},iw)':-2", "-c:v", "mjpeg",
               "-q:v", str(self.quality), "-f", "image2", str(out)]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ThumbnailError(f"{video}: ffmpeg took over {FFMPEG_TIMEOUT_S} s for one frame") from None
        return r.stderr.decode(errors="replace").strip().splitlines()[-1] if r.stderr.strip() else ""
