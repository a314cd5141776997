"""Bring your own: a CSV or JSONL of ``video, caption[, split]`` and a folder of videos.

- CSV (``.csv``, comma-separated, with a header naming the columns ``video``, ``caption`` and optionally
  ``split``, in any order; other columns are ignored).
- JSONL (``.jsonl``): one object a line with ``video``, ``caption`` (or ``captions``, a list) and
  optionally ``split``.

``annotations`` is the file itself, or a folder holding ``annotations.csv`` / ``annotations.jsonl``
(default: ``root``). ``video`` is a file name or a path relative to the videos folder (default:
``root/videos`` if it exists, else ``root``), with or without its extension; it may not leave that folder.
A row without a split gets ``default_split`` ("test": with no split given, the data is evaluated).
Ids: video = ``video`` without its extension; caption = ``"<video>#<k>"`` in file order.
Protocol: 12 frames, 32 words, test split evaluated.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from vtr.extract.paths import (AnnotationError, DatasetBuilder, ext_rank, read_lines, safe_join, split_ext,
                               videos_folder)
from vtr.records import SPLITS, Dataset

NAMES = ("annotations.csv", "annotations.jsonl")


def read_byo(root: Path, annotations: Path | None = None, *, default_split: str = "test",
             videos: str | Path | None = None, check_videos: bool = True, **_ignored) -> Dataset:
    """Read your own videos and captions (see the module doc for the formats)."""
    if default_split not in SPLITS:
        raise ValueError(f"default_split must be one of {', '.join(SPLITS)}, not {default_split!r}")
    root = Path(root)
    path = _annotation_file(Path(annotations) if annotations is not None else root)
    rows = _read_jsonl(path) if path.suffix.lower() == ".jsonl" else _read_csv(path)
    folder = videos_folder(root, videos, ("videos",))
    b = DatasetBuilder("byo", folder, check_videos)
    counts: dict[str, int] = {}
    for video, texts, split, where in rows:
        target = safe_join(folder, video, where)  # refuses paths leaving the folder
        rel = target.relative_to(folder).as_posix()
        vid = split_ext(rel)[0]
        split = split or default_split
        found = None
        if check_videos:
            found = target if target.is_file() else _with_any_extension(b, target, where)
        if not b.add_video(vid, split, where, path=found, default_name=rel):
            continue
        for text in texts:
            k = counts.get(vid, 0)
            counts[vid] = k + 1
            b.add_caption(f"{vid}#{k}", vid, text, where)
    return b.build(max_frames=12, max_words=32, eval_split="test")


def _with_any_extension(b: DatasetBuilder, target: Path, where: str) -> Path | None:
    # "clip" or "clip.avi" in the annotations, "clip.mp4" on disk: match by stem in the same folder.
    hits = [p for p in b.index.by_stem.get(split_ext(target.name)[0], []) if p.parent == target.parent]
    return b.index.inside(min(hits, key=lambda p: ext_rank(p.name)), where) if hits else None


def _annotation_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in NAMES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: no annotations file: expected {' or '.join(NAMES)} (or pass the file)")


def _split(value, where: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if value not in SPLITS:
        raise AnnotationError(f"{where}: split {value!r} is not one of {', '.join(SPLITS)}")
    return value


def _read_csv(path: Path):
    lines = read_lines(path)
    if not lines:
        raise AnnotationError(f"{path}: empty file; expected a header 'video,caption[,split]' and rows")
    header = [h.strip().lower() for h in next(csv.reader([lines[0][1]]))]
    if "video" not in header or "caption" not in header:
        raise AnnotationError(f"{path}, line {lines[0][0]}: the header must name the columns video and caption "
                              f"(and optionally split), got {lines[0][1]!r}")
    iv, ic = header.index("video"), header.index("caption")
    isp = header.index("split") if "split" in header else None
    rows = []
    for n, text in lines[1:]:
        where = f"{path}, line {n}"
        try:
            fields = next(csv.reader(io.StringIO(text)))
        except (csv.Error, StopIteration) as e:
            raise AnnotationError(f"{where}: not a CSV row ({e})") from None
        if len(fields) != len(header):
            raise AnnotationError(f"{where}: expected {len(header)} fields ({', '.join(header)}), got {len(fields)}"
                                  " (quote captions that contain commas)")
        split = _split(fields[isp].strip(), where) if isp is not None else None
        rows.append((fields[iv].strip(), [fields[ic]], split, where))
    return rows


def _read_jsonl(path: Path):
    rows = []
    for n, text in read_lines(path):
        where = f"{path}, line {n}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("video"), str):
            raise AnnotationError(f"{where}: expected an object with a 'video' string")
        texts = obj.get("captions", [obj["caption"]] if "caption" in obj else None)
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise AnnotationError(f"{where}: expected 'caption' (a string) or 'captions' (a list of strings)")
        rows.append((obj["video"], texts, _split(obj.get("split"), where), where))
    return rows
