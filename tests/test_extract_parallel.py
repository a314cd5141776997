"""Speed paths of the extract stage change nothing: parallel decode, short-context text, CPU-only machines,
and CLIP's precision (bf16 on CPUs that have it) is used, reported and not a cache setting."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import vtr.extract.clip_encoder as clip_encoder
from vtr.cache import read_cache
from vtr.core.device import resolve_device
from vtr.extract.clip_loader import load_clip
from vtr.extract.synthetic import read_synthetic
from vtr.extract.stage import decode_window, encode_captions, run_extract

QUIET = dict(progress=False, log=lambda msg: None)


def small(root, n_videos: int):
    """The first ``n_videos`` synthetic clips and their captions."""
    ds = read_synthetic(root)
    ds.videos = ds.videos[:n_videos]
    keep = {v.id for v in ds.videos}
    ds.captions = [c for c in ds.captions if c.video_id in keep]
    return ds


@pytest.fixture(scope="module")
def caches(tmp_path_factory, synthetic_root, tiny_clip):
    """The same 10 clips extracted with 1 decode worker and with 3 (batches of 16 frames span videos)."""
    ds = small(synthetic_root, 10)
    out = tmp_path_factory.mktemp("par")
    one = run_extract(ds, tiny_clip, out / "one.h5", workers=1, batch_frames=16, **QUIET)
    three = run_extract(ds, tiny_clip, out / "three.h5", workers=3, batch_frames=16, **QUIET)
    return ds, (out / "one.h5", one), (out / "three.h5", three)


def test_parallel_decode_gives_the_same_cache(caches):
    ds, (p1, s1), (p3, s3) = caches
    assert (s1.videos_decoded, s3.videos_decoded) == (10, 10) and s1.frames_encoded == s3.frames_encoded == 60
    a, b = read_cache(p1), read_cache(p3)
    assert a.video_ids == b.video_ids == [v.id for v in ds.videos]
    assert a.text_ids == b.text_ids and a.captions == b.captions
    np.testing.assert_array_equal(a.frame_mask, b.frame_mask)
    np.testing.assert_array_equal(a.frames, b.frames)  # exactly: results come in order, so batches match
    np.testing.assert_array_equal(a.text_emb, b.text_emb)
    np.testing.assert_array_equal(a.phrase_emb, b.phrase_emb)
    np.testing.assert_array_equal(a.phrase_mask, b.phrase_mask)
    # the run says where its time went
    assert 0 < s3.clip_seconds <= s3.video_seconds and s3.decode_wait_seconds >= 0 and s3.text_seconds > 0


def _plain_77(encoder, texts, max_tokens=77):
    """The plain way: every text on its own row of the full 77-token context, one batch, no sorting."""
    with torch.no_grad():
        return encoder.model.encode_text(encoder.tokenize(texts, max_tokens)).numpy()


def test_cached_text_embeddings_equal_the_77_token_ones(caches, tiny_clip):
    """Short context, length sorting and each distinct phrase once give CLIP's 77-token embeddings."""
    ds, (path, _), _ = caches
    data = read_cache(path)
    want = _plain_77(tiny_clip, data.captions, data.attrs["max_words"])
    np.testing.assert_allclose(data.text_emb.astype(np.float32), want, atol=3e-3, rtol=1e-2)  # float16 storage
    with h5py.File(path) as f:
        parses = [json.loads(p) for p in f["texts/parse"].asstr()[()]]
    for i in range(0, len(parses), 7):
        for k, stream in enumerate(("action", "entity", "scene")):
            if parses[i][stream]:
                mean = _plain_77(tiny_clip, parses[i][stream]).mean(0)
                np.testing.assert_allclose(data.phrase_emb[i, k].astype(np.float32), mean, atol=3e-3, rtol=1e-2)
            else:
                assert not data.phrase_mask[i, k]


def test_long_captions_are_cut_as_at_77_tokens(tiny_clip):
    """Captions of very different lengths in one call, some longer than max_words: still the same."""
    texts = ["a dog", "a man is slicing a tomato in the kitchen",
             " ".join(["a woman in a red dress is dancing with a man on a wooden stage"] * 4), "a cat sleeps"]
    enc = encode_captions(tiny_clip, texts, batch_size=2, max_words=20)
    np.testing.assert_allclose(enc.sentence.astype(np.float32), _plain_77(tiny_clip, texts, 20), atol=3e-3, rtol=1e-2)


def test_decode_window_covers_two_batches():
    assert decode_window(workers=2, batch_frames=256, max_frames=12) == 43
    assert decode_window(workers=8, batch_frames=16, max_frames=12) == 16


def test_cpu_only_machine_runs_everything(tmp_path, synthetic_root, monkeypatch):
    """No CUDA: device auto is the CPU, the model is float32, and nothing pins memory or touches CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_cuda(*args, **kwargs):
        raise AssertionError("a CUDA-only call on a CPU-only machine")

    monkeypatch.setattr(torch.Tensor, "pin_memory", no_cuda)
    monkeypatch.setattr(torch.cuda, "synchronize", no_cuda)
    monkeypatch.setattr(torch.cuda, "current_device", no_cuda)

    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")
    enc = load_clip("random:tiny", device="auto")
    assert enc.device.type == "cpu" and enc.dtype == torch.float32  # bf16 too keeps fp32 weights (autocast)
    int8_or_fp32 = "auto" if clip_encoder.int8_available(clip_encoder.cpu_flags()) else "fp32"  # decided on the first frames
    assert enc.precision == ("bf16" if clip_encoder.cpu_has_native_bf16() else int8_or_fp32)
    assert all(p.device.type == "cpu" for p in enc.model.parameters())

    stats = run_extract(small(synthetic_root, 3), enc, tmp_path / "cpu.h5", workers=2, **QUIET)
    assert (stats.videos_decoded, stats.frames_encoded) == (3, 18)
    data = read_cache(tmp_path / "cpu.h5")
    assert data.frames.dtype == np.float16 and np.abs(data.frames[:, :6].astype(np.float32)).sum(-1).min() > 0


def test_bf16_parallel_decode_gives_the_same_cache(tmp_path, synthetic_root):
    """bf16 is deterministic for a given batch, and results come in dataset order: 1 and 3 decode workers
    still give bit-identical caches. The run reports its precision."""
    enc = load_clip("random:tiny", device="cpu", precision="bf16")
    ds = small(synthetic_root, 6)
    one = run_extract(ds, enc, tmp_path / "one.h5", workers=1, batch_frames=16, **QUIET)
    three = run_extract(ds, enc, tmp_path / "three.h5", workers=3, batch_frames=16, **QUIET)
    assert one.precision == three.precision == "bf16"
    a, b = read_cache(tmp_path / "one.h5"), read_cache(tmp_path / "three.h5")
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.text_emb, b.text_emb)
    np.testing.assert_array_equal(a.phrase_emb, b.phrase_emb)


def test_precision_is_logged_not_a_cache_setting(tmp_path, synthetic_root, caches):
    """A cache begun in bf16 resumes in fp32 (like a GPU fp16 cache resumed on a CPU): the precision is
    said in the log and the stats, and the rows stay close to fp32's."""
    first, rest = small(synthetic_root, 2), small(synthetic_root, 4)
    bf16 = load_clip("random:tiny", device="cpu", precision="bf16")
    fp32 = load_clip("random:tiny", device="cpu", precision="fp32")
    logged = []
    s1 = run_extract(first, bf16, tmp_path / "mixed.h5", progress=False, log=logged.append)
    s2 = run_extract(rest, fp32, tmp_path / "mixed.h5", progress=False, log=logged.append)
    assert (s1.precision, s2.precision) == ("bf16", "fp32") and (s2.videos_cached, s2.videos_decoded) == (2, 2)
    assert any("in bf16" in m for m in logged) and any("in fp32" in m for m in logged)
    mixed = read_cache(tmp_path / "mixed.h5")
    assert "precision" not in mixed.attrs
    # the bf16 rows against the same videos extracted in fp32 (the module's fp32 cache)
    ref = read_cache(caches[1][0])
    rows = [ref.video_ids.index(v) for v in mixed.video_ids[:2]]
    got, want = mixed.frames[:2].astype(np.float64), ref.frames[rows].astype(np.float64)
    mask = mixed.frame_mask[:2]
    cos = (got * want).sum(-1)[mask] / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))[mask]
    assert cos.min() > 0.999 and not np.array_equal(got, want)


def test_shard_jobs_carry_the_precision(tmp_path, synthetic_root):
    """`vtr extract --ray` workers load CLIP from an ExtractJob: the precision asked for is the one they use."""
    from vtr.extract.job import ClipChoice, DatasetSource, ExtractJob

    ann = tmp_path / "annotations.jsonl"
    ann.write_text("\n".join((synthetic_root / "annotations.jsonl").read_text().splitlines()[:2]) + "\n")
    source = DatasetSource("byo", str(synthetic_root), annotations=str(ann))
    job = ExtractJob(source, ClipChoice("random:tiny", device="cpu", precision="fp32"), out=str(tmp_path / "c.h5"))
    logged = []
    stats = job.for_shard(0, 1).run(log=logged.append)
    assert stats.precision == "fp32" and stats.videos_decoded == 2 and any("in fp32" in m for m in logged)
    with pytest.raises(ValueError, match="unknown"):
        ExtractJob(source, ClipChoice("random:tiny", device="cpu", precision="fp8"),
                   out=str(tmp_path / "d.h5")).for_shard(0, 1).run()
