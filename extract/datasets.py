"""The dataset registry: a name (``--dataset``) -> a reader that returns a `vtr.records.Dataset`.

A reader takes the dataset's folder and its options and returns the videos (id, file, split) and the
captions, plus the protocol's defaults (max frames, evaluated split). It never decodes anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from vtr.records import Dataset


def _synthetic(root: Path, n_videos: int = 300, seed: int = 0, progress: bool = True, **_) -> Dataset:
    # Made on demand: rendering is deterministic per (seed, clip index), so this is a no-op once done.
    from vtr.extract.synthetic import generate, read_synthetic

    generate(root, n_videos=n_videos, seed=seed, progress=progress)
    return read_synthetic(root)


READERS: dict[str, Callable[..., Dataset]] = {
    "synthetic": _synthetic,
}

DEFAULT_ROOTS = {"synthetic": Path("cache") / "synthetic"}


def load_dataset(name: str, root: Path | None = None, **options) -> Dataset:
    """Read dataset ``name`` from ``root`` (its default folder when None)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    root = Path(root) if root is not None else DEFAULT_ROOTS.get(name)
    if root is None:
        raise ValueError(f"--dataset {name} needs --root, the folder holding its videos and annotations")
    return READERS[name](root, **options)
