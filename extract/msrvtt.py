"""MSR-VTT: 10,000 clips (``video0`` ... ``video9999``), 20 captions each.

Annotations (default folder: the first of ``root/annotations``, ``root/msrvtt_data``, ``root`` that holds
them): CLIP4Clip's merged ``MSRVTT_data.json``, or the official pair ``train_val_videodatainfo.json`` +
``test_videodatainfo.json`` (each ``{"videos": [...], "sentences": [...]}``); plus, for the 1k-A
protocols, ``MSRVTT_JSFUSION_test.csv`` and ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv``.

Split variants (``split_variant``):

- ``9k`` (default, CLIP4Clip's "1k-A"): train = the 9,000 videos of the 9k list, all their captions;
  test = the 1,000 (video, sentence) pairs of the JSFusion CSV. No val split (CLIP4Clip validates on test).
- ``7k``: the same test, train = the 7,010 official train+val videos of the 7k list.
- ``full``: the official splits: train 6,513, val 497, test 2,990 videos, all 20 captions each.

Videos: ``video<N>.mp4`` anywhere under the first of ``videos/all``, ``MSRVTT_Videos``, ``videos``,
``root`` (the official TrainValVideo/ and TestVideo/ subfolders are found too).
Ids: video ``video<N>``; caption = its ``sen_id`` (as a string). A 1k-A test sentence gets the ``sen_id``
of the official sentence it matches (case, punctuation and spacing aside), so one sentence keeps one id across variants;
the few without a match get ``"<video>#1kA"``.
Protocol (CLIP4Clip): 12 frames, 32 words, test split evaluated.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from vtr.extract.dataset_builder import (AnnotationError, DatasetBuilder, ReaderOption, annotation_folder,
                                         check_id, load_json, read_lines, videos_folder)
from vtr.cache.records import Dataset

MERGED = "MSRVTT_data.json"
OFFICIAL = ("train_val_videodatainfo.json", "test_videodatainfo.json")
TEST_1KA = "MSRVTT_JSFUSION_test.csv"
TRAIN_LISTS = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
VARIANTS = ("9k", "7k", "full")
OPTIONS = (ReaderOption("split_variant", "9k (1k-A test), 7k (1k-A test) or full (official 6513/497/2990).",
                        default="9k", choices=VARIANTS),)
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def read_msrvtt(root: Path, annotations: Path | None = None, *, split_variant: str = "9k",
                videos: str | Path | None = None, check_videos: bool = True, **_ignored) -> Dataset:
    """Read MSR-VTT from ``root`` (videos) and ``annotations`` under ``split_variant`` (9k, 7k or full)."""
    if split_variant not in VARIANTS:
        raise ValueError(f"MSR-VTT split variant must be one of {', '.join(VARIANTS)}, not {split_variant!r}")
    root = Path(root)
    ann = annotation_folder(root, annotations, ("annotations", "msrvtt_data", ""), (MERGED,) + OFFICIAL)
    official_split, sentences = _read_official(ann)
    name = f"msrvtt-{split_variant}"  # the variant is part of the cache's identity: splits differ
    b = DatasetBuilder(name, videos_folder(root, videos, ("videos/all", "MSRVTT_Videos", "videos")), check_videos)

    def add(vid: str, split: str, where: str) -> bool:
        return b.add_video(vid, split, where, default_name=f"{vid}.mp4")

    if split_variant == "full":
        for vid, (split, where) in official_split.items():
            if add(vid, split, where):
                for sen_id, text, s_where in sentences.get(vid, []):
                    b.add_caption(sen_id, vid, text, s_where)
        return b.build(max_frames=12, max_words=32, eval_split="test")

    train_list = ann / TRAIN_LISTS[split_variant]
    for vid, where in _read_video_list(train_list):
        if vid not in official_split:
            raise AnnotationError(f"{where}: {vid!r} is not in the MSR-VTT JSON annotations")
        if add(vid, "train", where):
            for sen_id, text, s_where in sentences.get(vid, []):
                b.add_caption(sen_id, vid, text, s_where)
    for vid, text, where in _read_1ka(ann / TEST_1KA):
        if add(vid, "test", where):
            b.add_caption(_match_sen_id(vid, text, sentences), vid, text, where)
    return b.build(max_frames=12, max_words=32, eval_split="test")


def _read_official(ann: Path):
    """video -> (split, where) and video -> [(sen_id, caption, where)] from the merged file or the pair."""
    if (ann / MERGED).is_file():
        files = [ann / MERGED]
    elif all((ann / f).is_file() for f in OFFICIAL):
        files = [ann / f for f in OFFICIAL]
    else:
        raise FileNotFoundError(f"{ann}: no MSR-VTT annotations: expected {MERGED}, or "
                                f"{OFFICIAL[0]} and {OFFICIAL[1]}")
    split_of: dict[str, tuple[str, str]] = {}
    sentences: dict[str, list[tuple[str, str, str]]] = {}
    for path in files:
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("videos"), list) \
                or not isinstance(data.get("sentences"), list):
            raise AnnotationError(f"{path}: expected an object with 'videos' and 'sentences' lists")
        for i, v in enumerate(data["videos"]):
            where = f"{path}, videos[{i}]"
            if not isinstance(v, dict) or not isinstance(v.get("video_id"), str) or "split" not in v:
                raise AnnotationError(f"{where}: expected an object with 'video_id' and 'split'")
            split = OFFICIAL_SPLITS.get(v["split"])
            if split is None:
                raise AnnotationError(f"{where}: unknown split {v['split']!r}")
            vid = check_id(v["video_id"], where)
            if vid in split_of:
                raise AnnotationError(f"{where}: video {vid!r} appears twice (first at {split_of[vid][1]})")
            split_of[vid] = (split, where)
        for i, s in enumerate(data["sentences"]):
            where = f"{path}, sentences[{i}]"
            if not isinstance(s, dict) or not isinstance(s.get("caption"), str) or "video_id" not in s \
                    or not isinstance(s.get("sen_id"), (int, str)):
                raise AnnotationError(f"{where}: expected an object with 'caption', 'video_id' and 'sen_id'")
            if s["video_id"] not in split_of:
                raise AnnotationError(f"{where}: video {s['video_id']!r} is not among the videos")
            sentences.setdefault(s["video_id"], []).append((str(s["sen_id"]), s["caption"], where))
    return split_of, sentences


def _read_video_list(path: Path):
    """[(video id, where)] from a one-column CSV with the header ``video_id``."""
    lines = read_lines(path)
    if not lines or lines[0][1].strip() != "video_id":
        raise AnnotationError(f"{path}, line 1: expected the header 'video_id'")
    return [(check_id(text.strip(), f"{path}, line {n}"), f"{path}, line {n}") for n, text in lines[1:]]


def _read_1ka(path: Path):
    """[(video id, sentence, where)] from the JSFusion 1k-A CSV (``key,vid_key,video_id,sentence``)."""
    lines = read_lines(path)
    header = next(csv.reader([lines[0][1]])) if lines else []
    if header[:4] != ["key", "vid_key", "video_id", "sentence"]:
        raise AnnotationError(f"{path}, line 1: expected the header 'key,vid_key,video_id,sentence'")
    rows = []
    for n, text in lines[1:]:
        where = f"{path}, line {n}"
        try:
            fields = next(csv.reader(io.StringIO(text)))
        except csv.Error as e:
            raise AnnotationError(f"{where}: not a CSV row ({e})") from None
        if len(fields) != 4:
            raise AnnotationError(f"{where}: expected 4 fields key,vid_key,video_id,sentence, got {len(fields)}")
        rows.append((check_id(fields[2], where), fields[3], where))
    return rows


def _normalise(text: str) -> str:
    # JSFusion's copies drop punctuation and repeated spaces ("call of duty: black ops" -> "... duty black ops").
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _match_sen_id(vid: str, text: str, sentences: dict) -> str:
    norm = _normalise(text)
    for sen_id, caption, _ in sentences.get(vid, []):
        if _normalise(caption) == norm:
            return sen_id
    return f"{vid}#1kA"
