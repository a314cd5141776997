"""Reader behaviour on small hand-made layouts: path safety, malformed input, missing videos, LSMDC, BYO, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from shared_data import annotations_dir

from vtr.cli import main
from vtr.extract.datasets import dataset_stats, load_dataset
from vtr.extract.dataset_builder import AnnotationError, VideoIndex, check_id, safe_join, split_ext

ANN = annotations_dir()


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by readers")
    return path


def msvd_layout(root: Path, clips: dict[str, str], mapping_lines: list[str] | None = None) -> Path:
    """A small S2VT-form MSVD: ``clips`` maps clip name -> split; two captions each."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    names = list(clips)
    lines = mapping_lines or [f"{c} vid{i + 1}" for i, c in enumerate(names)]
    (ann / "youtube_mapping.txt").write_bytes("\r\n".join(lines).encode())
    for split in ("train", "val", "test"):
        rows = [f"vid{i + 1}\t{c} caption {k}" for i, c in enumerate(names) if clips[c] == split for k in range(2)]
        (ann / f"sents_{split}_lc_nopunc.txt").write_text("\n".join(rows))
    return ann


# ----------------------------------------------------------------------------- path safety

@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "..", "a/../../b", "C:\\x", "sub\\..\\x", ""])
def test_check_id_refuses_paths(bad):
    with pytest.raises(AnnotationError, match="here, line 3"):
        check_id(bad, "here, line 3")


def test_msvd_path_traversal_id_is_refused_with_file_and_line(tmp_path):
    clips = {"good_1_2": "train", "../../../etc/passwd": "test"}
    msvd_layout(tmp_path, clips)
    with pytest.raises(AnnotationError, match=r"youtube_mapping.txt, line 2: video id '../../../etc/passwd' "
                                              r"is a path"):
        load_dataset("msvd", tmp_path)


def test_msrvtt_traversal_in_the_1ka_csv_is_refused(tmp_path):
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": []}))
    (tmp_path / "MSRVTT_train.9k.csv").write_text("video_id\n")
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n"
                                                        "ret0,msr1,../video1,a cat\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_JSFUSION_test.csv, line 2: video id '../video1'"):
        load_dataset("msrvtt", tmp_path)


def test_safe_join_refuses_escapes_and_outward_symlinks(tmp_path):
    base = tmp_path / "videos"
    touch(base / "sub" / "a.mp4")
    outside = touch(tmp_path / "secret.mp4")
    (base / "link.mp4").symlink_to(outside)
    assert safe_join(base, "sub/a.mp4", "f, line 1") == base / "sub" / "a.mp4"
    for bad in ("../secret.mp4", "/etc/passwd", "sub/../../secret.mp4", "link.mp4"):
        with pytest.raises(AnnotationError, match="f, line 1"):
            safe_join(base, bad, "f, line 1")


def test_index_refuses_a_symlink_to_outside_when_an_annotation_names_it(tmp_path):
    videos = tmp_path / "YouTubeClips"
    touch(videos / "good_1_2.avi")
    (videos / "evil_1_2.avi").symlink_to(touch(tmp_path.parent / f"{tmp_path.name}-outside.avi"))
    msvd_layout(tmp_path, {"good_1_2": "train", "evil_1_2": "test"})
    with pytest.raises(AnnotationError, match=r"sents_test_lc_nopunc.txt, line 1: .*evil_1_2.avi is a symlink"):
        load_dataset("msvd", tmp_path)


def test_a_symlinked_videos_folder_is_fine(tmp_path):
    # Linking the whole videos folder in from a big disk is the user's choice, not an annotation's.
    real = tmp_path / "bigdisk"
    touch(real / "good_1_2.avi")
    root = tmp_path / "root"
    msvd_layout(root, {"good_1_2": "train"})
    (root / "YouTubeClips").symlink_to(real)
    assert [v.path for v in load_dataset("msvd", root).videos] == [root / "YouTubeClips" / "good_1_2.avi"]


# ----------------------------------------------------------------------------- video lookup, missing videos

def test_missing_videos_are_skipped_counted_and_reported(tmp_path):
    clips = {"a_1_2": "train", "b_3_4": "train", "c_5_6": "val", "d_7_8": "test"}
    msvd_layout(tmp_path, clips)
    touch(tmp_path / "YouTubeClips" / "a_1_2.avi")
    touch(tmp_path / "YouTubeClips" / "c_5_6.mp4")  # another extension is found too
    ds = load_dataset("msvd", tmp_path)
    assert [v.id for v in ds.videos] == ["a_1_2", "c_5_6"]
    assert ds.missing_videos == ["b_3_4", "d_7_8"]
    assert {c.video_id for c in ds.captions} == {"a_1_2", "c_5_6"}
    stats = dataset_stats(ds)
    assert stats["missing_videos"] == 2 and stats["splits"] == {"train": {"videos": 1, "captions": 2},
                                                                  "val": {"videos": 1, "captions": 2}}


def test_index_walks_subfolders_and_refuses_ambiguous_copies(tmp_path):
    touch(tmp_path / "TrainValVideo" / "video1.mp4")
    touch(tmp_path / "TestVideo" / "video2.mp4")
    touch(tmp_path / "TestVideo" / "video2.webm")  # same folder: the preferred extension wins
    touch(tmp_path / "compressed" / "video1.mp4")  # a second copy elsewhere: ambiguous
    index = VideoIndex(tmp_path)
    assert index.find(("video2",), "w") == tmp_path / "TestVideo" / "video2.mp4"
    with pytest.raises(AnnotationError, match="w: video 'video1' matches several files"):
        index.find(("video1",), "w")
    assert index.find(("video3",), "w") is None


def test_split_ext_keeps_lsmdc_timestamps():
    assert split_ext("x.mov") == ("x", ".mov") and split_ext("x.") == ("x", ".") and split_ext("x") == ("x", "")
    clip = "0001_American_Beauty_00.00.51.926-00.00.54.697"
    assert split_ext(clip) == (clip, "") and split_ext(clip + ".avi") == (clip, ".avi")


def test_missing_root_is_a_clear_error(tmp_path):
    msvd_layout(tmp_path, {"a_1_2": "train"})
    with pytest.raises(FileNotFoundError, match="no such videos folder"):
        load_dataset("msvd", tmp_path, videos="nope")


# ----------------------------------------------------------------------------- malformed input

def test_malformed_lines_name_file_and_line(tmp_path):
    ann = msvd_layout(tmp_path, {"a_1_2": "train", "b_1_2": "test"})
    with open(ann / "sents_test_lc_nopunc.txt", "a") as f:
        f.write("\nvid2 no tab here\n")
    with pytest.raises(AnnotationError, match=r"sents_test_lc_nopunc.txt, line 3: expected 'vidN<TAB>caption'"):
        load_dataset("msvd", tmp_path, check_videos=False)
    (ann / "sents_test_lc_nopunc.txt").write_text("vid9\ta caption\n")
    with pytest.raises(AnnotationError, match=r"line 1: 'vid9' is not in .*youtube_mapping.txt"):
        load_dataset("msvd", tmp_path, check_videos=False)


def test_broken_json_names_the_line(tmp_path):
    (tmp_path / "train.json").write_text('{"v_a": {"sentences": ["x"],\n "timestamps": [[0, 1]]\n')
    with pytest.raises(AnnotationError, match=r"train.json, line 3: not valid JSON"):
        load_dataset("activitynet", tmp_path, check_videos=False)
    (tmp_path / "train.json").write_text('{"v_a": {"sentences": []}}')
    with pytest.raises(AnnotationError, match=r"train.json, video 'v_a': expected .* non-empty 'sentences'"):
        load_dataset("activitynet", tmp_path, check_videos=False)


def test_activitynet_finds_files_with_or_without_the_v_prefix(tmp_path):
    data = {"v_abc": {"duration": 10, "timestamps": [[0, 5]], "sentences": [" A man runs."]},
            "v_xyz": {"duration": 10, "timestamps": [[6, 2]], "sentences": ["He stops. "]}}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "val_1.json").write_text(json.dumps(data))
    touch(tmp_path / "videos" / "v_abc.mkv")
    touch(tmp_path / "videos" / "xyz.webm")  # downloaded under the bare YouTube id
    ds = load_dataset("activitynet", tmp_path)
    assert [(v.id, v.path.name, v.split) for v in ds.videos] == [("v_abc", "v_abc.mkv", "test"),
                                                               ("v_xyz", "xyz.webm", "test")]
    assert [c.text for c in ds.captions] == ["A man runs.", "He stops."]
    assert any("1 segments have start > end" in n for n in ds.notes)


# ----------------------------------------------------------------------------- LSMDC

LSMDC_CLIP = "0001_American_Beauty_00.00.51.926-00.00.54.697"


def lsmdc_layout(root: Path) -> None:
    rows = {
        "LSMDC16_annos_training.csv": [f"{LSMDC_CLIP}\t00.00.51.926\t00.00.54.697\t00.00.51.800\t00.00.54.800\t"
                                       "SOMEONE looks out the window.",
                                       f"{LSMDC_CLIP}\t00.00.51.926\t00.00.54.697\t00.00.51.800\t00.00.54.800\t"
                                       "He turns away.",
                                       "0001_American_Beauty_00.01.02.000-00.01.04.000\t1\t2\t1\t2\tA street."],
        "LSMDC16_annos_val.csv": ["1010_TITANIC_00.41.32.072-00.41.40.196\t1\t2\t1\t2\tWaves crash."],
        "LSMDC16_challenge_1000_publictect.csv": ["1004_Juno_00.00.32.849-00.00.35.458\t1\t2\t1\t2\tJuno walks."],
    }
    ann = root / "annotations"
    ann.mkdir(parents=True)
    for name, lines in rows.items():
        (ann / name).write_bytes(("\r\n".join(lines)).encode())  # CRLF, no final newline
    touch(root / "avi" / "0001_American_Beauty" / f"{LSMDC_CLIP}.avi")
    touch(root / "avi" / "1010_TITANIC" / "1010_TITANIC_00.41.32.072-00.41.40.196.avi")
    touch(root / "avi" / "1004_Juno" / "1004_Juno_00.00.32.849-00.00.35.458.avi")


def test_lsmdc_tab_separated_layout(tmp_path):
    lsmdc_layout(tmp_path)
    ds = load_dataset("lsmdc", tmp_path)
    assert [(c.id, c.text, c.split) for c in ds.captions] == [
        (f"{LSMDC_CLIP}#0", "SOMEONE looks out the window.", "train"), (f"{LSMDC_CLIP}#1", "He turns away.", "train"),
        ("1010_TITANIC_00.41.32.072-00.41.40.196#0", "Waves crash.", "val"),
        ("1004_Juno_00.00.32.849-00.00.35.458#0", "Juno walks.", "test")]
    assert ds.missing_videos == ["0001_American_Beauty_00.01.02.000-00.01.04.000"]
    assert ds.videos[0].path == tmp_path / "avi" / "0001_American_Beauty" / f"{LSMDC_CLIP}.avi"
    assert (ds.max_frames, ds.max_words, ds.eval_split) == (12, 32, "test")


def test_lsmdc_row_with_wrong_field_count(tmp_path):
    lsmdc_layout(tmp_path)
    with open(tmp_path / "annotations" / "LSMDC16_annos_val.csv", "a") as f:
        f.write("\r\nclip_x\t1\t2\ta sentence without all its times\r\n")
    with pytest.raises(AnnotationError, match=r"LSMDC16_annos_val.csv, line 2: expected 6 tab-separated fields"):
        load_dataset("lsmdc", tmp_path)


# ----------------------------------------------------------------------------- bring your own

def test_byo_csv_with_and_without_split(tmp_path):
    touch(tmp_path / "videos" / "cat.mp4")
    touch(tmp_path / "videos" / "trips" / "dog.mkv")
    touch(tmp_path / "videos" / "bird.webm")
    (tmp_path / "annotations.csv").write_text(
        "caption,video,split\n"
        '"a cat, sleeping",cat.mp4,train\n'
        "a cat wakes up,cat.mp4,train\n"
        "a dog runs,trips/dog,test\n"  # no extension: found by stem in its folder
        "a bird sings,bird.avi,\n"  # odd extension, no split: the default split
        "a fish swims,fish.mp4,test\n")
    ds = load_dataset("byo", tmp_path)
    assert [(c.id, c.text, c.split) for c in ds.captions] == [
        ("cat#0", "a cat, sleeping", "train"), ("cat#1", "a cat wakes up", "train"),
        ("trips/dog#0", "a dog runs", "test"), ("bird#0", "a bird sings", "test")]
    assert [v.path.name for v in ds.videos] == ["cat.mp4", "dog.mkv", "bird.webm"]
    assert ds.missing_videos == ["fish"]
    assert load_dataset("byo", tmp_path, default_split="train").videos[2].split == "train"


def test_byo_jsonl_and_its_errors(tmp_path):
    touch(tmp_path / "clips" / "a.mp4")
    ann = tmp_path / "mine.jsonl"
    ann.write_text('{"video": "a.mp4", "captions": ["one", "two"], "split": "val"}\n')
    ds = load_dataset("byo", tmp_path, annotations=ann, videos="clips")
    assert [(c.id, c.split) for c in ds.captions] == [("a#0", "val"), ("a#1", "val")]
    ann.write_text('{"video": "a.mp4", "caption": "x"}\n{"video": "../../etc/passwd", "caption": "x"}\n')
    with pytest.raises(AnnotationError, match=r"mine.jsonl, line 2: video path '../../etc/passwd' leaves"):
        load_dataset("byo", tmp_path, annotations=ann, videos="clips")
    ann.write_text('{"video": "a.mp4", "caption": "x", "split": "holdout"}\n')
    with pytest.raises(AnnotationError, match=r"mine.jsonl, line 1: split 'holdout' is not one of"):
        load_dataset("byo", tmp_path, annotations=ann, videos="clips")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("video,caption\na.mp4,one,extra\n")
    with pytest.raises(AnnotationError, match=r"bad.csv, line 2: expected 2 fields"):
        load_dataset("byo", tmp_path, annotations=bad_csv, videos="clips")


# ----------------------------------------------------------------------------- registry and CLI

def test_options_a_reader_does_not_take_are_refused(tmp_path):
    msvd_layout(tmp_path, {"a_1_2": "train"})
    with pytest.raises(ValueError, match="--dataset msvd does not take --split-variant"):
        load_dataset("msvd", tmp_path, split_variant="9k")
    # The CLI's generic options (given to every reader) are dropped for real datasets.
    assert load_dataset("msvd", tmp_path, n_videos=5, seed=1, progress=False, check_videos=False).videos


def test_cli_info_on_annotations_writes_json(tmp_path):
    out = tmp_path / "stats.json"
    r = CliRunner().invoke(main, ["info", "--dataset", "msvd", "--annotations", str(ANN / "msvd"),
                                  "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "train: 1200 videos, 48774 captions" in r.output
    stats = json.loads(out.read_text())
    assert stats["splits"]["test"] == {"videos": 670, "captions": 27763}
    assert stats["missing_videos"] == 0 and stats["videos_checked"] is False


def test_cli_info_counts_missing_videos_under_root(tmp_path):
    msvd_layout(tmp_path, {"a_1_2": "train", "b_1_2": "test"})
    touch(tmp_path / "YouTubeClips" / "a_1_2.avi")
    out = tmp_path / "s.json"
    r = CliRunner().invoke(main, ["info", "--dataset", "msvd", "--root", str(tmp_path), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["missing_videos"] == 1 and "missing: 1 videos" in r.output


def test_cli_info_needs_one_form():
    r = CliRunner().invoke(main, ["info"])
    assert r.exit_code != 0 and "give a cache file, or --dataset" in r.output
    r = CliRunner().invoke(main, ["info", "--dataset", "msvd"])
    assert r.exit_code != 0 and "--annotations DIR, --root DIR" in r.output


def test_cli_extract_refuses_misplaced_options(tmp_path):
    msvd_layout(tmp_path, {"a_1_2": "train"})
    r = CliRunner().invoke(main, ["extract", "--dataset", "msvd", "--root", str(tmp_path), "--split-variant", "7k",
                                  "--clip", "random:tiny", "--quiet"])
    assert r.exit_code != 0 and "does not take --split-variant" in r.output
