"""What every dataset reader shares: the builder that turns annotation records into a
`vtr.cache.records.Dataset` (`DatasetBuilder`), the declaration of a reader's own options
(`ReaderOption`), safe paths, one index of the videos folder and tolerant line reading.

Safety rule: an annotation never decides which path is opened. Ids are checked (`check_id`) before they
are looked up, lookups go through an index of files that really are in the videos folder (`VideoIndex`),
and the one reader whose annotations hold relative paths (bring-your-own) resolves them with `safe_join`,
which refuses anything that would leave the folder (``..``, absolute paths, symlinks pointing outside).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from vtr.cache.records import SPLITS, CaptionItem, Dataset, VideoItem

# Extensions a video may have on disk, in the order preferred when one folder holds the same stem twice.
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".3gp", ".mpg", ".mpeg", ".wmv", ".3g2",
              ".mts", ".m2ts", ".flv", ".ogv", ".qt", ".3gpp", ".asf", ".divx")


class AnnotationError(ValueError):
    """Malformed or unsafe annotation input; the message names the file (and line) and the problem."""


@dataclass(frozen=True)
class ReaderOption:
    """An option one reader takes beyond root, annotations and videos (MSR-VTT's split variant, ...).

    A reader module lists its own in ``OPTIONS``; `vtr extract` and `vtr info --dataset` make each a flag
    (``--split-variant``), so a new dataset needs no edit of the command line. Unset, the reader's own
    default applies; ``default`` repeats it for --help (a test checks the two agree).
    """

    name: str  # the reader's keyword argument
    help: str  # what it does, for --help
    default: Any = None
    type: type = str  # str, int or bool (a flag)
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """The help text with the default, when there is one worth saying."""
        shown = self.default is not None and self.default is not False
        return self.help + (f" Default: {self.default}." if shown else "")


def check_id(name: str, where: str) -> str:
    """Return ``name`` if it is safe to use as (part of) a file name; else raise naming ``where``.

    Refused: empty names, path separators, ``.``/``..``, absolute or drive paths, control characters.
    """
    if not isinstance(name, str) or not name.strip():
        raise AnnotationError(f"{where}: empty video id")
    if any(ord(c) < 32 for c in name):
        raise AnnotationError(f"{where}: video id {name!r} contains control characters")
    if "/" in name or "\\" in name or name in (".", "..") or PureWindowsPath(name).drive:
        raise AnnotationError(f"{where}: video id {name!r} is a path, not a name; refusing it "
                              f"(ids may not point outside the dataset folder)")
    return name


def safe_join(base: Path, relative: str, where: str) -> Path:
    """``base / relative`` if it stays inside ``base`` (after resolving symlinks); else raise naming ``where``.

    ``relative`` uses ``/`` (or ``\\``) separators; absolute paths and ``..`` parts are refused outright,
    and a symlink on the way that resolves outside ``base`` is refused too.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise AnnotationError(f"{where}: empty video path")
    rel = relative.replace("\\", "/")
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or PureWindowsPath(relative).drive or PureWindowsPath(relative).root \
            or ".." in parts or any(ord(c) < 32 for c in rel):
        raise AnnotationError(f"{where}: video path {relative!r} leaves the dataset folder; refusing it")
    path = base.joinpath(*parts)
    real_base = base.resolve()
    if not path.resolve().is_relative_to(real_base):
        raise AnnotationError(f"{where}: video path {relative!r} resolves to {path.resolve()}, outside "
                              f"{real_base}; refusing it")
    return path


def split_ext(name: str) -> tuple[str, str]:
    """``("x", ".avi")`` for ``"x.avi"``; ``("x", ".")`` for ``"x."``; ``("x", "")`` for ``"x"``.

    Only the last dot counts, and only when what follows it looks like an extension (at most 5
    alphanumerics), so LSMDC ids such as ``..._00.01.02.345-00.01.04.567`` are not cut at ``.567``.
    """
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    if ext == "" or (len(ext) <= 5 and ext.isalnum() and not ext.isdigit()):
        return stem, "." + ext
    return name, ""


class VideoIndex:
    """The video files under one folder, indexed once (``os.scandir``) by file name and by stem.

    Subfolders are walked (the official MSR-VTT release splits TrainValVideo/TestVideo, LSMDC keeps one
    folder per movie), but symlinked subfolders are not followed. Files count as videos when their
    extension is in `VIDEO_EXTS` or when they have none.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        if self.folder.is_dir():
            self._scan(self.folder)

    def _scan(self, folder: Path) -> None:
        try:
            it = os.scandir(folder)
        except PermissionError:
            if folder == self.folder:
                raise
            return  # an unreadable subfolder holds no video we could decode anyway
        with it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    self._scan(Path(entry.path))
                elif entry.is_file():
                    path = Path(entry.path)
                    self.by_name.setdefault(entry.name, []).append(path)
                    stem, ext = split_ext(entry.name)
                    if ext.lower() in VIDEO_EXTS or ext == "":
                        self.by_stem.setdefault(stem, []).append(path)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_stem.values())

    def find(self, names: tuple[str, ...], where: str) -> Path | None:
        """The file for the first of ``names`` (checked ids) found, by exact name, else by stem; or None.

        A stem present in two subfolders is ambiguous (e.g. a second, re-encoded copy of the videos):
        that is an error naming both, rather than a silent pick.
        """
        for name in names:
            hits = self.by_name.get(name)
            if not hits:
                hits = self.by_stem.get(split_ext(name)[0]) or self.by_stem.get(name)
            if not hits:
                continue
            if len({p.parent for p in hits}) > 1:
                raise AnnotationError(f"{where}: video {name!r} matches several files ({hits[0]}, {hits[1]}); "
                                      f"point --videos at the one folder to use")
            path = min(hits, key=lambda p: ext_rank(p.name))
            return self.inside(path, where)
        return None

    def inside(self, path: Path, where: str) -> Path:
        # A file in the folder may be a symlink; it must still resolve inside the (resolved) folder.
        if path.is_symlink() and not path.resolve().is_relative_to(self.folder.resolve()):
            raise AnnotationError(f"{where}: {path} is a symlink to {path.resolve()}, outside "
                                  f"{self.folder.resolve()}; refusing it")
        return path


def ext_rank(name: str) -> int:
    ext = split_ext(name)[1].lower()
    return VIDEO_EXTS.index(ext) if ext in VIDEO_EXTS else len(VIDEO_EXTS)


def load_json(path: Path):
    """A JSON annotation file (a BOM tolerated); malformed JSON names the file and line."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` for each non-blank line: CRLF or LF, a BOM, no final newline all accepted."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise AnnotationError(f"{path}, line {line}: not UTF-8 text ({e.reason})") from None
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def first_existing(root: Path, candidates: tuple[str, ...], want: tuple[str, ...]) -> Path:
    """The first of ``root/<candidate>`` folders holding any of the files ``want``; else ``root``."""
    for c in candidates:
        folder = root / c if c else root
        if folder.is_dir() and any((folder / w).exists() for w in want):
            return folder
    return root


def annotation_folder(root: Path, annotations: str | Path | None, candidates: tuple[str, ...],
                      want: tuple[str, ...]) -> Path:
    """``annotations`` when the user named it, else `first_existing` of ``candidates`` under ``root``."""
    return Path(annotations) if annotations is not None else first_existing(root, candidates, want)


def files_present(ann: Path, files: dict, missing: str) -> dict:
    """The entries of ``files`` (file name -> anything) whose file is in ``ann``; none is an error that names
    ``ann`` and says ``missing`` (what was expected there)."""
    present = {f: v for f, v in files.items() if (ann / f).is_file()}
    if not present:
        raise FileNotFoundError(f"{ann}: {missing}")
    return present


def videos_folder(root: Path, videos: str | Path | None, candidates: tuple[str, ...]) -> Path:
    """``videos`` (relative to ``root`` unless absolute), else the first of ``candidates`` that exists, else root."""
    if videos is not None:
        folder = Path(videos) if Path(videos).is_absolute() else root / videos
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such videos folder")
        return folder
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return root


@dataclass
class _Video:
    id: str
    split: str
    path: Path


class DatasetBuilder:
    """Collects videos and captions in annotation order, finds each video's file, counts the missing.

    With ``check_videos=False`` nothing is looked up on disk (for statistics from annotations alone):
    every video is kept, with the path it would usually have (``default_name``).
    """

    def __init__(self, name: str, folder: Path, check_videos: bool = True):
        self.name = name
        self.folder = Path(folder)
        self.check_videos = check_videos
        if check_videos and not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: no such folder (where the videos should be)")
        self.index = VideoIndex(self.folder) if check_videos else None
        self.videos: dict[str, _Video] = {}
        self.missing: dict[str, str] = {}  # id -> split
        self.captions: list[CaptionItem] = []
        self.notes: list[str] = []
        self.sentences: dict[str, int] = {}  # paragraph readers: source sentences per split (kept videos)

    def add_video(self, vid: str, split: str, where: str, names: tuple[str, ...] = (),
                  default_name: str | None = None, path: Path | None = None) -> bool:
        """Add video ``vid`` (an id already checked); False if its file is missing (it is then counted).

        ``names`` are the file names or stems to look for (default: the id); ``path`` skips the lookup.
        Adding a video twice with the same split is a no-op; with another split, an error.
        """
        if split not in SPLITS:
            raise AnnotationError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        earlier = self.videos[vid].split if vid in self.videos else self.missing.get(vid)
        if earlier is not None:
            if earlier != split:
                raise AnnotationError(f"{where}: video {vid!r} is in split {split!r} here but {earlier!r} "
                                      f"earlier; a video belongs to one split")
            return vid in self.videos
        if path is None and self.index is not None:
            path = self.index.find(names or (vid,), where)
        elif path is None:
            path = self.folder / (default_name or vid)
        if path is None or (self.check_videos and not path.is_file()):
            self.missing[vid] = split
            return False
        self.videos[vid] = _Video(vid, split, path)
        return True

    def add_caption(self, cid: str, vid: str, text: str, where: str) -> None:
        """Add a caption of video ``vid`` (dropped silently when the video is missing; it is counted there)."""
        if not isinstance(text, str) or not text.strip():
            raise AnnotationError(f"{where}: empty caption")
        if vid in self.missing:
            return
        video = self.videos.get(vid)
        if video is None:
            raise AnnotationError(f"{where}: caption for video {vid!r}, which no split lists")
        self.captions.append(CaptionItem(id=cid, video_id=vid, text=text.strip(), split=video.split))

    def build(self, *, max_frames: int, max_words: int, eval_split: str) -> Dataset:
        ids = [c.id for c in self.captions]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise AnnotationError(f"{self.name}: caption id {dup!r} occurs twice; ids must be unique")
        with_captions = {c.video_id for c in self.captions}
        videos = [VideoItem(v.id, v.path, v.split) for v in self.videos.values() if v.id in with_captions]
        uncaptioned = len(self.videos) - len(videos)
        notes = list(self.notes)
        if uncaptioned:
            notes.append(f"{uncaptioned} videos have no caption and were left out")
        return Dataset(name=self.name, videos=videos, captions=self.captions, max_frames=max_frames,
                       eval_split=eval_split, missing_videos=list(self.missing), max_words=max_words,
                       notes=notes, sentences=dict(self.sentences))
