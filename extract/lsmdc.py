"""LSMDC (the LSMDC16 retrieval challenge): movie clips, one sentence per row.

Annotations (default: the first of ``root/annotations``, ``root/lsmdc_data``, ``root``) are the
tab-separated LSMDC16 files, without a header, six fields a row:
``clip_id  start_aligned  end_aligned  start_extracted  end_extracted  sentence``

- ``LSMDC16_annos_training.csv`` -> train, ``LSMDC16_annos_val.csv`` -> val,
  ``LSMDC16_challenge_1000_publictect.csv`` -> test (the 1,000-clip test set CLIP4Clip evaluates).

A clip id may repeat (several sentences); captions are ``"<clip_id>#<k>"`` in file order.
Videos: ``<clip_id>.avi`` (any video extension) anywhere under the first of ``avi``, ``videos``, ``root``
(the release keeps one folder per movie). Protocol: 12 frames, 32 words, test split evaluated.
"""
from __future__ import annotations

from pathlib import Path

from vtr.extract.dataset_builder import (AnnotationError, DatasetBuilder, annotation_folder, check_id,
                                         files_present, read_lines, videos_folder)
from vtr.cache.records import Dataset

FILES = {"LSMDC16_annos_training.csv": "train", "LSMDC16_annos_val.csv": "val",
         "LSMDC16_challenge_1000_publictect.csv": "test"}


def read_lsmdc(root: Path, annotations: Path | None = None, *, videos: str | Path | None = None,
               check_videos: bool = True, **_ignored) -> Dataset:
    """Read LSMDC16 from ``root`` (videos) and ``annotations`` (see the module doc)."""
    root = Path(root)
    ann = annotation_folder(root, annotations, ("annotations", "lsmdc_data", ""), tuple(FILES))
    present = files_present(ann, FILES, f"no LSMDC annotations: expected {', '.join(FILES)}")
    b = DatasetBuilder("lsmdc", videos_folder(root, videos, ("avi", "videos")), check_videos)
    counts: dict[str, int] = {}
    for file, split in present.items():
        path = ann / file
        for n, line in read_lines(path):
            where = f"{path}, line {n}"
            fields = line.split("\t")
            if len(fields) != 6:
                raise AnnotationError(f"{where}: expected 6 tab-separated fields (clip_id, start_aligned, "
                                      f"end_aligned, start_extracted, end_extracted, sentence), got {len(fields)}")
            clip = check_id(fields[0].strip(), where)
            if b.add_video(clip, split, where, default_name=f"{clip}.avi"):
                k = counts.get(clip, 0)
                counts[clip] = k + 1
                b.add_caption(f"{clip}#{k}", clip, fields[5], where)
    return b.build(max_frames=12, max_words=32, eval_split="test")
