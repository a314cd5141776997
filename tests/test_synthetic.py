"""Tests for vtr.extract.synthetic: determinism, growth, frame-order actions, captions, splits, reading."""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import numpy as np
import pytest

from vtr.extract import synthetic_render
from vtr.extract.decode import sample_frames
from vtr.extract.synthetic import generate, read_synthetic
from vtr.extract.synthetic_captions import ACTIONS, CAPTION_NOUNS, COLORS, SCENES, SHAPES, ClipPlan, clip_plan
from vtr.extract.synthetic_render import _fill_pattern, _layout, render_clip

SMALL = dict(width=64, height=48, fps=10, seconds=3.0)  # quick clips for the file tests


def files_state(root):
    """name -> (mtime_ns, bytes) of every video in a generated folder."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((root / "videos").iterdir())}


def test_specs_and_frames_are_deterministic():
    for i in range(30):
        a, b = clip_plan(0, i), clip_plan(0, i)
        assert a == b
        assert a.video_id == f"synth_{i:05d}" and a.index == i
        assert (a.shape, a.color, a.action, a.scene) == (b.shape, b.color, b.action, b.scene)
    plan = clip_plan(7, 3)
    assert np.array_equal(render_clip(plan), render_clip(clip_plan(7, 3)))
    frames = render_clip(plan)
    assert frames.shape == (60, 96, 128, 3) and frames.dtype == np.uint8
    # another seed gives another dataset
    assert [clip_plan(1, i).captions for i in range(10)] != [clip_plan(0, i).captions for i in range(10)]


def test_attributes_cover_the_vocabulary():
    plans = [clip_plan(0, i) for i in range(400)]
    for attr, names in (("shape", SHAPES), ("color", COLORS), ("action", ACTIONS), ("scene", SCENES)):
        assert {getattr(s, attr) for s in plans} == set(names)


@pytest.mark.parametrize("one, other", [("moves left", "moves right"), ("moves up", "moves down"),
                                        ("grows", "shrinks")])
def test_reversed_actions_run_one_path_the_other_way(one, other):
    base = clip_plan(0, 5)
    at_a, backwards_a = _layout(dataclasses.replace(base, action=one), 128, 96)
    at_b, backwards_b = _layout(dataclasses.replace(base, action=other), 128, 96)
    assert backwards_a != backwards_b
    assert all(at_a(s) == at_b(s) for s in np.linspace(0, 1, 11))
    a = render_clip(dataclasses.replace(base, action=one))
    # the motion is large at 1 fps: consecutive 1-second frames clearly differ
    per_second = a[::10].astype(int)
    assert all(np.abs(per_second[k + 1] - per_second[k]).mean() > 0.5 for k in range(len(per_second) - 1))


@pytest.mark.parametrize("action, axis, sign", [("moves right", 1, -1), ("moves left", 1, 1),
                                                ("moves down", 0, -1), ("moves up", 0, 1)])
def test_the_trail_lies_behind_the_motion(action, axis, sign, monkeypatch):
    plan = dataclasses.replace(clip_plan(0, 5), scene="night", color="yellow", shape="star", action=action)
    frame = render_clip(plan)[30].astype(int)
    monkeypatch.setattr(synthetic_render, "TRAIL", ())
    bare = render_clip(plan)[30].astype(int)
    trail = np.abs(frame - bare).sum(-1) > 0  # what the trail adds
    body = (bare[..., 0] > 200) & (bare[..., 1] > 180) & (bare[..., 2] < 100)  # the yellow fill
    assert trail.sum() > 20
    centre = lambda m: np.nonzero(m)[axis].mean()  # noqa: E731
    assert sign * (centre(trail) - centre(body)) > 5  # behind: opposite to the direction of motion


def test_every_shape_has_its_own_fill_pattern():
    u, v = np.meshgrid(np.linspace(-0.5, 0.5, 41), np.linspace(-0.5, 0.5, 41))
    patterns = {shape: _fill_pattern(shape, u, v) for shape in SHAPES}
    for a in SHAPES:
        assert 0.1 < patterns[a].mean() < 0.9 or a == "star"  # a texture, not a flat fill (star: a dark core)
        for b in SHAPES:
            if a < b:
                assert (patterns[a] != patterns[b]).mean() > 0.1, (a, b)


def test_motion_goes_the_named_way():
    base = dataclasses.replace(clip_plan(0, 5), scene="night", color="yellow")

    def centres(action):  # centroid and area of the yellow pixels, first and last frame
        out = []
        for frame in render_clip(dataclasses.replace(base, action=action))[[0, -1]]:
            ys, xs = np.nonzero((frame[..., 0] > 200) & (frame[..., 1] > 180) & (frame[..., 2] < 100))
            out.append((xs.mean(), ys.mean(), len(xs)))
        return out

    (x0, _, _), (x1, _, _) = centres("moves left")
    assert x1 < x0 - 30
    (_, y0, _), (_, y1, _) = centres("moves up")
    assert y1 < y0 - 20  # image rows grow downwards
    (_, _, n0), (_, _, n1) = centres("grows")
    assert n1 > 4 * n0


def test_spins_is_visible_even_for_a_circle_and_still_is_still():
    base = dataclasses.replace(clip_plan(0, 2), shape="circle")
    spin = render_clip(dataclasses.replace(base, action="spins"))
    assert np.abs(spin[0].astype(int) - spin[10]).sum() > 0
    still = render_clip(dataclasses.replace(base, action="stays still"))
    assert all(np.array_equal(still[0], f) for f in still)


def test_captions_name_colour_scene_shape_and_action():
    for i in range(200):
        plan = clip_plan(0, i)
        assert len(plan.captions) == 5 and len(set(plan.captions)) == 5
        colour_words = COLORS[plan.color][1]
        scene_words = SCENES[plan.scene][1]
        action_words = [w for pair in ACTIONS[plan.action] for w in pair]
        for text in plan.captions:
            low = text.lower()
            assert any(w in low for w in colour_words), (text, plan.color)
            assert any(w in low for w in scene_words), (text, plan.scene)
            assert any(w in low for w in SHAPES[plan.shape]), (text, plan.shape)
            assert any(w in low for w in action_words), (text, plan.action)
    assert clip_plan(0, 0).captions[0] == (
        f"A {clip_plan(0, 0).color} {clip_plan(0, 0).shape} {ACTIONS[clip_plan(0, 0).action][0][0]} "
        f"{SCENES[clip_plan(0, 0).scene][0][0]}")


def test_split_proportions():
    counts = Counter(clip_plan(0, i).split for i in range(500))
    assert 0.63 <= counts["train"] / 500 <= 0.77
    assert 0.05 <= counts["val"] / 500 <= 0.15
    assert 0.14 <= counts["test"] / 500 <= 0.26


def test_generate_grows_without_rerendering(tmp_path):
    root = tmp_path / "syn"
    assert generate(root, n_videos=4, seed=3, progress=False, **SMALL) == root
    before = files_state(root)
    lines_before = (root / "annotations.jsonl").read_text().splitlines()
    assert len(before) == 4 and len(lines_before) == 4

    generate(root, n_videos=6, seed=3, progress=False, **SMALL)
    after = files_state(root)
    assert sorted(after) == [f"synth_{i:05d}.mp4" for i in range(6)]
    for name, state in before.items():  # the first four were not touched: same mtime, same bytes
        assert after[name] == state
    assert (root / "annotations.jsonl").read_text().splitlines()[:4] == lines_before
    assert json.loads((root / "manifest.json").read_text())["n_videos"] == 6

    # rendering is deterministic down to the bytes: a fresh folder holds the same files
    fresh = generate(tmp_path / "fresh", n_videos=6, seed=3, progress=False, **SMALL)
    assert {k: v[1] for k, v in files_state(fresh).items()} == {k: v[1] for k, v in after.items()}


def test_generate_refuses_other_settings(tmp_path):
    root = tmp_path / "syn"
    generate(root, n_videos=2, seed=0, progress=False, **SMALL)
    with pytest.raises(ValueError, match=re.escape(str(root)) + ".*seed"):
        generate(root, n_videos=2, seed=1, progress=False, **SMALL)
    with pytest.raises(ValueError, match=re.escape(str(root)) + ".*width"):
        generate(root, n_videos=2, seed=0, progress=False, **{**SMALL, "width": 96})


def test_generate_replaces_a_half_written_file(tmp_path):
    root = tmp_path / "syn"
    generate(root, n_videos=1, seed=0, progress=False, **SMALL)
    (root / "videos" / "synth_00001.mp4.part").write_bytes(b"killed mid-write")
    generate(root, n_videos=2, seed=0, progress=False, **SMALL)
    assert sorted(p.name for p in (root / "videos").iterdir()) == ["synth_00000.mp4", "synth_00001.mp4"]


def test_videos_decode_at_one_frame_per_second(tmp_path):
    root = generate(tmp_path / "syn", n_videos=1, seed=0, progress=False)  # default 128x96, 10 fps, 6 s
    plan = clip_plan(0, 0)
    out = sample_frames(root / "videos" / f"{plan.video_id}.mp4", resolution=96, fps=1.0)
    assert out.n_sampled == 6 and out.frames.shape == (6, 96, 96, 3)
    assert abs(out.duration - 6.0) < 0.05
    # the decoded frames are the rendered ones (short side 96: only the centre crop, minus codec noise)
    rendered = render_clip(plan)[::10, :, 16:112]
    assert np.abs(out.frames.astype(int) - rendered).mean() < 6


def test_read_synthetic_round_trip(tmp_path):
    root = generate(tmp_path / "syn", n_videos=3, seed=2, progress=False, **SMALL)
    data = read_synthetic(root)
    plans = [clip_plan(2, i) for i in range(3)]
    assert data.name == "synthetic" and data.max_frames == 12 and data.eval_split == "test"
    assert [(v.id, v.path, v.split) for v in data.videos] == [
        (s.video_id, root / "videos" / f"{s.video_id}.mp4", s.split) for s in plans]
    expected = [(f"{s.video_id}#{k}", s.video_id, t, s.split) for s in plans for k, t in enumerate(s.captions)]
    assert [(c.id, c.video_id, c.text, c.split) for c in data.captions] == expected
    assert data.missing_videos == []
    # the generator's two-word shape names go to the caption parser as nouns (vtr extract reads them)
    assert data.caption_nouns == CAPTION_NOUNS and {"plus sign", "plus shape"} <= CAPTION_NOUNS

    (root / "videos" / "synth_00001.mp4").unlink()
    data = read_synthetic(root)
    assert data.missing_videos == ["synth_00001"]
    assert all(c.video_id != "synth_00001" for c in data.captions)


def test_read_synthetic_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "annotations.jsonl"))):
        read_synthetic(tmp_path)
    root = generate(tmp_path / "syn", n_videos=2, seed=0, progress=False, **SMALL)
    path = root / "annotations.jsonl"
    good = path.read_text().splitlines()
    path.write_text(good[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ", line 2"):
        read_synthetic(root)
    path.write_text(good[0] + "\n" + json.dumps({"video": "x", "file": "videos/x.mp4"}) + "\n")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ", line 2.*captions"):
        read_synthetic(root)


def test_clipplan_fields():
    names = [f.name for f in dataclasses.fields(ClipPlan)]
    assert names[:8] == ["index", "video_id", "shape", "color", "action", "scene", "split", "captions"]
