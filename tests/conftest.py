"""Shared fixtures: the offline CLIP, and small synthetic datasets made once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# No test downloads real CLIP weights (hundreds of MB from OpenAI): a test that names an OpenAI model gets
# the offline refusal. The download tests serve their own file on 127.0.0.1 and lift this for themselves.
os.environ["VTR_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_clip():
    """The seeded random CLIP: real CLIP code, random weights, 64 px, 256-d; in fp32, so that every
    result is the same on every CPU (``auto`` would pick bf16 where the CPU has it)."""
    from vtr.extract.clip_loader import load_clip

    return load_clip("random:tiny", device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """24 synthetic clips (videos + annotations), rendered once for the session; treat as read-only."""
    from vtr.extract.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, n_videos=24, seed=0, progress=False)
    return root
