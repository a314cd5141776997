"""I/O failures and failed runs, driven through the CLI as a user meets them (issue 11).

Each case ends with the right exit code and ONE line that names the path and the cause (never a
traceback), and loses no row that was finished before it. The failures are real where the machine
allows: a folder the process may not write (root runs the CLI without its capabilities), a small tmpfs
that fills up (in a private mount namespace; where no namespace can be made, the per-file size limit
RLIMIT_FSIZE makes the same HDF5 writes fail with EFBIG instead).

In-process runs reuse the session's random:tiny CLIP instead of building it again for every command:
what is tested is what the CLI does around the model, and building it costs seconds each time.
"""
from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from vtr.cache import parts_dir, read_cache
from vtr.cli import main
from vtr.extract.datasets import load_dataset

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------- helpers


def byo(root: Path, rows: list[tuple[str, str, str]], clips: dict[str, Path | bytes]) -> Path:
    """A bring-your-own dataset at ``root``: ``clips`` (file name -> a clip to copy, or raw bytes to write
    as the file) in root/videos, and ``rows`` (video, caption, split) in root/annotations.csv."""
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for name, src in clips.items():
        if isinstance(src, bytes):
            (videos / name).write_bytes(src)
        else:
            shutil.copy(src, videos / name)
    with open(root / "annotations.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["video", "caption", "split"])
        w.writerows(rows)
    return root


def synth_clips(synthetic_root: Path, n: int) -> list[Path]:
    return sorted((synthetic_root / "videos").glob("*.mp4"))[:n]


def extract_args(root: Path, out: Path, *more: str) -> list[str]:
    return ["extract", "--dataset", "byo", "--root", str(root), "--out", str(out), "--clip", "random:tiny",
            "--device", "cpu", "--precision", "fp32", "--workers", "1", "--quiet", *more]


@pytest.fixture()
def cli(monkeypatch, tiny_clip):
    """Run a `vtr` command in this process (click's CliRunner, exceptions caught and returned)."""
    monkeypatch.setattr("vtr.extract.clip_loader.load_clip", lambda *a, **k: tiny_clip)

    def run(*args: str):
        return CliRunner().invoke(main, list(args))

    return run


def error_line(exit_code: int, stderr: str, exception: BaseException | None = None) -> str:
    """A clean failure: exit status 1, no traceback, and the last thing said is one 'Error: ...' line."""
    assert exception is None or isinstance(exception, SystemExit), f"uncaught {exception!r}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert exit_code == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), stderr
    assert sum(line.startswith("Error: ") for line in lines) == 1, stderr
    return lines[-1]


def failed_cleanly(r) -> str:
    return error_line(r.exit_code, r.stderr, r.exception)


def same_cache(a, b) -> None:
    """Two caches hold the same rows (embeddings to float16 rounding: CLIP saw other batches)."""
    assert a.video_ids == b.video_ids and a.text_ids == b.text_ids
    np.testing.assert_array_equal(a.frame_mask, b.frame_mask)
    np.testing.assert_array_equal(a.video_ok, b.video_ok)
    np.testing.assert_allclose(a.frames.astype(np.float32), b.frames.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(a.text_emb.astype(np.float32), b.text_emb.astype(np.float32), atol=2e-3)


# ----------------------------------------------------------------------------- where the cache goes


def test_out_under_a_regular_file(tmp_path, synthetic_root, cli):
    (clip,) = synth_clips(synthetic_root, 1)
    root = byo(tmp_path / "ds", [("a.mp4", "a red circle moves left", "test")], {"a.mp4": clip})
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder\n")

    line = failed_cleanly(cli(*extract_args(root, blocker / "x.h5")))
    assert str(blocker) in line and "is a file, not a folder" in line
    assert blocker.read_text() == "a file, not a folder\n"


def _without_privileges() -> list[str]:
    """Root writes anywhere whatever the modes say; without its capabilities it obeys them like anyone."""
    return ["setpriv", "--bounding-set=-all", "--"] if os.geteuid() == 0 else []


def test_output_folder_that_cannot_be_written(tmp_path, synthetic_root, cli):
    a, b, c = synth_clips(synthetic_root, 3)
    rows = [("a.mp4", "a red circle moves left", "test"), ("b.mp4", "a blue square spins", "test")]
    root = byo(tmp_path / "ds", rows, {"a.mp4": a, "b.mp4": b})
    out = tmp_path / "colleague" / "c.h5"
    assert cli(*extract_args(root, out)).exit_code == 0
    # A colleague's cache: the folder and its lock file are theirs, not ours to write. A new video arrives.
    byo(root, rows + [("c.mp4", "a green star slides up", "test")], {"c.mp4": c})
    lock = Path(f"{out}.lock")
    lock.chmod(0o444)
    out.parent.chmod(0o555)
    try:
        p = subprocess.run(_without_privileges() + [sys.executable, "-m", "vtr", *extract_args(root, out)],
                           capture_output=True, text=True, timeout=600)
    finally:
        out.parent.chmod(0o755)
        lock.chmod(0o644)
    line = error_line(p.returncode, p.stderr)
    assert str(lock) in line and "permission denied" in line and str(out) in line
    assert read_cache(out).video_ids == ["a", "b"]  # what was there is untouched


# ----------------------------------------------------------------------------- a disk that fills up

# A tmpfs this small holds a few part files of two videos each (about 30 KB apiece), not the whole cache.
SMALL_DISK, BIG_DISK = "100k", "16m"
# Where no tmpfs can be mounted: a per-file limit above a part file and below the committed cache.
FILE_LIMIT = 96 * 1024


def _mount_namespace() -> list[str] | None:
    """The command prefix that runs a process in a private mount namespace where it may mount a tmpfs,
    or None where this machine allows none (an unprivileged container)."""
    cmd = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    try:
        with tempfile.TemporaryDirectory() as d:  # the mount goes when the namespace does
            probe = subprocess.run(cmd + ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                                   capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return cmd if probe.returncode == 0 else None


def _fill_the_disk_then_resume(mode: str, root: str, work: str) -> None:
    """The child process of `test_full_disk_keeps_finished_rows_and_the_rerun_resumes`: extract onto a
    disk that fills up, note what survived, free space, extract again. Results go to work/result.json."""
    from vtr.extract.clip_loader import load_clip

    encoder = load_clip("random:tiny", device="cpu", precision="fp32")
    disk = Path(work) / "disk"
    disk.mkdir()
    if mode == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(disk)], check=True)
    else:  # EFBIG instead of a signal once a file would pass the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    out = disk / "c.h5"
    args = extract_args(Path(root), out, "--flush-every", "2")
    import vtr.extract.clip_encoder as ce

    ce.load_clip = lambda *a, **k: encoder
    first = CliRunner().invoke(main, args)
    kept = read_cache(out).video_ids
    leftovers = sorted(str(p.relative_to(disk)) for p in disk.rglob("*.tmp"))
    if mode == "tmpfs":
        subprocess.run(["mount", "-o", f"remount,size={BIG_DISK}", str(disk)], check=True)
    else:
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    second = CliRunner().invoke(main, args)
    shutil.copy(out, Path(work) / "resumed.h5")
    result = {"first": [first.exit_code, first.stderr, repr(first.exception)], "kept": kept,
              "leftovers": leftovers, "parts_left": parts_dir(out).exists(),
              "second": [second.exit_code, second.output, repr(second.exception)], "out": str(out)}
    (Path(work) / "result.json").write_text(json.dumps(result))


def test_full_disk_keeps_finished_rows_and_the_rerun_resumes(tmp_path, synthetic_root, cli, monkeypatch):
    clips = synth_clips(synthetic_root, 8)
    rows = [(p.name, f"caption {i} of a moving shape", "test") for i, p in enumerate(clips)]
    root = byo(tmp_path / "ds", rows, {p.name: p for p in clips})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path)
    ns = _mount_namespace()
    mode = "tmpfs" if ns is not None else "fsize"
    p = subprocess.run((ns or []) + [sys.executable, str(HERE), "fill-the-disk", mode, str(root), str(work)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    res = json.loads((work / "result.json").read_text())

    exit_code, stderr, exception = res["first"]
    assert exception in ("None", "SystemExit(1)"), stderr
    line = error_line(exit_code, stderr)
    assert res["out"] in line
    assert ("no space left on device" if mode == "tmpfs" else "file too large") in line
    assert "rerun" in line
    assert res["kept"], "no finished part survived the full disk"
    assert res["leftovers"] == [], "a half-written temporary file is left taking space"

    exit_code, output, exception = res["second"]
    assert exit_code == 0 and exception == "None", output
    left = len(clips) - len(res["kept"])  # the rerun does only what the full disk stopped
    assert (f"decoded {left} videos" if left else "nothing to do") in output and not res["parts_left"]
    resumed = read_cache(work / "resumed.h5")
    assert set(res["kept"]) <= set(resumed.video_ids)
    clean = tmp_path / "clean.h5"
    assert cli(*extract_args(root, clean, "--flush-every", "2")).exit_code == 0
    same_cache(resumed, read_cache(clean))


# ----------------------------------------------------------------------------- annotations


def test_quoted_caption_with_a_newline_is_one_caption(tmp_path):
    ann = tmp_path / "annotations.csv"
    ann.write_bytes(b'\xef\xbb\xbfvideo,caption,split\r\n'
                    b'a.mp4,"a red circle\r\nthen moves left",test\r\n'
                    b'b.mp4,"a blue ""square"", spinning",train\r\n'
                    b'c.mp4,a green star,val')  # a BOM, CRLF, no final newline: all still fine
    out = tmp_path / "stats.json"
    r = CliRunner().invoke(main, ["info", "--dataset", "byo", "--annotations", str(ann), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["captions"] == 3
    ds = load_dataset("byo", tmp_path, annotations=ann, check_videos=False)
    assert [c.text for c in ds.captions] == ["a red circle\r\nthen moves left", 'a blue "square", spinning',
                                             "a green star"]

    # A quote that is never closed is named where it opens; rows after a multi-line caption keep their lines.
    ann.write_text('video,caption\na.mp4,"two\nlines"\nb.mp4,"never closed\nc.mp4,x\n')
    r = CliRunner().invoke(main, ["info", "--dataset", "byo", "--annotations", str(ann)])
    line = failed_cleanly(r)
    assert f"{ann}, line 4" in line and "quote" in line
    ann.write_text('video,caption\na.mp4,"two\nlines"\nb.mp4,x,extra\n')
    line = failed_cleanly(CliRunner().invoke(main, ["info", "--dataset", "byo", "--annotations", str(ann)]))
    assert f"{ann}, line 4: expected 2 fields" in line


def test_huge_caption_is_cut_with_one_warning_and_a_bounded_parse(tmp_path, synthetic_root, cli):
    a, b, c = synth_clips(synthetic_root, 3)
    huge = " ".join(["a red circle moves to the left of a blue square in the kitchen"] * 1600)  # about 100 KB
    long = " ".join(["a man in a red shirt"] * 8)  # about 50 CLIP tokens: over 32, cut like the huge one
    rows = [("a.mp4", huge, "test"), ("b.mp4", long, "test"), ("c.mp4", "a green star", "test")]
    root = byo(tmp_path / "ds", rows, {"a.mp4": a, "b.mp4": b, "c.mp4": c})
    out = tmp_path / "c.h5"
    r = cli(*extract_args(root, out))
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if "longer than 32" in line]
    assert len(warnings) == 1 and "2 captions" in warnings[0], r.stderr
    with h5py.File(out) as f:
        parses = f["texts/parse"].asstr()[()]
        captions = f["texts/caption"].asstr()[()]
    assert len(huge) > 100_000 and captions[0] == huge  # the annotation itself is kept as given
    assert len(parses[0]) < 100_000, f"the stored parse of the huge caption is {len(parses[0])} characters"
    parse = json.loads(parses[0])
    assert parse["action"] and parse["entity"]  # its beginning is still parsed
    assert 0 < len(parse["caption"]) < len(huge) and huge.startswith(parse["caption"])  # what was parsed
    assert json.loads(parses[1])["caption"] == long  # other captions: as before


# ----------------------------------------------------------------------------- failed videos


def test_extract_fails_when_every_video_failed(tmp_path, synthetic_root, cli):
    junk = {"a.mp4": os.urandom(4096), "b.mp4": b"not a video"}
    root = byo(tmp_path / "ds", [("a.mp4", "a red circle", "test"), ("b.mp4", "a blue square", "test")], junk)
    out = tmp_path / "c.h5"
    line = failed_cleanly(cli(*extract_args(root, out)))
    assert "all 2 videos failed" in line and f"vtr info {out}" in line
    data = read_cache(out)  # the failures are recorded (with their reasons), not lost
    assert data.video_ids == ["a", "b"] and not data.video_ok.any()

    line = failed_cleanly(cli(*extract_args(root, out)))  # rerun: still no usable video
    assert "2 videos" in line and "earlier run" in line and "--retry-failed" in line


def test_nothing_to_do_counts_earlier_failures(tmp_path, synthetic_root, cli):
    (clip,) = synth_clips(synthetic_root, 1)
    rows = [("a.mp4", "a red circle", "test"), ("b.mp4", "a blue square", "test")]
    root = byo(tmp_path / "ds", rows, {"a.mp4": clip, "b.mp4": b"not a video"})
    out = tmp_path / "c.h5"
    r = cli(*extract_args(root, out))
    assert r.exit_code == 0 and "1 failed" in r.stdout, r.output  # some videos failed: not a failed run
    r = cli(*extract_args(root, out))
    assert r.exit_code == 0, r.output
    assert "nothing to do" in r.stdout and "1 video failed in an earlier run" in r.stdout
    assert "--retry-failed" in r.stdout and f"vtr info {out}" in r.stdout


def test_eval_says_which_test_captions_it_left_out(tmp_path, synthetic_root, cli):
    clips = synth_clips(synthetic_root, 3)
    names = ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    rows = [(n, f"caption {k} of clip {n}", "test") for n in names for k in range(3)]
    files = dict(zip(names, clips)) | {"d.mp4": b"not a video"}
    root = byo(tmp_path / "ds", rows, files)
    out = tmp_path / "c.h5"
    assert cli(*extract_args(root, out)).exit_code == 0
    report = tmp_path / "report.json"
    r = cli("eval", "--zero-shot", "--cache", str(out), "--json", str(report))
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert (rep["n_videos"], rep["n_texts"]) == (3, 9)
    left = rep["left_out"]
    assert (left["videos"], left["captions"], left["split_videos"], left["split_captions"]) == (1, 3, 4, 12)
    assert "failed" in left["why"]
    note = [n for n in rep["notes"] if n.startswith("left out")]
    assert len(note) == 1 and "3 of the 12 test captions" in note[0] and "1 of the 4 test videos" in note[0]
    assert note[0] in r.stdout  # under the table, not only in the JSON

    blocker = tmp_path / "afile"
    blocker.write_text("")
    r = cli("eval", "--zero-shot", "--cache", str(out), "--json", str(blocker / "report.json"))
    assert f"cannot write {blocker / 'report.json'}: {blocker} is a file, not a folder" in failed_cleanly(r)


# ----------------------------------------------------------------------------- what the log says


def test_protocol_line_shows_the_frames_and_words_used(tmp_path, synthetic_root, cli):
    (clip,) = synth_clips(synthetic_root, 1)
    root = byo(tmp_path / "ds", [("a.mp4", "a red circle moves left", "test")], {"a.mp4": clip})
    r = cli(*extract_args(root, tmp_path / "c.h5", "--max-frames", "24", "--max-words", "20"))
    assert r.exit_code == 0, r.output
    assert "protocol: 24 frames, 20 words" in r.stderr, r.stderr
    r = cli(*extract_args(root, tmp_path / "d.h5"))
    assert "protocol: 12 frames, 32 words" in r.stderr, r.stderr


if __name__ == "__main__" and sys.argv[1:2] == ["fill-the-disk"]:
    _fill_the_disk_then_resume(*sys.argv[2:5])
