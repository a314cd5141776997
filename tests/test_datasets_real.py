"""The readers on the real annotation files (../shared/data/annotations): exact counts, ids, quirks."""
from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter

import pytest
from shared_data import annotations_dir

from vtr.extract.datasets import dataset_stats, load_dataset
from vtr.extract.dataset_builder import AnnotationError

ANN = annotations_dir()


def read(name, sub, **options):
    """Annotations alone (no videos folder to check): every annotated video is kept."""
    return load_dataset(name, ANN / sub, annotations=ANN / sub, check_videos=False, **options)


def split_counts(ds):
    return {s: (c["videos"], c["captions"]) for s, c in dataset_stats(ds)["splits"].items()}


# ----------------------------------------------------------------------------- MSVD

@pytest.fixture(scope="module")
def msvd():
    return read("msvd", "msvd")


def test_msvd_counts_and_protocol(msvd):
    assert len(msvd.videos) == 1970 and len(msvd.captions) == 80827
    assert split_counts(msvd) == {"train": (1200, 48774), "val": (100, 4290), "test": (670, 27763)}
    assert (msvd.max_frames, msvd.max_words, msvd.eval_split) == (12, 32, "test")
    assert msvd.missing_videos == []


def test_msvd_ids_follow_the_clip_names_and_file_order(msvd):
    # vid1 is -4wsuPCjDBc_5_15 (youtube_mapping.txt, line 1); its first caption in sents_train.
    first = msvd.captions[0]
    assert (first.id, first.video_id, first.text) == ("-4wsuPCjDBc_5_15#0", "-4wsuPCjDBc_5_15",
                                                      "a squirrel is eating a peanut in it s shell")
    assert msvd.videos[0].path.name == "-4wsuPCjDBc_5_15.avi"
    per_video = Counter(c.video_id for c in msvd.captions)
    last = msvd.captions[-1]  # the sents_test file ends with vid1970's captions
    assert last.video_id == "zzit5b_-ukg_5_20" and last.id == f"zzit5b_-ukg_5_20#{per_video[last.video_id] - 1}"
    assert len({c.id for c in msvd.captions}) == 80827


def test_msvd_quirks_crlf_and_missing_final_newlines(msvd):
    # youtube_mapping.txt is CRLF without a final newline; train_list.txt and val_list.txt lack one too.
    assert (ANN / "msvd/youtube_mapping.txt").read_bytes().count(b"\r\n") == 1969
    assert not (ANN / "msvd/train_list.txt").read_bytes().endswith(b"\n")
    split = {v.id: v.split for v in msvd.videos}
    assert split["zzit5b_-ukg_5_20"] == "test"  # the mapping's last line, no newline
    assert split["bQJQGoJF7_k_145_153"] == "train"  # train_list's last line, no newline
    assert split["eyMYc-37Sk4_0_10"] == "val"
    assert not any("\r" in v.id or "\r" in c.text for v in msvd.videos for c in msvd.captions[:1])
    assert not any("\r" in c.text for c in msvd.captions)


def test_msvd_s2vt_alone_and_clip4clip_pickle_give_the_same_data(msvd, tmp_path):
    # Without the split lists, the S2VT file a caption is in gives its split: the same 1200/100/670.
    s2vt = tmp_path / "s2vt"
    s2vt.mkdir()
    for f in (ANN / "msvd").glob("sents_*") :
        shutil.copy(f, s2vt)
    shutil.copy(ANN / "msvd/youtube_mapping.txt", s2vt)
    alone = load_dataset("msvd", tmp_path, annotations=s2vt, check_videos=False)
    assert split_counts(alone) == split_counts(msvd)

    # CLIP4Clip's raw-captions.pkl (clip -> token lists) with the split lists.
    c4c = tmp_path / "msvd_data"
    c4c.mkdir()
    captions: dict[str, list[list[str]]] = {}
    for c in msvd.captions:
        captions.setdefault(c.video_id, []).append(c.text.split())
    (c4c / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    for s in ("train", "val", "test"):
        shutil.copy(ANN / f"msvd/{s}_list.txt", c4c)
    ds = load_dataset("msvd", tmp_path, check_videos=False)  # finds root/msvd_data by itself
    assert [(c.id, c.text) for c in ds.captions] == [(c.id, c.text) for c in msvd.captions]
    assert split_counts(ds) == split_counts(msvd)


def test_msvd_pickle_that_names_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for s in ("train", "val", "test"):
        (tmp_path / f"{s}_list.txt").write_text(f"clip_{s}\n")
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"clip_train": [Evil()]}))
    with pytest.raises(AnnotationError, match="raw-captions.pkl.*refusing to load builtins.print"):
        load_dataset("msvd", tmp_path, check_videos=False)


# ----------------------------------------------------------------------------- MSR-VTT

@pytest.fixture(scope="module")
def msrvtt_9k():
    return read("msrvtt", "msrvtt")


def test_msrvtt_1ka_test_and_9k_train(msrvtt_9k):
    ds = msrvtt_9k
    assert ds.name == "msrvtt-9k" and (ds.max_frames, ds.max_words, ds.eval_split) == (12, 32, "test")
    assert split_counts(ds) == {"train": (9000, 180000), "test": (1000, 1000)}
    test = [c for c in ds.captions if c.split == "test"]
    assert (test[0].video_id, test[0].text) == ("video9770", "a person is connecting something to system")
    # Every 1k-A sentence is an official one (JSFusion dropped punctuation): it keeps that sentence's sen_id.
    assert all(c.id.isdigit() for c in test)
    assert {v.id for v in ds.videos if v.split == "train"}.isdisjoint({c.video_id for c in test})


def test_msrvtt_7k_and_full(msrvtt_9k):
    seven = read("msrvtt", "msrvtt", split_variant="7k")
    assert split_counts(seven) == {"train": (7010, 140200), "test": (1000, 1000)}
    full = read("msrvtt", "msrvtt", split_variant="full")
    assert full.name == "msrvtt-full"
    assert split_counts(full) == {"train": (6513, 130260), "val": (497, 9940), "test": (2990, 59800)}
    per_video = Counter(c.video_id for c in full.captions if c.split == "test")
    assert len(per_video) == 2990 and set(per_video.values()) == {20}
    # One sentence, one id, whatever the variant.
    nine_test = {c.id: c.video_id for c in msrvtt_9k.captions if c.split == "test"}
    full_ids = {c.id: c.video_id for c in full.captions}
    assert all(full_ids[i] == v for i, v in nine_test.items())


def test_msrvtt_merged_json_reads_like_the_official_pair(msrvtt_9k, tmp_path):
    merged = {"videos": [], "sentences": []}
    for f in ("train_val_videodatainfo.json", "test_videodatainfo.json"):
        d = json.loads((ANN / "msrvtt" / f).read_text())
        merged["videos"] += d["videos"]
        merged["sentences"] += d["sentences"]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(merged))
    for f in ("MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv"):
        shutil.copy(ANN / "msrvtt" / f, tmp_path)
    ds = load_dataset("msrvtt", tmp_path, check_videos=False)
    assert [(c.id, c.video_id, c.split) for c in ds.captions] == \
        [(c.id, c.video_id, c.split) for c in msrvtt_9k.captions]


def test_msrvtt_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="9k, 7k, full"):
        read("msrvtt", "msrvtt", split_variant="1k")


# ----------------------------------------------------------------------------- ActivityNet

def test_activitynet_paragraphs():
    ds = read("activitynet", "activitynet")
    stats = dataset_stats(ds)
    assert stats["splits"] == {"train": {"videos": 10009, "captions": 10009, "sentences": 37421},
                               "test": {"videos": 4917, "captions": 4917, "sentences": 17505}}
    assert (ds.max_frames, ds.max_words, ds.eval_split) == (64, 64, "test")
    assert all(v.id.startswith("v_") for v in ds.videos)
    assert {c.id for c in ds.captions} == {f"{v.id}#0" for v in ds.videos}
    # Sentences start with spaces in the file; the paragraph is them stripped and joined by one space.
    raw = json.loads((ANN / "activitynet/train.json").read_text())
    assert sum(s.startswith(" ") for v in raw.values() for s in v["sentences"]) > 1000
    first = ds.captions[0]
    assert first.text == " ".join(" ".join(raw[first.video_id]["sentences"]).split())
    assert not any(c.text.startswith(" ") or "  " in c.text for c in ds.captions[:500])
    # Two train segments end before they start: tolerated (whole videos are used) and reported.
    assert any("2 segments have start > end" in n for n in ds.notes)
    # The same video ids as collaborative-experts' lists.
    listed = (ANN / "activitynet/val_1_list.txt").read_text().split()
    assert {v.id for v in ds.videos if v.split == "test"} == set(listed)


# ----------------------------------------------------------------------------- DiDeMo

def test_didemo_val_paragraphs_and_odd_names():
    ds = read("didemo", "didemo")
    stats = dataset_stats(ds)
    # val_data.json: 4,180 descriptions naming 1,094 files, which are 1,065 videos (29 appear as both
    # x.mov and x.mp4): merged by stem, so one video is never two retrieval targets.
    raw = json.loads((ANN / "didemo/val_data.json").read_text())
    assert len(raw) == 4180 and len({r["video"] for r in raw}) == 1094
    assert stats["splits"] == {"val": {"videos": 1065, "captions": 1065, "sentences": 4180}}
    assert any("1094 video names but 1065 distinct stems" in n for n in ds.notes)
    assert (ds.max_frames, ds.max_words) == (64, 64)
    assert ds.eval_split == "val"  # no test_data.json here
    assert all("." not in v.id for v in ds.videos)  # ids are stems: no extension, odd or not
    # The ids are the list's stems, whatever extension the list or the JSON gave.
    listed = [line for line in (ANN / "didemo/val_list.txt").read_text().splitlines() if line]
    assert {v.id for v in ds.videos} == {name.rsplit(".", 1)[0] for name in listed}
    assert read("didemo", "didemo", use_lists=True).videos == ds.videos


def test_didemo_list_entries_with_missing_or_odd_extensions_find_their_files(tmp_path):
    listed = (ANN / "didemo/train_list.txt").read_text().splitlines()
    odd = [n for n in listed if n.endswith(".")][:2] + [n for n in listed if n.endswith(".null")][:1]
    assert len(odd) == 3
    stems = [n.rsplit(".", 1)[0] for n in odd]
    data = [{"video": name, "description": f" moment {i} ", "times": [[0, 1]]} for i, name in enumerate(odd)]
    (tmp_path / "train_data.json").write_text(json.dumps(data))
    (tmp_path / "train_list.txt").write_text("\n".join(odd))
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / f"{stems[0]}.mp4").write_bytes(b"x")  # re-encoded copy
    (videos / stems[1]).write_bytes(b"x")  # no extension at all
    ds = load_dataset("didemo", tmp_path, use_lists=True)
    assert [v.id for v in ds.videos] == stems[:2] and ds.missing_videos == [stems[2]]
    assert [v.path.name for v in ds.videos] == [f"{stems[0]}.mp4", stems[1]]
    assert ds.captions[0].text == "moment 0"
