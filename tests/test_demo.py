"""The demo end to end: its rows, labels and saved reports on a small demo (quick suite); at its default
size, the trained heads beat zero-shot and CAMoE beats seqTransf (slow: CI runs them).

One demo run per size serves every test that needs it: 30 clips and 2 epochs for the report's shape, the
default 300 clips and 30 epochs (about 50 test videos) for the claims about the heads.
"""
from __future__ import annotations

import json

import pytest

from vtr.demo import run_demo


def run(tmp_path_factory, **size):
    out = tmp_path_factory.mktemp("demo")
    reports, text = run_demo(out / "work", out=out, device="cpu", progress=False, log=lambda m: None, **size)
    return {r["name"]: r for r in reports}, text, out


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The same code path at a tenth of the clips: the rows and files do not depend on the size."""
    return run(tmp_path_factory, n_videos=30, epochs=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo as `vtr demo` runs it (its default size), which the heads' margins were measured on."""
    return run(tmp_path_factory)


def test_rows_and_labels(small_demo):
    reports, text, out = small_demo
    assert list(reports) == ["zero-shot", "seqTransf", "camoe", "camoe+dsl"]
    assert [r["transductive"] for r in reports.values()] == [False, False, False, True]
    assert "chance" in text and "random" in text
    saved = json.loads((out / "demo.json").read_text())
    assert [r["name"] for r in saved] == list(reports)
    assert saved[2]["t2v"] == reports["camoe"]["t2v"]


@pytest.mark.slow
@pytest.mark.parametrize("head", ["seqTransf", "camoe"])
def test_trained_heads_beat_zero_shot(demo, head):
    zero, trained = demo[0]["zero-shot"], demo[0][head]
    for d in ("t2v", "v2t"):
        assert trained[d]["R@10"] >= zero[d]["R@10"] + 30, (d, trained[d], zero[d])
        assert trained[d]["MnR"] < zero[d]["MnR"] / 2


@pytest.mark.slow
def test_camoe_beats_seqtransf_on_the_synthetic_test_split(demo):
    """The paper's claim, on data where each stream is visible in the frames (see vtr.extract.synthetic).

    Measured before writing this test, seeds 0 and 1 (T2V R@1 / R@10 / MnR): seqTransf 17.6 / 84.8 / 6.7
    and 15.3 / 74.1 / 8.2; CAMoE 22.4 / 97.6 / 4.1 and 20.4 / 96.5 / 4.3. The margins asked here are
    about half of the smaller gap. V2T R@1 tied on seed 1, so V2T is held to R@10 and mean rank.
    """
    seq, camoe = demo[0]["seqTransf"], demo[0]["camoe"]
    assert camoe["t2v"]["R@1"] >= seq["t2v"]["R@1"] + 2, (camoe["t2v"], seq["t2v"])
    assert camoe["t2v"]["R@10"] >= seq["t2v"]["R@10"] + 5, (camoe["t2v"], seq["t2v"])
    assert camoe["t2v"]["MnR"] <= seq["t2v"]["MnR"] - 1, (camoe["t2v"], seq["t2v"])
    assert camoe["v2t"]["R@10"] >= seq["v2t"]["R@10"] + 5, (camoe["v2t"], seq["v2t"])
    assert camoe["v2t"]["MnR"] < seq["v2t"]["MnR"], (camoe["v2t"], seq["v2t"])
