"""What each synthetic clip shows and how its captions say it: the vocabulary, the templates, `clip_plan`.

Each clip is an entity (shape x colour) doing an action (how it moves) in a scene (the background), so
each CAMoE stream has something to find. Everything about clip ``i`` (its attributes, captions and
split) depends only on ``(seed, i)``, so growing a dataset keeps the clips it has. A change to a word, a
template or the draws changes existing clips: bump GENERATOR_VERSION (vtr.extract.synthetic).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
class ClipPlan:
    """Everything that defines synthetic clip ``index``; ``variant`` seeds its layout jitter and background texture."""

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


def clip_plan(seed: int, i: int, n_captions: int = 5) -> ClipPlan:
    """The plan of clip ``i`` of the dataset made from ``seed``: a pure function of (seed, i)."""
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
    return ClipPlan(i, f"synth_{i:05d}", shape, color, action, scene, split, captions, variant)


# The two-word nouns of the vocabulary: the caption parser reads each as one noun (vtr.extract.parse_rules),
# where spaCy would read "plus" in "a lilac plus sign" as "and".
CAPTION_NOUNS = frozenset(w.lower() for words in SHAPES.values() for w in words if len(w.split()) == 2)
