"""Helpers for the dataset tests: where the real annotation files are, and tiny stand-in videos."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def annotations_dir() -> Path:
    """The real annotation files (../shared/data/annotations; $VTR_SHARED_DIR overrides ../shared).

    Missing files are a failure, never a skip: these tests are the only check that the readers match the
    real layouts.
    """
    shared = Path(os.environ.get("VTR_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
    ann = shared / "data" / "annotations"
    if not (ann / "SOURCES.md").is_file():
        pytest.fail(f"the real annotation files are not at {ann} (set VTR_SHARED_DIR to the folder holding "
                    f"data/annotations)")
    return ann


PATTERNS = ["testsrc", "testsrc2", "smptebars", "rgbtestsrc", "mandelbrot", "life", "cellauto", "yuvtestsrc"]


def make_video(path: Path, i: int, seconds: float = 2.0) -> Path:
    """A tiny 96x72 clip, different for each ``i`` (pattern and hue), written by the ffmpeg CLI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = f"{PATTERNS[i % len(PATTERNS)]}=size=96x72:rate=5"
    codec = ["-c:v", "mpeg4"] if path.suffix == ".avi" else ["-c:v", "libx264", "-preset", "ultrafast"]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src,
                    "-t", str(seconds), "-vf", f"hue=h={(i * 47) % 360}", *codec, "-pix_fmt", "yuv420p", str(path)],
                   check=True, capture_output=True)
    return path
