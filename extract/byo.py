"""Bring your own: a CSV or JSONL of ``video, caption[, split]`` and a folder of videos.

- CSV (``.csv``, comma-separated, with a header naming the columns ``video``, ``caption`` and optionally
  ``split``, in any order; other columns are ignored). Standard CSV quoting: a quoted caption may hold
  commas, line breaks and quotes (written twice, ``""``).
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

from vtr.extract.dataset_builder import (AnnotationError, DatasetBuilder, ReaderOption, ext_rank, read_lines,
                                         safe_join, split_ext, videos_folder)
from vtr.cache.records import SPLITS, Dataset

NAMES = ("annotations.csv", "annotations.jsonl")
OPTIONS = (ReaderOption("default_split", "the split of rows that name none.", default="test", choices=SPLITS),)


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
    # Read as CSV, not line by line: a quoted caption may hold commas, quotes ("") and line breaks. Errors
    # name the line where the row starts.
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
    records = []
    try:
        while True:
            start = reader.line_num + 1
            fields = next(reader, None)
            if fields is None:
                break
            if any(f.strip() for f in fields):  # blank lines are skipped
                records.append((start, fields))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise AnnotationError(f"{path}, line {start}: a quote opened in this row is never closed (a quote "
                                  f"inside a quoted caption is written twice: \"\")") from None
        raise AnnotationError(f"{path}, line {start}: not a CSV row ({e}; a quote inside a quoted caption is "
                              f"written twice: \"\")") from None
    if not records:
        raise AnnotationError(f"{path}: empty file; expected a header 'video,caption[,split]' and rows")
    n, fields = records[0]
    header = [h.strip().lower() for h in fields]
    if "video" not in header or "caption" not in header:
        raise AnnotationError(f"{path}, line {n}: the header must name the columns video and caption "
                              f"(and optionally split), got {','.join(fields)!r}")
    iv, ic = header.index("video"), header.index("caption")
    isp = header.index("split") if "split" in header else None
    rows = []
    for n, fields in records[1:]:
        where = f"{path}, line {n}"
        if len(fields) != len(header):
            raise AnnotationError(f"{where}: expected {len(header)} fields ({', '.join(header)}), got {len(fields)}"
                                  " (quote captions that contain commas)")
        split = _split(fields[isp].strip(), where) if isp is not None else None
        rows.append((fields[iv].strip(), [fields[ic]], split, where))
    return rows


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, a BOM dropped; not UTF-8 names the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise AnnotationError(f"{path}, line {line}: not UTF-8 text ({e.reason})") from None


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
