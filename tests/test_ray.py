"""Shards as Ray tasks: a local Ray with 2 CPUs extracts 2 shards and combines them; a failed shard is named."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from vtr.cache import CacheWriter, VideoRow, read_cache
from vtr.cli import main
from vtr.extract.datasets import load_dataset
from vtr.extract.stage import run_extract
from vtr.extract.ray_runner import import_ray, run_on_ray
from vtr.extract.job import ClipChoice, DatasetSource, ExtractJob
from vtr.extract.shards import ShardError, shard_of, shard_path, shards_dir

QUIET = dict(progress=False, log=lambda msg: None)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (its start-up takes seconds): 2 CPUs, no dashboard."""
    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def subset(synthetic_root, tmp_path_factory):
    """9 of the session's synthetic clips as a byo JSONL, a dataset a Ray worker reads by itself."""
    ann = tmp_path_factory.mktemp("ray-subset") / "annotations.jsonl"
    ann.write_text("\n".join((synthetic_root / "annotations.jsonl").read_text().splitlines()[:9]) + "\n")
    return synthetic_root, ann


@pytest.fixture(scope="module")
def ray_run(local_ray, subset, tmp_path_factory):
    """`vtr extract --ray --shards 2` on the local Ray: the cache folder it leaves."""
    root, ann = subset
    work = tmp_path_factory.mktemp("ray")
    r = CliRunner().invoke(main, ["extract", "--dataset", "byo", "--root", str(root), "--annotations", str(ann),
                                  "--clip", "random:tiny", "--precision", "fp32", "--device", "cpu", "--out", str(work / "c.h5"),
                                  "--ray", "--shards", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "2 shards on Ray: decoded 9 videos" in r.output and "combined 2 shards (9 videos, 45 captions)" in r.output
    return work


@pytest.mark.slow  # starts a local Ray cluster
def test_local_ray_run_produces_the_combined_cache(ray_run, subset, tiny_clip, tmp_path):
    combined = read_cache(ray_run / "c.h5")
    root, ann = subset
    ds = load_dataset("byo", root, annotations=ann)
    run_extract(ds, tiny_clip, tmp_path / "single.h5", **QUIET)
    single = read_cache(tmp_path / "single.h5")
    assert sorted(combined.video_ids) == sorted(single.video_ids)
    assert sorted(combined.text_ids) == sorted(single.text_ids)
    order = np.argsort(combined.video_ids), np.argsort(single.video_ids)
    # Within one float16 step: CPU CLIP rounds a little differently beside other batch neighbours.
    np.testing.assert_allclose(combined.frames[order[0]].astype(np.float32), single.frames[order[1]].astype(np.float32),
                               rtol=2 ** -10, atol=2 ** -20)
    np.testing.assert_array_equal(combined.frame_mask[order[0]], single.frame_mask[order[1]])
    # Each shard is the file `vtr extract --shard i/2` would write, and the combined cache reads it as is.
    for i in range(2):
        shard = read_cache(shard_path(ray_run / "c.h5", i, 2))
        assert shard.video_ids and all(shard_of(v, 2) == i for v in shard.video_ids)
        rows = [combined.video_ids.index(v) for v in shard.video_ids]
        np.testing.assert_array_equal(combined.frames[rows], shard.frames)
    r = CliRunner().invoke(main, ["info", str(ray_run / "c.h5")])
    assert "combined from 2 of 2 shards" in r.output


@pytest.mark.slow  # starts a local Ray cluster
def test_failed_shard_is_named(local_ray, ray_run, subset, tmp_path):
    root, ann = subset
    out = tmp_path / "c.h5"
    shutil.copytree(shards_dir(ray_run / "c.h5"), shards_dir(out))
    bad = shard_path(out, 1, 2)
    bad.unlink()
    with CacheWriter(bad, {"dataset": "byo", "clip_model": "ViT-L/14"}, max_frames=12, dim=128) as w:
        w.add_video(VideoRow("other", "test", "/v/other.mp4", 1.0, np.ones((1, 128), np.float16)))
        w.commit()  # a shard cache made with another model
    job = ExtractJob(DatasetSource("byo", str(root), annotations=str(ann)), ClipChoice("random:tiny", device="cpu"),
                     out=str(out))
    with pytest.raises(ShardError, match=r"1 of 2 shards failed:\n  shard-001-of-002.h5 \(shard 1/2\): "
                                         r"CacheError: .*other settings[\s\S]*clip_model"):
        run_on_ray(job, 2, **QUIET)
    assert not out.exists()  # nothing combined from a failed run
    assert read_cache(shard_path(out, 0, 2)).video_ids  # the finished shard is kept


def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"pip install 'vtr\[ray\]'"):
        import_ray()
