import json

import numpy as np
import pytest
import torch

from vtr.eval.evaluate import evaluate
from vtr.train.encode import encode_all, score_matrix
from vtr.eval.report import format_table, write_json
from vtr.cache.records import CacheTensors
from vtr.train.heads import MeanP

T, D = 4, 16
METRIC_KEYS = {"R@1", "R@5", "R@10", "MdR", "MnR"}


def make_cache(wrong: bool = False, clip_model: str = "ViT-B/32") -> CacheTensors:
    """6 train + 6 test videos (test video 11 failed to decode), 2 captions each.

    Each caption embedding is its video's mean (real) frame embedding plus small noise, so meanP
    retrieves perfectly. With ``wrong``, captions copy the mean of the next video of the same split
    instead, so the true video is never the best match.
    """
    rng = np.random.default_rng(0)
    n = 12
    frames = rng.normal(size=(n, T, D)).astype(np.float32)
    mask = np.ones((n, T), dtype=bool)
    mask[[1, 7], -1] = False  # two short videos: their last frame is padding and must be ignored
    frames[[1, 7], -1] = 50.0
    split = np.array(["train"] * 6 + ["test"] * 6)
    ok = np.ones(n, dtype=bool)
    ok[11] = False
    means = np.stack([frames[i][mask[i]].mean(0) for i in range(n)])
    text_video = np.repeat(np.arange(n), 2)
    source = text_video.copy()
    if wrong:
        source = np.where(text_video < 6, (text_video + 1) % 6, 6 + (text_video - 6 + 1) % 5)
        source[text_video == 11] = 11
    text_emb = means[source] + 0.01 * rng.normal(size=(len(text_video), D))
    return CacheTensors(
        video_ids=[f"v{i}" for i in range(n)],
        frames=frames.astype(np.float16),
        frame_mask=mask,
        video_split=split,
        video_ok=ok,
        text_ids=[f"v{i}#{j}" for i in range(n) for j in range(2)],
        captions=[f"caption {j} of video {i}" for i in range(n) for j in range(2)],
        text_video=text_video,
        text_split=split[text_video],
        text_emb=text_emb.astype(np.float16),
        attrs={"clip_model": clip_model},
    )


def test_encode_all_and_chunked_scores():
    data = make_cache().select("test")
    head = MeanP(D)
    t, gate, v = encode_all(head, data, batch_size=3)
    assert t.shape == (10, 1, D) and gate.shape == (10, 1) and v.shape == (5, 1, D)
    assert not t.requires_grad
    full = head.similarity(t, gate, v)
    assert torch.allclose(score_matrix(head, t, gate, v, chunk=3), full)


@pytest.mark.parametrize("rescore", ["none", "dsl", "qbnorm"])
def test_matching_captions_retrieve_perfectly(rescore):
    data = make_cache()
    head = MeanP(D)
    head.train()
    report = evaluate(head, data, rescore=rescore, bank=data, cache_path="cache/x.h5")
    assert not head.training
    assert report["n_texts"] == 10 and report["n_videos"] == 5  # video 11 failed: it and its captions drop
    assert report["t2v"]["R@1"] == 100.0 and report["v2t"]["R@1"] == 100.0
    assert report["t2v"]["MnR"] == 1.0 and report["v2t"]["MdR"] == 1.0
    assert report["transductive"] is (rescore == "dsl")
    assert report["rescore"] == rescore
    keys = {"t2v", "v2t", "model", "cache", "split", "n_texts", "n_videos", "transductive", "rescore",
            "clip", "tie_rule", "notes"}
    assert keys <= set(report)
    assert set(report["t2v"]) == METRIC_KEYS and set(report["v2t"]) == METRIC_KEYS
    assert report["model"] == "meanP" and report["cache"] == "cache/x.h5" and report["split"] == "test"
    assert report["clip"] == "ViT-B/32"
    assert not any("random" in n for n in report["notes"])
    json.dumps(report)  # JSON-ready as is


def test_wrong_captions_score_low():
    report = evaluate(MeanP(D), make_cache(wrong=True))
    # Every caption matches another video exactly, so its own video is never first.
    assert report["t2v"]["R@1"] == 0.0 and report["v2t"]["R@1"] == 0.0
    assert report["t2v"]["MdR"] >= 2


def test_errors():
    data = make_cache()
    with pytest.raises(ValueError, match="query bank"):
        evaluate(MeanP(D), data, rescore="qbnorm")
    with pytest.raises(ValueError, match="must not come from the evaluated split"):
        evaluate(MeanP(D), data, rescore="qbnorm", bank=data, bank_split="test")
    with pytest.raises(ValueError, match="'val' is empty"):
        evaluate(MeanP(D), data, split="val")
    with pytest.raises(ValueError, match="rescore must be one of"):
        evaluate(MeanP(D), data, rescore="softmax")


def test_random_clip_note_and_table(tmp_path):
    data = make_cache(clip_model="random:tiny")
    plain = evaluate(MeanP(D), data)
    tricky = evaluate(MeanP(D), data, rescore="dsl")
    assert any("random:tiny" in n and "not meaningful" in n for n in plain["notes"])
    table = format_table([plain, tricky])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["model", "T2V", "R@1"]
    assert lines[2].startswith("meanP ") and lines[3].startswith("meanP+dsl *")
    assert "100.0" in lines[2]
    assert len({len(line) for line in lines[:4]}) == 1  # aligned columns
    assert sum("transductive" in line for line in lines) == 1
    assert sum("random:tiny" in line for line in lines) == 1  # the note is listed once

    path = tmp_path / "runs" / "a" / "eval.json"
    write_json(path, {"report": plain, "n": np.int64(3), "x": np.float32(0.5)})
    back = json.loads(path.read_text())
    assert back["report"]["t2v"] == plain["t2v"] and back["n"] == 3 and back["x"] == 0.5
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp file left behind


def test_default_split_is_test_or_val_when_there_is_no_test():
    """`vtr eval` without --split: test; val for a cache without test captions (DiDeMo without its test file)."""
    from vtr.eval.stage import default_split, evaluate_zero_shot

    data = make_cache()
    assert default_split(data) == "test"
    assert evaluate_zero_shot("c.h5", data=data)["split"] == "test"
    no_test = make_cache()
    no_test.video_split = np.where(no_test.video_split == "test", "val", no_test.video_split)
    no_test.text_split = no_test.video_split[no_test.text_video]
    assert default_split(no_test) == "val"
    report = evaluate_zero_shot("c.h5", data=no_test)
    assert report["split"] == "val" and report["n_videos"] == 5  # video 11 failed to decode
