"""Reports: a plain-text comparison table and atomic JSON files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tabulate

from vtr.core.files import atomic_write_text

METRICS = ("R@1", "R@5", "R@10", "MdR", "MnR")
TRANSDUCTIVE_FOOTNOTE = "* DSL at inference uses all test queries at once (transductive)"
RANDOM_CLIP_NOTE = "CLIP weights are randomly initialised ({model}): numbers are not meaningful for real retrieval"
# Every report's JSON says what of the split was not evaluated ("left_out"); when anything was, this note too.
LEFT_OUT_NOTE = ("left out: {videos} of the {split_videos} {split} videos and {captions} of the {split_captions} "
                 "{split} captions: {why} ({see})")
UNDER_THE_TABLE = (RANDOM_CLIP_NOTE.split("(")[0], LEFT_OUT_NOTE.split(":")[0] + ":")


def _name(report: dict) -> str:
    name = report.get("name")
    if not name:
        rescore = report.get("rescore", "none")
        name = report.get("model", "?") + ("" if rescore in ("none", None) else f"+{rescore}")
    return name + (" *" if report.get("transductive") else "")


def format_table(reports: list[dict]) -> str:
    """One aligned row per report: name, T2V R@1 R@5 R@10 MdR MnR, V2T the same; then footnotes.

    Transductive rows are starred, with a footnote; notes about randomly initialised CLIP weights and about
    captions left out (their videos failed to decode) are listed once each below the table.
    """
    header = ["model"] + [f"T2V {m}" for m in METRICS] + [f"V2T {m}" for m in METRICS]
    rows = [[_name(r)] + [f"{r[d][m]:.1f}" for d in ("t2v", "v2t") for m in METRICS] for r in reports]
    # tabulate widens every header by its module setting MIN_PADDING; 0 sizes each column to its widest cell.
    saved, tabulate.MIN_PADDING = tabulate.MIN_PADDING, 0
    try:
        table = tabulate.tabulate(rows, header, tablefmt="simple", disable_numparse=True,
                                  colalign=["left"] + ["right"] * (len(header) - 1))
    finally:
        tabulate.MIN_PADDING = saved
    out = [table]
    if any(r.get("transductive") for r in reports):
        out.append(TRANSDUCTIVE_FOOTNOTE)
    # Only the warnings go under the table (random CLIP, captions left out); other notes stay in the JSON.
    seen = set()
    for r in reports:
        for note in r.get("notes", []):
            if note.startswith(UNDER_THE_TABLE) and note not in seen:
                seen.add(note)
                out.append(note)
    return "\n".join(out)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, creating parent folders; atomic (temp file + os.replace)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")
