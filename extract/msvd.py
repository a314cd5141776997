"""MSVD (YouTube2Text): 1,970 clips, ~41 captions each; splits 1,200 train / 100 val / 670 test.

Layouts accepted, in the annotations folder (default: the first of ``root/annotations``,
``root/msvd_data``, ``root`` that holds them):

- S2VT text form: ``sents_{train,val,test}_lc_nopunc.txt`` (``vidN<TAB>caption``) with
  ``youtube_mapping.txt`` (``<clip name> vidN``), which names each ``vidN``'s clip.
- CLIP4Clip: ``raw-captions.pkl`` (clip name -> list of token lists); it needs the split lists.
- Split lists ``{train,val,test}_list.txt`` (clip names). When present they define the splits; without
  them the S2VT file a caption sits in gives its split.

Videos: ``YouTubeClips/<clip name>.avi`` (or ``videos/``, or ``root``; any video extension).
Ids: video = clip name; caption = ``"<clip name>#<k>"``, k counting the clip's captions in file order
(train, val, test file). Protocol (CLIP4Clip): 12 frames, 32 words, test split evaluated.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from vtr.extract.dataset_builder import (AnnotationError, DatasetBuilder, annotation_folder, check_id, read_lines,
                                         videos_folder)
from vtr.cache.records import SPLITS, Dataset

SENTS = "sents_{}_lc_nopunc.txt"
MAPPING = "youtube_mapping.txt"
PKL = "raw-captions.pkl"
LIST = "{}_list.txt"


def read_msvd(root: Path, annotations: Path | None = None, *, videos: str | Path | None = None,
              check_videos: bool = True, **_ignored) -> Dataset:
    """Read MSVD from ``root`` (videos) and ``annotations`` (see the module doc for the layouts)."""
    root = Path(root)
    want = (MAPPING, PKL, LIST.format("train"))
    ann = annotation_folder(root, annotations, ("annotations", "msvd_data", ""), want)
    b = DatasetBuilder("msvd", videos_folder(root, videos, ("YouTubeClips", "videos")), check_videos)

    split_of = _read_split_lists(ann)
    if (ann / PKL).is_file():
        captions = _read_pkl(ann / PKL)  # [(clip, text, where)]
        if split_of is None:
            raise FileNotFoundError(f"{ann}: {PKL} has no splits; it needs train_list.txt, val_list.txt "
                                    f"and test_list.txt next to it")
    elif (ann / MAPPING).is_file():
        captions, s2vt_split = _read_s2vt(ann)
        split_of = split_of or s2vt_split
    else:
        raise FileNotFoundError(f"{ann}: no MSVD annotations: expected {PKL}, or {MAPPING} with "
                                f"{SENTS.format('train')} (and val, test)")

    for clip, (split, where) in split_of.items():
        b.add_video(clip, split, where, default_name=f"{clip}.avi")
    counts: dict[str, int] = {}
    for clip, text, where in captions:
        if clip not in split_of:
            raise AnnotationError(f"{where}: clip {clip!r} has captions but is in no split list")
        k = counts.get(clip, 0)
        counts[clip] = k + 1
        b.add_caption(f"{clip}#{k}", clip, text, where)
    return b.build(max_frames=12, max_words=32, eval_split="test")


def _read_split_lists(ann: Path) -> dict[str, tuple[str, str]] | None:
    """clip -> (split, where) from the three lists, or None when there are none."""
    files = {s: ann / LIST.format(s) for s in SPLITS}
    present = [s for s, f in files.items() if f.is_file()]
    if not present:
        return None
    if len(present) < len(SPLITS):
        absent = ", ".join(str(files[s]) for s in SPLITS if s not in present)
        raise FileNotFoundError(f"{ann}: has some MSVD split lists but not {absent}")
    split_of: dict[str, tuple[str, str]] = {}
    for split, f in files.items():
        for n, line in read_lines(f):
            where = f"{f}, line {n}"
            clip = check_id(line.strip(), where)
            if clip in split_of:
                raise AnnotationError(f"{where}: clip {clip!r} is listed twice (first at {split_of[clip][1]})")
            split_of[clip] = (split, where)
    return split_of


def _read_s2vt(ann: Path):
    """Captions [(clip, text, where)] and clip -> (split, where) from the S2VT sentence files."""
    vid_to_clip: dict[str, str] = {}
    mapping = ann / MAPPING
    for n, line in read_lines(mapping):
        where = f"{mapping}, line {n}"
        fields = line.split()
        if len(fields) != 2:
            raise AnnotationError(f"{where}: expected '<clip name> vidN', got {line!r}")
        clip, vid = check_id(fields[0], where), fields[1]
        if vid in vid_to_clip:
            raise AnnotationError(f"{where}: {vid} is mapped twice")
        vid_to_clip[vid] = clip
    captions, split_of = [], {}
    for split in SPLITS:
        f = ann / SENTS.format(split)
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such file (the S2VT form needs train, val and test)")
        for n, line in read_lines(f):
            where = f"{f}, line {n}"
            vid, tab, text = line.partition("\t")
            if not tab:
                raise AnnotationError(f"{where}: expected 'vidN<TAB>caption', got {line!r}")
            clip = vid_to_clip.get(vid.strip())
            if clip is None:
                raise AnnotationError(f"{where}: {vid.strip()!r} is not in {mapping}")
            first = split_of.setdefault(clip, (split, where))
            if first[0] != split:
                raise AnnotationError(f"{where}: {vid.strip()} ({clip}) has captions in the {first[0]} file "
                                      f"too ({first[1]}); a clip belongs to one split")
            captions.append((clip, text, where))
    return captions, split_of


class _DataOnly(pickle.Unpickler):
    """Unpickles plain data only: a pickle that names any class or function (code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is accepted")


def _read_pkl(path: Path):
    """Captions [(clip, text, where)] from CLIP4Clip's raw-captions.pkl (clip -> list of token lists)."""
    try:
        with open(path, "rb") as f:
            data = _DataOnly(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise AnnotationError(f"{path}: not a plain-data pickle ({e})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a dict clip name -> captions, got {type(data).__name__}")
    captions = []
    for clip, caps in data.items():
        where = f"{path}, clip {clip!r}"
        check_id(clip, where)
        if not isinstance(caps, list):
            raise AnnotationError(f"{where}: expected a list of captions, got {type(caps).__name__}")
        for k, tokens in enumerate(caps):
            if isinstance(tokens, str):
                text = tokens
            elif isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                text = " ".join(tokens)
            else:
                raise AnnotationError(f"{where}, caption {k}: expected a list of tokens or a string")
            captions.append((clip, text, f"{where}, caption {k}"))
    return captions
