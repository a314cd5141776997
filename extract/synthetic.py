"""The built-in synthetic dataset: coloured shapes moving over textured scenes, with paraphrased captions.

Each clip is an entity (shape x colour) doing an action (how it moves) in a scene (the background), so
each CAMoE stream has something to find: the entity expert the shape and colour, the scene expert the
background, the action expert the motion. What a clip shows and its captions: vtr.extract.synthetic_captions;
drawing it: vtr.extract.synthetic_render. This module writes the folder (frames encoded to .mp4, H.264,
with ffmpeg) and reads it back as a dataset.

Everything about clip ``i`` (its attributes, layout, captions and split) depends only on ``(seed, i)``, so
growing a dataset from 200 to 260 clips keeps the first 200 identical and renders only the 60 new ones.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ffmpeg
import numpy as np
from tqdm import tqdm

from vtr.extract.decode import ffmpeg_binary
from vtr.core.files import atomic_write_text
from vtr.core.settings import settings_diff
from vtr.cache.records import SPLITS, CaptionItem, Dataset, VideoItem
# The vocabulary is also read from here (bench/ablate.py): vtr.extract.synthetic_captions defines it.
from vtr.extract.synthetic_captions import (ACTIONS, CAPTION_NOUNS, COLORS, SCENES, SHAPES, ClipPlan,  # noqa: F401
                                            canonical_caption, clip_plan)
from vtr.extract.synthetic_render import render_clip

GENERATOR_VERSION = 2  # bump when rendering or captions change: old folders are then refused, not mixed


def _encode(frames: np.ndarray, path: Path, fps: float) -> None:
    """Encode frames to ``path`` (H.264, yuv420p) through a temp name, so a killed run leaves no half file."""
    n, h, w, _ = frames.shape
    tmp = path.with_name(path.name + ".part")
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
    stream = stream.output(str(tmp), format="mp4", vcodec="libx264", pix_fmt="yuv420p", preset="ultrafast",
                           crf=18, threads=1, map_metadata=-1, fflags="+bitexact")
    try:
        stream.global_args("-nostdin", "-loglevel", "error").overwrite_output().run(
            cmd=ffmpeg_binary(), input=frames.tobytes(), capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{path}: ffmpeg could not encode it: {e.stderr.decode(errors='replace').strip()}") from None
    os.replace(tmp, path)


def _settings(seed: int, width: int, height: int, fps: float, seconds: float) -> dict:
    return {"generator": "vtr.extract.synthetic", "version": GENERATOR_VERSION, "seed": int(seed),
            "width": int(width), "height": int(height), "fps": float(fps), "seconds": float(seconds)}


def generate(root: Path, n_videos: int = 300, seed: int = 0, *, width: int = 128, height: int = 96,
             fps: float = 10, seconds: float = 6.0, progress: bool = True) -> Path:
    """Make (or complete) the synthetic dataset in ``root``; returns ``root``.

    Writes ``videos/synth_00000.mp4``, ... , ``annotations.jsonl`` and ``manifest.json``. Clips already
    on disk are kept, so rerunning, or asking for more clips, renders only what is missing. A folder made
    with another seed or other render settings is refused rather than mixed.
    """
    root = Path(root)
    if n_videos < 1:
        raise ValueError(f"n_videos must be >= 1, got {n_videos}")
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"width and height must be even and >= 16 (H.264 yuv420p), got {width}x{height}")
    settings = _settings(seed, width, height, fps, seconds)
    manifest = root / "manifest.json"
    videos = root / "videos"
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{manifest}: not valid JSON ({e}); delete {root} to start again") from None
        differ = settings_diff(old, settings, keys=settings)
        if differ:
            diff = ", ".join(f"{k}: {x!r} there, {y!r} asked" for k, x, y in differ)
            raise ValueError(f"{root}: holds a synthetic dataset made with other settings ({diff}); "
                             f"use another folder or delete this one")
    elif videos.exists() and any(videos.iterdir()):
        raise ValueError(f"{root}: has a videos/ folder but no manifest.json, so it was not made by this "
                         f"generator (or with these settings); use another folder")
    videos.mkdir(parents=True, exist_ok=True)
    # The manifest goes first, so even an interrupted run leaves a folder whose settings are known.
    atomic_write_text(manifest, json.dumps({**settings, "n_videos": int(n_videos)}, indent=2) + "\n")

    plans = [clip_plan(seed, i) for i in range(n_videos)]
    todo = [p for p in plans if not (videos / f"{p.video_id}.mp4").exists()]

    def make(plan: ClipPlan) -> None:
        _encode(render_clip(plan, width, height, fps, seconds), videos / f"{plan.video_id}.mp4", fps)

    # Threads suffice: numpy drawing releases the GIL in its array ops and ffmpeg runs as its own process.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool, \
            tqdm(total=len(todo), desc="synthetic clips", unit="clip", disable=not progress) as bar:
        for _ in pool.map(make, todo):
            bar.update(1)

    lines = []
    for s in plans:
        lines.append(json.dumps({"video": s.video_id, "file": f"videos/{s.video_id}.mp4", "split": s.split,
                                 "captions": s.captions, "shape": s.shape, "color": s.color,
                                 "action": s.action, "scene": s.scene}))
    atomic_write_text(root / "annotations.jsonl", "\n".join(lines) + "\n")
    return root


def read_synthetic(root: Path) -> Dataset:
    """Read a folder written by `generate` as a `vtr.cache.records.Dataset` (captions ``"<video>#<k>"``).

    Videos whose file is absent are left out, with their captions, and listed in ``missing_videos``.
    """
    root = Path(root)
    path = root / "annotations.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; make the dataset with vtr.extract.synthetic.generate")
    videos, captions, missing = [], [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            vid, file, split, texts = row["video"], row["file"], row["split"], row["captions"]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}, line {lineno}: expected an object with video, file, split and "
                             f"captions (missing {e})") from None
        if split not in SPLITS:
            raise ValueError(f"{path}, line {lineno}: split {split!r} is not one of {', '.join(SPLITS)}")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise ValueError(f"{path}, line {lineno}: captions must be a non-empty list of strings")
        if not (root / file).is_file():
            missing.append(vid)
            continue
        videos.append(VideoItem(id=vid, path=root / file, split=split))
        captions += [CaptionItem(id=f"{vid}#{k}", video_id=vid, text=t, split=split) for k, t in enumerate(texts)]
    return Dataset(name="synthetic", videos=videos, captions=captions, max_frames=12, eval_split="test",
                   missing_videos=missing, settings=_defining_settings(root), caption_nouns=CAPTION_NOUNS)


def _defining_settings(root: Path) -> dict:
    """The seed and render settings the folder was made with (its manifest): they define the clips, so
    they are settings of any cache made from them (a cache of seed 0 refuses seed 1). The clip count is
    not one: growing the dataset only adds clips."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):  # a folder not made by `generate`: nothing known
        return {}
    return {k: manifest[k] for k in ("seed", "version", "width", "height", "fps", "seconds") if k in manifest}
