"""The built-in synthetic dataset: coloured shapes moving over textured scenes, with paraphrased captions.

Each clip is an entity (shape x colour) doing an action (how it moves) in a scene (the background), so
each CAMoE stream has something to find: the entity expert the shape and colour, the scene expert the
background, the action expert the motion. Some actions differ only in frame order (left/right, up/down,
grows/shrinks): a clip of one, played backwards, is a clip of the other.

Everything about clip ``i`` (its attributes, layout, captions and split) depends only on ``(seed, i)``, so
growing a dataset from 200 to 260 clips keeps the first 200 identical and renders only the 60 new ones.
Frames are drawn with numpy and encoded to .mp4 (H.264) with ffmpeg.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
from tqdm import tqdm

from vtr.extract.decode import ffmpeg_binary
from vtr.files import atomic_write_text
from vtr.records import SPLITS, CaptionItem, Dataset, VideoItem

GENERATOR_VERSION = 2  # bump when rendering or captions change: old folders are then refused, not mixed

# name -> words a caption may use for it. The first word is the canonical one.
SHAPES = {
    "circle": ["circle", "ball", "disc", "round shape", "dot"],
    "square": ["square", "box", "block", "square shape"],
    "triangle": ["triangle", "triangular shape", "pyramid shape"],
    "star": ["star", "star shape", "five-pointed star"],
    "cross": ["cross", "plus sign", "plus shape"],
    "diamond": ["diamond", "rhombus", "diamond shape"],
    "hexagon": ["hexagon", "six-sided shape", "hexagonal tile"],
}
COLORS = {  # name -> (RGB, words)
    "red": ((225, 35, 35), ["red", "crimson", "scarlet"]),
    "green": ((40, 200, 60), ["green", "lime green", "bright green"]),
    "blue": ((40, 80, 235), ["blue", "azure", "cobalt blue"]),
    "yellow": ((245, 220, 40), ["yellow", "golden", "lemon yellow"]),
    "white": ((250, 250, 250), ["white", "ivory", "pure white"]),
    "purple": ((150, 50, 200), ["purple", "violet", "lilac"]),
    "orange": ((250, 140, 20), ["orange", "amber", "tangerine"]),
}
# action -> [(present tense, -ing form), ...]: every caption carries a verb phrase for the parser.
ACTIONS = {
    "moves left": [("moves to the left", "moving to the left"), ("slides leftward", "sliding leftward"),
                   ("travels left", "travelling left"), ("drifts to the left", "drifting to the left"),
                   ("heads left", "heading left")],
    "moves right": [("moves to the right", "moving to the right"), ("slides rightward", "sliding rightward"),
                    ("travels right", "travelling right"), ("drifts to the right", "drifting to the right"),
                    ("heads right", "heading right")],
    "moves up": [("moves up", "moving up"), ("rises", "rising"), ("floats upward", "floating upward"),
                 ("climbs up", "climbing up"), ("goes up", "going up")],
    "moves down": [("moves down", "moving down"), ("sinks", "sinking"), ("falls downward", "falling downward"),
                   ("drops down", "dropping down"), ("goes down", "going down")],
    "spins": [("spins", "spinning"), ("rotates", "rotating"), ("turns around", "turning around"),
              ("spins in place", "spinning in place"), ("twirls", "twirling")],
    "grows": [("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding"),
              ("grows larger", "growing larger"), ("swells", "swelling")],
    "shrinks": [("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("contracts", "contracting"),
                ("shrinks in size", "shrinking in size"), ("dwindles", "dwindling")],
    "stays still": [("stays still", "staying still"), ("does not move", "not moving"),
                    ("sits still", "sitting still"), ("remains motionless", "remaining motionless"),
                    ("rests in place", "resting in place")],
}
# scene -> (prepositional phrases for captions, words that name it: every phrase contains one)
SCENES = {
    "grass": (["on the grass", "on a grassy field", "over green grass", "in a grassy meadow", "on the lawn"],
              ["grass", "lawn"]),
    "sky": (["in the sky", "against a blue sky", "across the sky", "high in the cloudy sky"], ["sky"]),
    "snow": (["on the snow", "in a snowy field", "over white snow", "on a snowy landscape"], ["snow"]),
    "night": (["at night", "under a starry night sky", "in the dark night", "against the night sky"], ["night"]),
    "sand": (["on the sand", "on a sandy beach", "across the desert sand", "over sandy dunes"], ["sand"]),
    "water": (["on the water", "over the blue water", "on the water of a lake", "above the rippling water"],
              ["water"]),
    "road": (["on the road", "on an asphalt road", "along a paved road", "over the road surface"], ["road"]),
}
# Templates: {a} is the entity noun phrase with its article, {v}/{ing} the action, {s} the scene phrase.
TEMPLATES = [
    "{a} {v} {s}",
    "{S}, {a} {v}",
    "{a} {s} {v}",
    "a video of {a} {ing} {s}",
    "there is {a} {ing} {s}",
    "you can see {a} that {v} {s}",
    "{S} {a} is {ing}",
    "footage of {a} {ing} {s}",
]
SPLIT_CUTS = (0.7, 0.8)  # train below 0.7, val below 0.8, test above


@dataclass
class ClipSpec:
    """Everything that defines clip ``index``; ``variant`` seeds its layout jitter and background texture."""

    index: int
    video_id: str
    shape: str
    color: str
    action: str
    scene: str
    split: str
    captions: list[str]
    variant: int = 0


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _caption(rng: np.random.Generator, shape: str, color: str, action: str, scene: str, canonical: bool) -> str:
    if canonical:  # "a red circle moves to the left on the grass"
        template, shape_w, color_w, (v, ing), s = TEMPLATES[0], shape, color, ACTIONS[action][0], SCENES[scene][0][0]
    else:
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        shape_w = SHAPES[shape][rng.integers(len(SHAPES[shape]))]
        color_w = COLORS[color][1][rng.integers(len(COLORS[color][1]))]
        v, ing = ACTIONS[action][rng.integers(len(ACTIONS[action]))]
        s = SCENES[scene][0][rng.integers(len(SCENES[scene][0]))]
    text = template.format(a=_article(f"{color_w} {shape_w}"), v=v, ing=ing, s=s, S=s[0].upper() + s[1:])
    return text[0].upper() + text[1:]


def canonical_caption(shape: str, color: str, action: str, scene: str) -> str:
    """The plain caption of a combination, e.g. "A red circle moves to the left on the grass"."""
    return _caption(np.random.default_rng(0), shape, color, action, scene, canonical=True)


def clip_spec(seed: int, i: int, n_captions: int = 5) -> ClipSpec:
    """The spec of clip ``i`` of the dataset made from ``seed``: a pure function of (seed, i)."""
    rng = np.random.default_rng([seed, i])
    u = rng.random()
    split = "train" if u < SPLIT_CUTS[0] else "val" if u < SPLIT_CUTS[1] else "test"
    shape, color, action, scene = (list(d)[rng.integers(len(d))] for d in (SHAPES, COLORS, ACTIONS, SCENES))
    variant = int(rng.integers(2**31))
    captions = [canonical_caption(shape, color, action, scene)]
    for _ in range(50 * n_captions):  # paraphrases, without repeats (there are always enough)
        if len(captions) == n_captions:
            break
        text = _caption(rng, shape, color, action, scene, canonical=False)
        if text not in captions:
            captions.append(text)
    return ClipSpec(i, f"synth_{i:05d}", shape, color, action, scene, split, captions, variant)


# --- rendering -------------------------------------------------------------------------------------------

def _background(scene: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A static [H, W, 3] float background: each scene has its own colours and texture."""
    y = np.linspace(0, 1, h)[:, None, None]  # 0 at the top
    x = np.linspace(0, 1, w)[None, :, None]
    noise = rng.normal(0, 1, (h, w, 1))

    def mix(top, bottom):  # vertical gradient between two colours
        return np.array(top) * (1 - y) + np.array(bottom) * y

    if scene == "grass":  # green, vertical blade stripes, darker towards the bottom
        blades = np.sin(2 * np.pi * (x * w / 5 + 0.3 * noise))
        return mix((90, 170, 60), (40, 110, 30)) + 18 * blades + 8 * noise
    if scene == "sky":  # blue gradient with soft white clouds
        img = mix((80, 140, 230), (170, 210, 250)) + 3 * noise
        for _ in range(3):
            cy, cx, r = rng.uniform(0.1, 0.6), rng.uniform(0, 1), rng.uniform(0.08, 0.15)
            blob = np.exp(-(((x - cx) * w / h) ** 2 + ((y - cy) * 2) ** 2) / (2 * r**2))
            img = img * (1 - 0.8 * blob) + 250 * 0.8 * blob
        return img
    if scene == "snow":  # near white with blue-grey speckles
        speck = (rng.random((h, w, 1)) < 0.06) * np.array((-50, -40, -15))
        return mix((225, 230, 240), (245, 248, 252)) + speck + 4 * noise
    if scene == "night":  # dark navy gradient with bright stars
        stars = (rng.random((h, w, 1)) < 0.015) * rng.uniform(120, 220, (h, w, 1))
        return mix((5, 5, 25), (20, 25, 60)) + stars
    if scene == "sand":  # tan with diagonal ripples
        ripples = np.sin(2 * np.pi * ((x * w + y * h) / 9 + 0.15 * noise))
        return mix((235, 205, 140), (205, 170, 110)) + 14 * ripples + 5 * noise
    if scene == "water":  # blue with horizontal wavy stripes
        waves = np.sin(2 * np.pi * (y * h / 7 + 0.6 * np.sin(2 * np.pi * x * 3)))
        return mix((30, 90, 170), (15, 55, 120)) + 20 * waves * np.array((0.5, 0.8, 1.0)) + 4 * noise
    if scene == "road":  # grey asphalt grain and a dashed yellow centre line
        img = np.broadcast_to(np.array((85.0, 85, 90)), (h, w, 3)) + 14 * noise
        line = (np.abs(y - 0.5) * h < 1.5) & ((x * w // 12) % 2 == 0)
        return np.where(line, np.array((230.0, 200, 40)), img)
    raise ValueError(f"unknown scene {scene!r}; known: {', '.join(SCENES)}")


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points (u, v), in shape units (radius 1), lie inside ``shape``."""
    def polygon(n, phase):  # regular n-gon of circumradius 1: inside all n half-planes
        a = phase + 2 * np.pi * np.arange(n) / n
        proj = u[..., None] * np.cos(a) + v[..., None] * np.sin(a)
        return proj.max(-1) <= np.cos(np.pi / n)

    if shape == "circle":
        return u**2 + v**2 <= 1
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "diamond":
        return np.abs(u) / 0.75 + np.abs(v) <= 1
    if shape == "triangle":  # apex up (v points down the image)
        return polygon(3, np.pi / 2)
    if shape == "hexagon":
        return polygon(6, 0.0)
    if shape == "star":  # five points at radius 1, valleys at 0.45, straight edges between them
        sector = 2 * np.pi / 5
        alpha = np.abs((np.arctan2(u, -v) % sector) - sector / 2)  # angle from the nearest valley
        rho = np.hypot(u, v)
        px, py = np.cos(sector / 2), np.sin(sector / 2)  # the point, in (valley, side) coordinates
        qx, qy = rho * np.cos(alpha), rho * np.sin(alpha)
        # inside when q lies on the centre's side of the edge from the valley (0.45, 0) to the point
        return (px - 0.45) * qy - py * (qx - 0.45) >= 0
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _fill_pattern(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where a shape's fill is dark: each shape has its own pattern, drawn in shape coordinates (it turns with it).

    Why: frozen CLIP features, and random ones most of all, pool over image patches, so an outline alone
    barely reaches them (a linear probe of random:tiny frame features told the seven outlines apart 19-23%
    of the time, chance 14%). A texture of its own makes a shape visible to every patch it covers.
    """
    rho = np.hypot(u, v)
    if shape == "circle":  # concentric rings
        return np.sin(3 * np.pi * rho) < 0
    if shape == "square":  # checkerboard
        return (np.floor(2.5 * u) + np.floor(2.5 * v)) % 2 == 0
    if shape == "triangle":  # stripes across
        return np.sin(3.5 * np.pi * v) < 0
    if shape == "star":  # a dark core
        return rho < 0.35
    if shape == "cross":  # diagonal stripes
        return np.sin(3 * np.pi * (u + v)) < 0
    if shape == "diamond":  # dots
        return (np.sin(3.5 * np.pi * u) * np.sin(3.5 * np.pi * v)) > 0.35
    if shape == "hexagon":  # stripes along
        return np.sin(3.5 * np.pi * u) < 0
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _layout(spec: ClipSpec, w: int, h: int):
    """Where the shape is, how big and how turned, as a function of progress s in [0, 1].

    Reversed actions (left/right, up/down, grows/shrinks) share one path and differ only in the
    direction s runs. Positions stay inside the centred h x h square that CLIP's centre crop keeps, and
    the shape is large (a third of the frame's height across), so what it is and how it moves fill the crop.
    """
    rng = np.random.default_rng(spec.variant)
    radius = 0.24 * h * rng.uniform(0.9, 1.1)
    cx, cy = w / 2 + h * rng.uniform(-0.06, 0.06), h * rng.uniform(0.44, 0.56)
    angle0 = rng.uniform(0, 2 * np.pi)
    lo_x, hi_x = w / 2 - h * rng.uniform(0.2, 0.24), w / 2 + h * rng.uniform(0.2, 0.24)
    lo_y, hi_y = h * rng.uniform(0.26, 0.3), h * rng.uniform(0.7, 0.74)
    r_small, r_big = 0.1 * h, 0.38 * h
    a = spec.action

    def at(s: float):
        x, y, r, ang = cx, cy, radius, angle0
        if a in ("moves left", "moves right"):
            x = lo_x + (hi_x - lo_x) * s
        elif a in ("moves up", "moves down"):
            y = lo_y + (hi_y - lo_y) * s
        elif a in ("grows", "shrinks"):
            r = r_small + (r_big - r_small) * s
        elif a == "spins":
            ang = angle0 + 2 * np.pi * s  # one full turn: 60 degrees per second over 6 s, no aliasing at 1 fps
        elif a != "stays still":
            raise ValueError(f"unknown action {a!r}; known: {', '.join(ACTIONS)}")
        return x, y, r, ang

    backwards = a in ("moves left", "moves up", "shrinks")  # image y grows downwards: "up" runs s from 1 to 0
    return at, backwards


# A moving shape leaves a fading trail of where it was (as a camera's exposure blurs motion), so a single
# frame shows which way it goes; frames at 1 fps are far apart, and pooled frame features hardly keep
# position. TRAIL: (how long ago, as a fraction of the clip; opacity), drawn oldest first.
TRAIL = ((0.12, 0.25), (0.08, 0.4), (0.04, 0.6))
PATTERN_SHADE = 0.55  # the dark part of a fill pattern, as a fraction of the fill colour


def render_clip(spec: ClipSpec, width: int = 128, height: int = 96, fps: float = 10,
                seconds: float = 6.0) -> np.ndarray:
    """Draw clip ``spec`` as [F, H, W, 3] uint8 RGB frames (F = round(fps * seconds))."""
    n = max(1, int(round(fps * seconds)))
    at, backwards = _layout(spec, width, height)
    background = np.clip(_background(spec.scene, height, width, np.random.default_rng(spec.variant + 1)), 0, 255)
    fill = np.array(COLORS[spec.color][0], np.float64)
    # A dark outline and orientation mark keep every colour visible on every scene (a green shape on
    # grass) and make rotation visible even for a circle; on the night scene they are light instead.
    ink = np.array((235.0, 235, 235)) if spec.scene == "night" else np.array((15.0, 15, 15))
    yy, xx = np.mgrid[0:height, 0:width] + 0.5

    def pose(time: float):  # the shape's (x, y, r, angle) at ``time`` in [0, 1] of the clip
        time = min(max(time, 0.0), 1.0)
        return at(1.0 - time if backwards else time)

    def draw(img, x, y, r, ang, opacity=1.0):
        # Only the shape's bounding box is drawn (every shape fits in radius 1.15, plus the outline).
        half = 1.2 * r + 3
        ys = slice(max(0, int(y - half)), min(height, int(y + half) + 1))
        xs = slice(max(0, int(x - half)), min(width, int(x + half) + 1))
        c, si = math.cos(ang), math.sin(ang)
        dx, dy = xx[ys, xs] - x, yy[ys, xs] - y
        u, v = (c * dx + si * dy) / r, (-si * dx + c * dy) / r  # shape coordinates, radius 1
        body = _inside(spec.shape, u, v)
        box = img[ys, xs]
        if opacity < 1.0:  # a trail ghost: a faint copy of the fill, no outline
            box[body] = (1 - opacity) * box[body] + opacity * fill
            return
        grow = 1 + 1.6 / r  # the outline: a slightly larger copy of the shape, ~1.6 px wider
        edge = _inside(spec.shape, u / grow, v / grow) & ~body
        mark = (np.abs(v) <= 0.12) & (u >= 0) & (u <= 0.8) & body
        box[body] = fill
        box[body & _fill_pattern(spec.shape, u, v)] = PATTERN_SHADE * fill
        box[edge | mark] = ink

    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        time = t / (n - 1) if n > 1 else 0.0
        img = background.copy()
        if spec.action not in ("stays still", "grows"):  # a growing shape covers its own trail
            for ago, opacity in TRAIL:
                draw(img, *pose(time - ago), opacity)
        draw(img, *pose(time))
        frames[t] = img.astype(np.uint8)
    return frames


# --- writing and reading the dataset -------------------------------------------------------------------

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
        old_settings = {k: old.get(k) for k in settings}
        if old_settings != settings:
            diff = ", ".join(f"{k}: {old_settings[k]!r} there, {settings[k]!r} asked"
                             for k in settings if old_settings[k] != settings[k])
            raise ValueError(f"{root}: holds a synthetic dataset made with other settings ({diff}); "
                             f"use another folder or delete this one")
    elif videos.exists() and any(videos.iterdir()):
        raise ValueError(f"{root}: has a videos/ folder but no manifest.json, so it was not made by this "
                         f"generator (or with these settings); use another folder")
    videos.mkdir(parents=True, exist_ok=True)
    # The manifest goes first, so even an interrupted run leaves a folder whose settings are known.
    atomic_write_text(manifest, json.dumps({**settings, "n_videos": int(n_videos)}, indent=2) + "\n")

    specs = [clip_spec(seed, i) for i in range(n_videos)]
    todo = [s for s in specs if not (videos / f"{s.video_id}.mp4").exists()]

    def make(spec: ClipSpec) -> None:
        _encode(render_clip(spec, width, height, fps, seconds), videos / f"{spec.video_id}.mp4", fps)

    # Threads suffice: numpy drawing releases the GIL in its array ops and ffmpeg runs as its own process.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool, \
            tqdm(total=len(todo), desc="synthetic clips", unit="clip", disable=not progress) as bar:
        for _ in pool.map(make, todo):
            bar.update(1)

    lines = []
    for s in specs:
        lines.append(json.dumps({"video": s.video_id, "file": f"videos/{s.video_id}.mp4", "split": s.split,
                                 "captions": s.captions, "shape": s.shape, "color": s.color,
                                 "action": s.action, "scene": s.scene}))
    atomic_write_text(root / "annotations.jsonl", "\n".join(lines) + "\n")
    return root


def read_synthetic(root: Path) -> Dataset:
    """Read a folder written by `generate` as a `vtr.records.Dataset` (captions ``"<video>#<k>"``).

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
                   missing_videos=missing, settings=_defining_settings(root))


def _defining_settings(root: Path) -> dict:
    """The seed and render settings the folder was made with (its manifest): they define the clips, so
    they are settings of any cache made from them (a cache of seed 0 refuses seed 1). The clip count is
    not one: growing the dataset only adds clips."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):  # a folder not made by `generate`: nothing known
        return {}
    return {k: manifest[k] for k in ("seed", "version", "width", "height", "fps", "seconds") if k in manifest}
