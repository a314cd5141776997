"""Drawing a synthetic clip (`ClipPlan`) as frames with numpy: the scene's background, the shape, its motion.

Some actions differ only in frame order (left/right, up/down, grows/shrinks): a clip of one, played
backwards, is a clip of the other. Rendering is deterministic: the same plan gives the same pixels; a
change to the drawing changes existing clips: bump GENERATOR_VERSION (vtr.extract.synthetic).
"""
from __future__ import annotations

import math

import numpy as np

from vtr.extract.synthetic_captions import ACTIONS, COLORS, SCENES, SHAPES, ClipPlan


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
    barely reaches them (a linear probe of random:tiny frame features told the seven outlines apart little
    better than chance). A texture of its own makes a shape visible to every patch it covers.
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


def _layout(plan: ClipPlan, w: int, h: int):
    """Where the shape is, how big and how turned, as a function of progress s in [0, 1].

    Reversed actions (left/right, up/down, grows/shrinks) share one path and differ only in the
    direction s runs. Positions stay inside the centred h x h square that CLIP's centre crop keeps, and
    the shape is large (a third of the frame's height across), so what it is and how it moves fill the crop.
    """
    rng = np.random.default_rng(plan.variant)
    radius = 0.24 * h * rng.uniform(0.9, 1.1)
    cx, cy = w / 2 + h * rng.uniform(-0.06, 0.06), h * rng.uniform(0.44, 0.56)
    angle0 = rng.uniform(0, 2 * np.pi)
    lo_x, hi_x = w / 2 - h * rng.uniform(0.2, 0.24), w / 2 + h * rng.uniform(0.2, 0.24)
    lo_y, hi_y = h * rng.uniform(0.26, 0.3), h * rng.uniform(0.7, 0.74)
    r_small, r_big = 0.1 * h, 0.38 * h
    a = plan.action

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


def render_clip(plan: ClipPlan, width: int = 128, height: int = 96, fps: float = 10,
                seconds: float = 6.0) -> np.ndarray:
    """Draw clip ``plan`` as [F, H, W, 3] uint8 RGB frames (F = round(fps * seconds))."""
    n = max(1, int(round(fps * seconds)))
    at, backwards = _layout(plan, width, height)
    background = np.clip(_background(plan.scene, height, width, np.random.default_rng(plan.variant + 1)), 0, 255)
    fill = np.array(COLORS[plan.color][0], np.float64)
    # A dark outline and orientation mark keep every colour visible on every scene (a green shape on
    # grass) and make rotation visible even for a circle; on the night scene they are light instead.
    ink = np.array((235.0, 235, 235)) if plan.scene == "night" else np.array((15.0, 15, 15))
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
        body = _inside(plan.shape, u, v)
        box = img[ys, xs]
        if opacity < 1.0:  # a trail ghost: a faint copy of the fill, no outline
            box[body] = (1 - opacity) * box[body] + opacity * fill
            return
        grow = 1 + 1.6 / r  # the outline: a slightly larger copy of the shape, ~1.6 px wider
        edge = _inside(plan.shape, u / grow, v / grow) & ~body
        mark = (np.abs(v) <= 0.12) & (u >= 0) & (u <= 0.8) & body
        box[body] = fill
        box[body & _fill_pattern(plan.shape, u, v)] = PATTERN_SHADE * fill
        box[edge | mark] = ink

    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        time = t / (n - 1) if n > 1 else 0.0
        img = background.copy()
        if plan.action not in ("stays still", "grows"):  # a growing shape covers its own trail
            for ago, opacity in TRAIL:
                draw(img, *pose(time - ago), opacity)
        draw(img, *pose(time))
        frames[t] = img.astype(np.uint8)
    return frames
