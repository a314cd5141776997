"""End to end on real ids and captions: stand-in videos named like real MSVD and MSR-VTT clips, annotation
folders that mirror the real layouts (the real files, filtered to those ids), then extract -> fit -> eval."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from shared_data import annotations_dir, make_video

from vtr.cache import read_cache
from vtr.eval.stage import evaluate_run
from vtr.extract.datasets import dataset_stats, load_dataset
from vtr.extract.stage import run_extract
from vtr.train.fit import FitConfig, fit_tensors

ANN = annotations_dir()
QUICK = FitConfig(epochs=2, batch_size=4, lr=1e-3, num_threads=2, device="cpu")


def lines_of(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def msvd_subset(root: Path) -> tuple[dict[str, str], list[str]]:
    """Real MSVD annotations for 14 clips (8 train, 2 val, 4 test); videos for all but two of them."""
    ann = root / "msvd_data"
    ann.mkdir(parents=True)
    clips: dict[str, str] = {}
    for split, n in (("train", 8), ("val", 2), ("test", 4)):
        chosen = lines_of(ANN / f"msvd/{split}_list.txt")[:n]
        clips.update({c: split for c in chosen})
        (ann / f"{split}_list.txt").write_text("\n".join(chosen))  # no final newline, as some real ones
    mapping = [line for line in (ANN / "msvd/youtube_mapping.txt").read_bytes().decode().split("\r\n")
               if line.split()[0] in clips]
    (ann / "youtube_mapping.txt").write_bytes("\r\n".join(mapping).encode())  # CRLF, as the real one
    vid_of = {line.split()[1]: line.split()[0] for line in mapping}
    for split in ("train", "val", "test"):
        name = f"sents_{split}_lc_nopunc.txt"
        keep = [line for line in lines_of(ANN / "msvd" / name) if line.split("\t")[0] in vid_of]
        (ann / name).write_text("\n".join(keep) + "\n")
    missing = [list(clips)[1], list(clips)[-1]]  # one train and one test clip without a file
    for i, clip in enumerate(clips):
        if clip not in missing:
            make_video(root / "YouTubeClips" / f"{clip}.avi", i)
    return clips, missing


def msrvtt_subset(root: Path) -> tuple[dict[str, str], list[str]]:
    """Real MSR-VTT annotations (official JSON pair, 9k list, 1k-A CSV) for 8 train + 4 test videos."""
    ann = root / "msrvtt_data"
    ann.mkdir(parents=True)
    train = lines_of(ANN / "msrvtt/MSRVTT_train.9k.csv")[1:9]
    (ann / "MSRVTT_train.9k.csv").write_text("\n".join(["video_id"] + train) + "\n")
    with open(ANN / "msrvtt/MSRVTT_JSFUSION_test.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(ann / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows[:5])
    test = [r[2] for r in rows[1:5]]
    wanted = set(train) | set(test)
    for name in ("train_val_videodatainfo.json", "test_videodatainfo.json"):
        d = json.loads((ANN / "msrvtt" / name).read_text())
        d["videos"] = [v for v in d["videos"] if v["video_id"] in wanted]
        d["sentences"] = [s for s in d["sentences"] if s["video_id"] in wanted]
        (ann / name).write_text(json.dumps(d))
    clips = {**{v: "train" for v in train}, **{v: "test" for v in test}}
    missing = [train[2], test[3]]
    for i, vid in enumerate(clips):
        if vid not in missing:
            make_video(root / "videos" / "all" / f"{vid}.mp4", i + 3)
    return clips, missing


def extract_fit_eval(ds, tiny_clip, tmp_path: Path):
    out = tmp_path / f"{ds.name}.h5"
    stats = run_extract(ds, tiny_clip, out, workers=2, progress=False, log=lambda s: None)
    data = read_cache(out)
    run = fit_tensors(data, tmp_path / "run", QUICK, cache_path=str(out), progress=False, log=lambda s: None)
    return stats, data, evaluate_run(run, data=data)


def test_msvd_real_ids_end_to_end(tiny_clip, tmp_path):
    clips, missing = msvd_subset(tmp_path / "msvd")
    ds = load_dataset("msvd", tmp_path / "msvd")  # finds msvd_data/ and YouTubeClips/ by itself
    assert ds.missing_videos == missing
    assert [v.id for v in ds.videos] == [c for c in clips if c not in missing]
    # Real captions, with real counts: every caption of the kept clips, none of the missing ones.
    real = Counter(line.split("\t")[0] for s in ("train", "val", "test")
                   for line in lines_of(ANN / f"msvd/sents_{s}_lc_nopunc.txt"))
    mapping = dict(line.split() for line in (ANN / "msvd/youtube_mapping.txt").read_text().splitlines())
    assert len(ds.captions) == sum(real[mapping[c]] for c in clips if c not in missing)
    assert ds.captions[0].text == "a squirrel is eating a peanut in it s shell"

    stats, data, report = extract_fit_eval(ds, tiny_clip, tmp_path)
    assert (stats.videos_decoded, stats.videos_failed) == (12, 0)
    assert data.max_frames == 12 and data.frame_mask.sum(1).max() <= 3  # 2 s clips at 1 frame/s
    assert sorted(data.video_ids) == sorted(v.id for v in ds.videos)
    test_videos = [v.id for v in ds.videos if v.split == "test"]
    assert report["n_videos"] == len(test_videos) == 3
    assert report["n_texts"] == sum(real[mapping[c]] for c in test_videos)
    assert {"R@1", "R@5", "R@10", "MdR", "MnR"} <= set(report["t2v"]) and set(report["t2v"]) == set(report["v2t"])


def test_msrvtt_real_ids_end_to_end(tiny_clip, tmp_path):
    clips, missing = msrvtt_subset(tmp_path / "msrvtt")
    ds = load_dataset("msrvtt", tmp_path / "msrvtt")
    stats_ = dataset_stats(ds)
    assert stats_["missing_videos"] == 2 and ds.missing_videos == missing
    assert stats_["splits"] == {"train": {"videos": 7, "captions": 140}, "test": {"videos": 3, "captions": 3}}
    assert all(v.path.parent == tmp_path / "msrvtt" / "videos" / "all" for v in ds.videos)

    stats, data, report = extract_fit_eval(ds, tiny_clip, tmp_path)
    assert (stats.videos_decoded, stats.captions_encoded) == (10, 143)
    assert data.attrs["dataset"] == "msrvtt-9k"
    assert report["n_videos"] == 3 and report["n_texts"] == 3
    assert 1 <= report["t2v"]["MdR"] <= 3 and 1 <= report["v2t"]["MdR"] <= 3


@pytest.mark.parametrize("dataset", ["msvd", "msrvtt"])
def test_vtr_info_on_the_subsets(dataset, tmp_path):
    from click.testing import CliRunner

    from vtr.cli import main

    make = msvd_subset if dataset == "msvd" else msrvtt_subset
    clips, missing = make(tmp_path / dataset)
    out = tmp_path / "stats.json"
    r = CliRunner().invoke(main, ["info", "--dataset", dataset, "--root", str(tmp_path / dataset),
                                  "--json", str(out)])
    assert r.exit_code == 0, r.output
    stats = json.loads(out.read_text())
    assert stats["missing_videos"] == 2
    assert sum(s["videos"] for s in stats["splits"].values()) == len(clips) - 2
