"""DiDeMo and ActivityNet Captions, read for paragraph-to-video retrieval as CLIP4Clip does it.

Each video's sentences, joined with one space between words (stray spaces dropped) in annotation order, make one caption
``"<video id>#0"``; the whole video is the target (segment times are not used). Protocol: 64 frames,
64 words, test split evaluated.

DiDeMo (annotations default: the first of ``root/annotations``, ``root/didemo_data``, ``root``):
``{train,val,test}_data.json`` from LocalizingMoments (lists of ``{description, times, video, ...}``),
each file its split. The video id is the file name's stem (``x.mov``, ``x.`` and ``x`` are all ``x``),
because the copies in circulation are often re-encoded under another extension: the lists even
disagree with the JSON (``.mp4`` vs ``.avi``), and val_data.json names 29 videos under two extensions
(1,094 names, 1,065 videos): those are merged, their descriptions joined in file order. With ``use_lists=True`` only the videos named in
collaborative-experts' ``{train,val,test}_list.txt`` are kept (CLIP4Clip's behaviour; the lists hold
the videos that could be downloaded). When no test file is present, val is the evaluated split.

ActivityNet Captions (annotations default: the first of ``root/annotations``, ``root/activitynet_data``,
``root``): ``train.json`` -> train and ``val_1.json`` -> test (CLIP4Clip evaluates val_1; ``val_2.json``
annotates the same videos again, so it is not read: using it as val would leak test videos).
Ids keep their ``v_`` prefix; files ``v_<id>.<ext>`` or ``<id>.<ext>`` are both found.
Videos, both datasets: under the first of ``videos``, ``root``.
"""
from __future__ import annotations

from pathlib import Path

from vtr.extract.dataset_builder import (AnnotationError, DatasetBuilder, ReaderOption, annotation_folder,
                                         check_id, files_present, load_json, read_lines, split_ext, videos_folder)
from vtr.cache.records import SPLITS, Dataset

DIDEMO_FILES = {s: f"{s}_data.json" for s in SPLITS}
DIDEMO_LISTS = {s: f"{s}_list.txt" for s in SPLITS}
ANET_FILES = {"train.json": "train", "val_1.json": "test"}
PARAGRAPH = dict(max_frames=64, max_words=64)
DIDEMO_OPTIONS = (ReaderOption("use_lists", "keep only the videos named in {train,val,test}_list.txt (CLIP4Clip's "
                                              "choice).", default=False, type=bool),)


def _paragraph(sentences: list[str]) -> str:
    # Sentences often start with a space or hold double spaces: one space between words throughout.
    return " ".join(" ".join(sentences).split())


def read_didemo(root: Path, annotations: Path | None = None, *, use_lists: bool = False,
                videos: str | Path | None = None, check_videos: bool = True, **_ignored) -> Dataset:
    """Read DiDeMo paragraphs from ``root`` (videos) and ``annotations`` (see the module doc)."""
    root = Path(root)
    ann = annotation_folder(root, annotations, ("annotations", "didemo_data", ""), tuple(DIDEMO_FILES.values()))
    by_file = files_present(ann, {f: s for s, f in DIDEMO_FILES.items()},
                            f"no DiDeMo annotations: expected any of {', '.join(DIDEMO_FILES.values())}")
    present = {s: ann / f for f, s in by_file.items()}
    b = DatasetBuilder("didemo", videos_folder(root, videos, ("videos",)), check_videos)
    listed = _read_didemo_lists(ann, present) if use_lists else None
    for split, path in present.items():
        data = load_json(path)
        if not isinstance(data, list):
            raise AnnotationError(f"{path}: expected a list of moment descriptions")
        texts: dict[str, list[str]] = {}  # stem -> descriptions, in file order
        first: dict[str, tuple[str, str]] = {}  # stem -> (file name, where) of its first description
        names: set[str] = set()
        for i, item in enumerate(data):
            where = f"{path}, entry {i}"
            if not isinstance(item, dict) or not isinstance(item.get("video"), str) \
                    or not isinstance(item.get("description"), str):
                raise AnnotationError(f"{where}: expected an object with 'video' and 'description' strings")
            name = check_id(item["video"].strip(), where)
            stem = split_ext(name)[0]
            first.setdefault(stem, (name, where))
            names.add(name)
            texts.setdefault(stem, []).append(item["description"])
        if len(names) > len(texts):  # e.g. x.mov and x.mp4: one Flickr video, re-encoded
            b.notes.append(f"{path}: {len(names)} video names but {len(texts)} distinct stems: "
                           f"{len(names) - len(texts)} videos appear under two extensions and were merged")
        dropped = 0
        for stem, sentences in texts.items():
            name, where = first[stem]
            if listed is not None and stem not in listed[split]:
                dropped += 1
                continue
            if b.add_video(stem, split, where, names=(name, stem), default_name=name):
                b.add_caption(f"{stem}#0", stem, _paragraph(sentences) or sentences[0], where)
                b.sentences[split] = b.sentences.get(split, 0) + len(sentences)
        if dropped:
            b.notes.append(f"{path}: {dropped} videos are not in {DIDEMO_LISTS[split]} and were left out")
    eval_split = "test" if "test" in present else "val"
    if eval_split != "test":
        b.notes.append(f"{ann}: no {DIDEMO_FILES['test']}, so val is the evaluated split")
    return b.build(eval_split=eval_split, **PARAGRAPH)


def _read_didemo_lists(ann: Path, present: dict) -> dict[str, set[str]]:
    """split -> the stems its list names (entries like ``x.mp4``, ``x.`` or ``x.null`` all mean ``x``)."""
    listed = {}
    for split in present:
        path = ann / DIDEMO_LISTS[split]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (use_lists needs a list for every split read)")
        listed[split] = {split_ext(check_id(t.strip(), f"{path}, line {n}"))[0] for n, t in read_lines(path)}
    return listed


def read_activitynet(root: Path, annotations: Path | None = None, *, videos: str | Path | None = None,
                     check_videos: bool = True, **_ignored) -> Dataset:
    """Read ActivityNet Captions paragraphs from ``root`` (videos) and ``annotations`` (see the module doc)."""
    root = Path(root)
    ann = annotation_folder(root, annotations, ("annotations", "activitynet_data", ""), tuple(ANET_FILES))
    present = files_present(ann, ANET_FILES, "no ActivityNet Captions annotations: expected train.json and val_1.json")
    b = DatasetBuilder("activitynet", videos_folder(root, videos, ("videos",)), check_videos)
    for file, split in present.items():
        path = ann / file
        data = load_json(path)
        if not isinstance(data, dict):
            raise AnnotationError(f"{path}: expected an object video id -> annotation")
        reversed_segments = 0
        for vid, item in data.items():
            where = f"{path}, video {vid!r}"
            check_id(vid, where)
            if not isinstance(item, dict) or not isinstance(item.get("sentences"), list) \
                    or not item["sentences"] or not all(isinstance(s, str) for s in item["sentences"]):
                raise AnnotationError(f"{where}: expected an object with a non-empty 'sentences' list of strings")
            stamps = item.get("timestamps", [])
            if not isinstance(stamps, list) or len(stamps) != len(item["sentences"]):
                raise AnnotationError(f"{where}: 'timestamps' must pair one [start, end] with each sentence")
            for t in stamps:
                if not (isinstance(t, list) and len(t) == 2 and all(isinstance(x, (int, float)) for x in t)):
                    raise AnnotationError(f"{where}: timestamp {t!r} is not [start, end]")
                reversed_segments += t[0] > t[1]
            text = _paragraph(item["sentences"])
            if not text:
                raise AnnotationError(f"{where}: every sentence is blank")
            names = (vid, vid[2:]) if vid.startswith("v_") and len(vid) > 2 else (vid,)
            if b.add_video(vid, split, where, names=names, default_name=f"{vid}.mp4"):
                b.add_caption(f"{vid}#0", vid, text, where)
                b.sentences[split] = b.sentences.get(split, 0) + len(item["sentences"])
        if reversed_segments:
            b.notes.append(f"{path}: {reversed_segments} segments have start > end (kept: paragraphs use "
                           f"whole videos)")
    if (ann / "val_2.json").is_file():
        b.notes.append(f"{ann / 'val_2.json'}: not read (it re-annotates val_1's videos, the test split)")
    return b.build(eval_split="test", **PARAGRAPH)
