"""Data-parallel training: N gloo processes at batch B/N each train like one process at batch B.

The processes are real (spawned, gloo on CPU, talking over localhost). Dropout is 0 throughout: each rank
draws its own dropout masks, so with dropout the runs differ by design.
"""
from __future__ import annotations

import json
import os
import re
from functools import partial

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vtr.cache import CacheWriter, TextRow, VideoRow
from vtr.cli import main
from vtr.train.encode import encode_all, score_matrix
from vtr.cache.records import CacheTensors
from vtr.train.distributed import Dist, PairLoss, init_from_env, launch, local_rows, shard_sizes, shutdown
from vtr.train.fit import FitConfig, fit_tensors
from vtr.train.heads import build_head
from vtr.train.losses import dsl_loss, info_nce
from vtr.train.runs import load_run

D, T = 16, 5
# (model, loss, head options): a learned logit scale is a parameter used after the gather.
CASES = [
    ("seqTransf", "infonce", {}),
    ("seqTransf", "dsl", {"learn_scale": True}),
    ("camoe", "infonce", {}),
    ("camoe", "dsl", {"learn_scale": True}),
]
LOSSES = {"infonce": info_nce, "dsl": partial(dsl_loss, temperature=2.0)}  # a low temperature: DSL's prior matters


def make_head(model, options, seed=0):
    """A head with every parameter random (no zero-initialised layer hides a gradient), dropout 0."""
    torch.manual_seed(seed)
    head = build_head(model, D, T, layers=1, heads=2, dropout=0.0, **options)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
        if hasattr(head, "log_scale"):
            head.log_scale.fill_(np.log(20.0))
    return head


def make_batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n, T, D, generator=g)
    mask = torch.arange(T)[None] < torch.randint(1, T + 1, (n,), generator=g)[:, None]
    text = {"sentence": torch.randn(n, D, generator=g), "phrases": torch.randn(n, 3, D, generator=g),
            "phrase_mask": torch.rand(n, 3, generator=g) > 0.3}
    return frames, mask, text


def loss_and_grads(head, loss_fn, frames, mask, text, d=Dist()):
    """The loss of the global batch and the head's gradients, as this rank sees them."""
    model = PairLoss(head, loss_fn, d)
    if d.active:
        model = torch.nn.parallel.DistributedDataParallel(model)
    rows = local_rows(np.arange(len(frames)), d)
    loss = model(frames[rows], mask[rows], {k: v[rows] for k, v in text.items()}, shard_sizes(len(frames), d.world_size))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in head.named_parameters() if p.requires_grad}


def small_cache(n_train=100, n_val=20, captions=2, seed=0) -> CacheTensors:
    """Random features, two captions a video, with phrases; a val split so fit validates."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    split = np.array(["train"] * n_train + ["val"] * n_val)
    text_video = np.repeat(np.arange(n), captions)
    z = rng.normal(size=(n, D))
    frames = z[:, None] + 0.5 * rng.normal(size=(n, T, D))
    text = z[text_video] @ rng.normal(size=(D, D)) + 0.3 * rng.normal(size=(len(text_video), D))
    return CacheTensors(
        video_ids=[f"v{i}" for i in range(n)], frames=frames.astype(np.float16), frame_mask=np.ones((n, T), bool),
        video_split=split, video_ok=np.ones(n, bool), text_ids=[f"v{v}#{k}" for k, v in enumerate(text_video)],
        captions=[f"caption of v{v}" for v in text_video], text_video=text_video, text_split=split[text_video],
        text_emb=text.astype(np.float16), attrs={"clip_model": "synthetic", "max_frames": T},
        phrase_emb=rng.normal(size=(len(text_video), 3, D)).astype(np.float16),
        phrase_mask=rng.random((len(text_video), 3)) > 0.3,
    )


# Global batches of the gradient check: 7 rows split 4 + 3; 1 row leaves rank 1 with nothing of its own.
BATCH_SIZES = (7, 1)
# 100 videos in batches of 32: the last global batch (4) splits 2 + 2.
E2E = FitConfig(model="camoe", epochs=2, batch_size=32, lr=3e-3, num_threads=1,
                head_options={"layers": 1, "heads": 2, "dropout": 0.0})


def _two_process_session(out_dir, data):
    """What each of the 2 ranks does (one launch for every check, as starting processes is the slow part):
    losses and gradients of every case, then a 1-epoch fit, extended to 2 epochs from its checkpoint."""
    # The default group is started here, so that the two fits below share it (fit then starts only
    # its own gather group, and leaves the default group alone).
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    d, _ = init_from_env(torch.device("cpu"))
    results = {}
    for model, loss, options in CASES:
        for n in BATCH_SIZES:
            frames, mask, text = make_batch(n)
            results[model, loss, n] = loss_and_grads(make_head(model, options), LOSSES[loss], frames, mask, text, d)
    torch.save(results, os.path.join(out_dir, f"grads{rank}.pt"))
    shutdown(d)

    lines = []
    for epochs in (1, 2):
        cfg = FitConfig(**dict(E2E.to_dict(), epochs=epochs))
        fit_tensors(data, os.path.join(out_dir, "two"), cfg, cache_path="small.h5", progress=False, log=lines.append)
    with open(os.path.join(out_dir, f"log{rank}.json"), "w") as f:
        json.dump(lines, f)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    data = small_cache()
    launch(_two_process_session, 2, str(out), data)
    return out, data


def test_shards_cover_the_batch_in_order():
    assert shard_sizes(7, 2) == [4, 3] and shard_sizes(1, 2) == [1, 0] and shard_sizes(8, 4) == [2, 2, 2, 2]
    rows = np.arange(10, 17)
    parts = [local_rows(rows, Dist(rank=r, world_size=3)) for r in range(3)]
    assert np.concatenate(parts).tolist() == rows.tolist()
    # An empty slice gets a stand-in row (DDP needs every rank to run); the gather drops it.
    assert local_rows(np.array([5]), Dist(rank=1, world_size=2)).tolist() == [5]


def test_two_processes_give_the_one_process_loss_and_gradients(session):
    out, _ = session
    ranks = [torch.load(out / f"grads{r}.pt", weights_only=True) for r in range(2)]
    for model, loss, options in CASES:
        for n in BATCH_SIZES:
            frames, mask, text = make_batch(n)
            want_loss, want_grads = loss_and_grads(make_head(model, options), LOSSES[loss], frames, mask, text)
            for rank in ranks:
                got_loss, got_grads = rank[model, loss, n]
                assert got_loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6), (model, loss, n)
                assert set(got_grads) == set(want_grads)
                for name, g in want_grads.items():  # float summation order differs: 1e-4 of the tensor's scale
                    torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=1e-4 * float(g.abs().max()) + 1e-7,
                                               msg=lambda m: f"{model}/{loss}/B={n} {name}: {m}")
            if n > 1:  # the check above must have compared real gradients, not zeros
                assert sum(float(g.abs().sum()) for g in want_grads.values()) > 0


def test_fit_with_two_processes_matches_one_process(session, tmp_path):
    out, data = session
    fit_tensors(data, tmp_path / "one", E2E, cache_path="small.h5", progress=False, log=lambda s: None)

    two = out / "two"
    for name in ("config.json", "last.safetensors", "best.safetensors", "log.jsonl", "curves.png"):
        assert (two / name).is_file(), name
    assert not list(two.glob(".*tmp*"))
    # Rank 0 alone logged (and wrote); rank 1 said nothing. The second call resumed after epoch 1, with
    # the checkpoint read by rank 0 and sent to rank 1.
    logs = [json.loads((out / f"log{r}.json").read_text()) for r in range(2)]
    assert "2 processes" in logs[0][0] and any("resuming after epoch 1" in line for line in logs[0])
    assert [line.split()[1] for line in logs[0] if line.startswith("epoch ")] == ["1/1", "2/2"]
    assert logs[1] == []

    one_log = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    two_log = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert [e["world_size"] for e in two_log] == [2, 2] and [e["world_size"] for e in one_log] == [1, 1]
    for a, b in zip(one_log, two_log, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val"] == pytest.approx(a["val"])
    # The trained heads score the val split alike. (Their weights are compared through what they compute:
    # a parameter the loss cannot see, such as the bias of a score that goes into a softmax, gets a float-
    # noise gradient that Adam turns into full +-lr steps of either sign, so raw weights may differ there.)
    val = data.select("val")
    scores = []
    for run in (tmp_path / "one", two):
        head = load_run(run, "last")[0]
        scores.append(score_matrix(head, *encode_all(head, val, 256, "cpu")))
    # Measured: they differ by ~2e-5 (scores up to ~64); a 1-process run at the per-rank batch (16)
    # differs by ~7 and one with another seed by ~5.
    torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=1e-4 * float(scores[0].abs().max()))


def write_cache(data: CacheTensors, path):
    """``data`` as an HDF5 cache, through the writer `vtr extract` uses."""
    with CacheWriter(path, {"dataset": "toy", "clip_model": "synthetic"}, max_frames=T, dim=D) as w:
        for i, vid in enumerate(data.video_ids):
            w.add_video(VideoRow(vid, str(data.video_split[i]), f"{vid}.mp4", 1.0,
                                 data.frames[i][data.frame_mask[i]]))
        for k, tid in enumerate(data.text_ids):
            v = data.text_video[k]
            w.add_text(TextRow(tid, data.video_ids[v], str(data.text_split[k]), data.captions[k], data.text_emb[k],
                               phrase_emb=data.phrase_emb[k], phrase_mask=data.phrase_mask[k]))
        w.commit()
    return path


@pytest.mark.slow  # launches 2 training processes, twice
def test_cli_nproc(tmp_path, capfd):
    cache = write_cache(small_cache(), tmp_path / "small.h5")
    args = ["fit", "--cache", str(cache), "--run", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "32",
            "--nproc", "2", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"run folder: {tmp_path / 'run'}"
    workers = capfd.readouterr().err  # the worker processes write to the inherited stderr
    assert workers.count("epoch 1/1") == 1 and "2 processes" in workers  # rank 0 alone logs
    assert (tmp_path / "run" / "last.safetensors").is_file()

    # A run folder holding another run is refused on every rank (rank 0 reads it and tells the others),
    # and the error reaches the user as one clear line.
    r = CliRunner().invoke(main, args + ["--lr", "0.1"])
    assert r.exit_code != 0 and "holds a different run; differing keys: fit.lr" in r.output
    assert re.search(r"process [01] of 2 failed", r.output)  # whichever rank stopped first
