"""The fit loop on a small synthetic cache: it learns, writes its run folder, resumes exactly, refuses."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

import vtr.core.metrics as metrics
from vtr.cache import read_cache
from vtr.cache.records import CacheTensors
from vtr.core.safe_load import LoadError
from vtr.train.encode import encode_all, score_matrix
from vtr.train.fit import FitConfig, captions_by_video, epoch_batches, fit_tensors, train_captions
from vtr.train.heads import MeanP
from vtr.train.runs import latest_run, load_run, read_best, read_last

D, T = 32, 6


def synthetic_cache(n_train=240, n_val=60, n_test=60, captions=3, seed=0, aligned=0.0) -> CacheTensors:
    """Videos with a latent z each; captions see z only through a fixed random linear map.

    frames[t] = a_t * z + b_t + noise, with a per-position gain a_t and offset b_t (temporal structure)
    and 1..T-3 padded frames at the end; caption = normalize(A z) + noise, A a random D x D map
    (plus ``aligned`` times the identity, for a CLIP-like start where zero-shot already works). Zero-shot
    (MeanP) compares A z with z: chance. A head that learns A^-1 on the text side retrieves well.
    Two video rows failed to decode (video_ok False) and one training video has no caption.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    z = rng.normal(size=(n, D))
    gain = np.linspace(0.5, 1.5, T)[None, :, None]
    offset = rng.normal(size=(1, T, D))
    frames = gain * z[:, None] + offset + 0.8 * rng.normal(size=(n, T, D))
    lengths = rng.integers(3, T + 1, size=n)
    mask = np.arange(T)[None] < lengths[:, None]
    frames[~mask] = 0.0
    ok = np.ones(n, bool)
    ok[[3, n_train + 1]] = False
    frames[~ok] = 0.0
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    A = aligned * np.eye(D) + rng.normal(size=(D, D)) / np.sqrt(D)
    text_video = np.repeat(np.arange(n), captions)
    text_video = text_video[text_video != 5]  # training video 5 has no caption
    text = (z @ A.T)[text_video] + 0.3 * rng.normal(size=(len(text_video), D))
    return CacheTensors(
        video_ids=[f"v{i}" for i in range(n)], frames=frames.astype(np.float16), frame_mask=mask,
        video_split=split, video_ok=ok, text_ids=[f"v{v}#{k}" for k, v in enumerate(text_video)],
        captions=[f"caption of v{v}" for v in text_video], text_video=text_video.astype(np.int64),
        text_split=split[text_video], text_emb=text.astype(np.float16),
        attrs={"clip_model": "synthetic", "max_frames": T},
    )


QUICK = dict(batch_size=32, lr=3e-3, num_threads=2)  # lr measured on this cache: 3e-3 > 1e-3 > 3e-4


def t2v(head, data, split):
    part = data.select(split)
    t, gate, v = encode_all(head, part, 256, "cpu")
    return metrics.retrieval_metrics(metrics.t2v_ranks(score_matrix(head, t, gate, v), part.text_video))


def weights(run_dir, which="last"):
    return read_last(run_dir)["head"] if which == "last" else read_best(run_dir)[1]["head"]


@pytest.fixture(scope="module")
def data():
    return synthetic_cache()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "seq"
    lines = []
    fit_tensors(data, run, FitConfig(epochs=12, **QUICK), cache_path="synthetic.h5", progress=False,
                log=lines.append)
    return run, lines


def test_trained_head_beats_zero_shot_and_chance(data, trained):
    run, _ = trained
    head, cfg, info = load_run(run)
    for split in ("val", "test"):
        zero_shot, fitted = t2v(MeanP(D), data, split)["R@1"], t2v(head, data, split)["R@1"]
        chance = 100 / len(data.select(split).video_ids)
        # Measured: meanP ~1% (chance ~1.7%), seqTransf ~70% after 12 epochs.
        assert zero_shot < 4 * chance
        assert fitted > 45 and fitted > zero_shot + 40, (split, fitted, zero_shot)
    assert cfg.model == "seqTransf" and cfg.loss == "dsl"


def test_run_folder_contents(trained):
    run, lines = trained
    for name in ("config.json", "last.safetensors", "best.safetensors", "log.jsonl", "curves.png"):
        assert (run / name).is_file(), name
    record = json.loads((run / "config.json").read_text())
    assert record["fit"]["epochs"] == 12 and record["cache"]["path"] == "synthetic.h5"
    assert record["cache"]["fingerprint"] and record["dim"] == D and record["max_frames"] == T
    assert "vtr_version" in record
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, 13))
    assert {"epoch", "train_loss", "val", "seconds", "train_seconds", "val_seconds", "lr", "world_size"} <= set(log[0])
    # each of the three is rounded to 1 ms on its own, so the parts may exceed the whole by up to 1.5 ms
    assert log[0]["train_seconds"] + log[0]["val_seconds"] <= log[0]["seconds"] + 2e-3 and log[0]["world_size"] == 1
    assert set(log[0]["val"]) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    png = (run / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert sum(line.startswith("epoch ") for line in lines) == 12
    assert not list(run.glob(".*tmp*"))  # no temp files left behind
    # Readable as the user's umask says, like any file they write (a teammate can load the run).
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "last.safetensors", "best.safetensors", "log.jsonl", "curves.png"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name


def test_best_checkpoint_is_best_val_epoch_and_reloads_to_its_scores(data, trained):
    run, _ = trained
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    score = [e["val"]["R@1"] + e["val"]["R@5"] + e["val"]["R@10"] for e in log]
    head, _, info = load_run(run, "best")
    assert info["epoch"] == log[int(np.argmax(score))]["epoch"]  # first epoch reaching the max
    # The reloaded head reproduces the val metrics recorded at training time.
    assert t2v(head, data, "val") == pytest.approx(info["val"])
    last, _, last_info = load_run(run, "last")
    assert last_info["epoch"] == 12
    assert t2v(last, data, "val") == pytest.approx(log[-1]["val"])


def test_only_head_parameters_are_saved_and_optimised(trained):
    run, _ = trained
    head, _, _ = load_run(run)
    ckpt = read_last(run)
    assert set(ckpt["head"]) == set(head.state_dict())
    saved = [p for g in ckpt["optimizer"]["param_groups"] for p in g["params"]]
    assert len(saved) == len(list(head.parameters()))
    n_state = sum(s["exp_avg"].numel() for s in ckpt["optimizer"]["state"].values())
    assert n_state == sum(p.numel() for p in head.parameters())


def test_complete_run_does_nothing(data, trained):
    run, _ = trained
    before = (run / "last.safetensors").stat().st_mtime_ns
    lines = []
    fit_tensors(data, run, FitConfig(epochs=12, **QUICK), cache_path="synthetic.h5", progress=False,
                log=lines.append)
    assert "already complete" in lines[-1]
    assert (run / "last.safetensors").stat().st_mtime_ns == before


def test_resume_extends_exactly(data, tmp_path):
    cfg = dict(QUICK, head_options={"layers": 1, "dropout": 0.1})
    fit_tensors(data, tmp_path / "a", FitConfig(epochs=2, **cfg), progress=False, log=lambda s: None)
    fit_tensors(data, tmp_path / "a", FitConfig(epochs=4, **cfg), progress=False, log=lambda s: None)
    fit_tensors(data, tmp_path / "b", FitConfig(epochs=4, **cfg), progress=False, log=lambda s: None)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in b)
    la = [json.loads(x)["train_loss"] for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["train_loss"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 4
    assert json.loads((tmp_path / "a" / "config.json").read_text())["fit"]["epochs"] == 4


def test_resume_after_kill_is_exact_with_cosine(data, tmp_path):
    cfg = FitConfig(epochs=4, schedule="cosine", head_options={"layers": 1}, **QUICK)

    def killed_after_epoch_2(line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_tensors(data, tmp_path / "a", cfg, progress=False, log=killed_after_epoch_2)
    assert read_last(tmp_path / "a")["epoch"] == 2
    fit_tensors(data, tmp_path / "a", cfg, progress=False, log=lambda s: None)
    fit_tensors(data, tmp_path / "b", cfg, progress=False, log=lambda s: None)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in b)
    # A cosine schedule is tied to its length, so extending it is refused.
    with pytest.raises(ValueError, match="cosine"):
        fit_tensors(data, tmp_path / "a", FitConfig(**dict(cfg.to_dict(), epochs=6)), progress=False,
                    log=lambda s: None)


def test_different_config_or_cache_is_refused(data, tmp_path):
    fit_tensors(data, tmp_path, FitConfig(epochs=1, head_options={"layers": 1}, **QUICK), progress=False,
                log=lambda s: None)
    other = FitConfig(epochs=1, head_options={"layers": 1}, **dict(QUICK, lr=1e-4), loss="infonce")
    with pytest.raises(ValueError, match=r"differing keys: fit\.loss, fit\.lr"):
        fit_tensors(data, tmp_path, other, progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="fit.head_options"):
        fit_tensors(data, tmp_path, FitConfig(epochs=1, **QUICK), progress=False, log=lambda s: None)
    grown = synthetic_cache(n_train=250)
    with pytest.raises(ValueError, match="cache.fingerprint"):
        fit_tensors(grown, tmp_path, FitConfig(epochs=1, head_options={"layers": 1}, **QUICK), progress=False,
                    log=lambda s: None)


def test_a_run_resumes_on_its_cache_moved_elsewhere(data, tmp_path):
    """The run keeps the cache's path, but a cache moved (or reached by another path) is the same cache:
    only its fingerprint and the run's settings decide."""
    cfg = dict(QUICK, head_options={"layers": 1})
    moved = tmp_path / "moved"
    moved.mkdir()
    cache = write_cache(data, tmp_path / "toy.h5")
    fit_tensors(read_cache(cache), tmp_path / "run", FitConfig(epochs=1, **cfg), cache_path=str(cache),
                progress=False, log=lambda s: None)
    cache = cache.rename(moved / cache.name)
    fit_tensors(read_cache(cache), tmp_path / "run", FitConfig(epochs=2, **cfg), cache_path=str(cache),
                progress=False, log=lambda s: None)
    assert read_last(tmp_path / "run")["epoch"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cache"]["path"] == str(cache)


def test_meanp_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="zero-shot needs no fitting"):
        fit_tensors(data, tmp_path, FitConfig(model="meanP", epochs=1), progress=False, log=lambda s: None)
    assert not (tmp_path / "config.json").exists()


def test_without_val_split_best_is_last(data, tmp_path):
    no_val = synthetic_cache(n_val=0)
    fit_tensors(no_val, tmp_path, FitConfig(epochs=2, head_options={"layers": 1}, **QUICK), progress=False,
                log=lambda s: None)
    best, last = weights(tmp_path, "best"), weights(tmp_path)
    assert all(torch.equal(best[k], last[k]) for k in last)
    info = load_run(tmp_path)[2]
    assert info["epoch"] == 2 and info["val"] is None and info["cache_path"] == ""


def test_epoch_batches_hold_each_usable_video_once(data):
    train = data.select("train")
    caps = captions_by_video(train)
    usable = np.array([v for v in range(len(caps)) if len(caps[v])])
    assert len(train.video_ids) == 239 and len(usable) == 238  # v3 failed, v5 has no caption
    batches = epoch_batches(caps, usable, 32, seed=0, epoch=1)
    videos = np.concatenate([v for v, _ in batches])
    assert sorted(videos) == sorted(usable)
    for v, t in batches:
        assert len(set(v)) == len(v)  # no video twice in a batch: no false negatives
        assert (train.text_video[t] == v).all()
    again = epoch_batches(caps, usable, 32, seed=0, epoch=1)
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(batches, again))
    other = epoch_batches(caps, usable, 32, seed=0, epoch=2)
    assert not (np.concatenate([v for v, _ in other]) == videos).all()

    # fit draws the same pairs in the full cache's row numbers, without copying the train split.
    full_caps, full_usable = train_captions(data)
    video_row = np.flatnonzero((data.video_split == "train") & data.video_ok)
    text_row = np.flatnonzero(np.isin(np.array(data.text_ids), train.text_ids))
    assert (full_usable == video_row[usable]).all()
    for (v, t), (fv, ft) in zip(batches, epoch_batches(full_caps, full_usable, 32, seed=0, epoch=1), strict=True):
        assert (video_row[v] == fv).all() and (text_row[t] == ft).all()


def test_load_and_latest_run_errors(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(LoadError, match="config.json is not a vtr run config"):
        load_run(tmp_path)
    run, _ = trained
    (tmp_path / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no best.safetensors"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished run"):
        latest_run(tmp_path / "nothing")
    assert latest_run(run.parent) == run


# ----------------------------------------------------------------------------- the run folder's files


def test_run_folder_is_plain_data(trained):
    """best.safetensors is the head's state dict as any safetensors reader sees it; last.safetensors holds
    the optimizer state as tensors and the rest in a JSON header: no pickle anywhere in the folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    run, _ = trained
    head, _, info = load_run(run)
    best = load_file(run / "best.safetensors")
    assert set(best) == set(head.state_dict())
    assert all(torch.equal(best[k], v) for k, v in head.state_dict().items())
    with safe_open(str(run / "last.safetensors"), "pt") as f:
        header = json.loads(f.metadata()["vtr_state"])
        assert any(k.startswith("optimizer/state/") for k in f.keys())
    assert header["state"]["epoch"] == 12 and len(header["state"]["history"]) == 12
    assert not list(run.glob("*.pt"))


def _to_legacy(run):
    """Rewrite a run folder as vtr wrote it before safetensors: best.pt and last.pt (torch.save)."""
    best = read_best(run)[1]
    torch.save({"head": best["head"], "epoch": best["epoch"], "val": best["val"]}, run / "best.pt")
    torch.save(read_last(run), run / "last.pt")
    (run / "best.safetensors").unlink()
    (run / "last.safetensors").unlink()


def test_runs_of_earlier_versions_load_and_resume_exactly(data, tmp_path):
    """best.pt / last.pt of an earlier vtr are read through torch.load(weights_only=True): eval loads them,
    and a resume continues exactly, replacing them with the safetensors files."""
    cfg = dict(QUICK, head_options={"layers": 1, "dropout": 0.1})
    fit_tensors(data, tmp_path / "a", FitConfig(epochs=2, **cfg), progress=False, log=lambda s: None)
    new_best = weights(tmp_path / "a", "best")
    _to_legacy(tmp_path / "a")
    head, _, info = load_run(tmp_path / "a")
    assert info["checkpoint"].endswith("best.pt") and info["epoch"] in (1, 2)
    assert all(torch.equal(head.state_dict()[k], new_best[k]) for k in new_best)
    assert latest_run(tmp_path) == tmp_path / "a"

    fit_tensors(data, tmp_path / "a", FitConfig(epochs=4, **cfg), progress=False, log=lambda s: None)
    fit_tensors(data, tmp_path / "b", FitConfig(epochs=4, **cfg), progress=False, log=lambda s: None)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not (tmp_path / "a" / "last.pt").exists() and (tmp_path / "a" / "last.safetensors").is_file()


def test_a_killed_runs_temporaries_are_removed_by_the_next_fit(data, tmp_path):
    """A run killed between writing a temporary and renaming it leaves .last.safetensors.<pid>.<rand>.tmp
    (or, from earlier versions, .last.pt.<rand>.tmp): the next fit of the folder removes them, and says so."""
    cfg = FitConfig(epochs=1, head_options={"layers": 1}, **QUICK)
    fit_tensors(data, tmp_path, cfg, progress=False, log=lambda s: None)
    left = [tmp_path / ".last.safetensors.4242.k2j3h4.tmp", tmp_path / ".last.pt.abcd1234.tmp"]
    for p in left:
        p.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("mine")  # not a temporary of vtr's: kept
    lines = []
    fit_tensors(data, tmp_path, FitConfig(**dict(cfg.to_dict(), epochs=2)), progress=False, log=lines.append)
    assert not any(p.exists() for p in left) and (tmp_path / "notes.tmp").exists()
    assert any("removed 2 temporary file(s)" in line and ".last.pt.abcd1234.tmp" in line for line in lines)
    assert read_last(tmp_path)["epoch"] == 2


def test_a_run_folder_in_use_is_refused(data, tmp_path):
    """Two fits writing one run folder would interleave their checkpoints: the second is refused."""
    from filelock import FileLock

    cfg = FitConfig(epochs=1, head_options={"layers": 1}, **QUICK)
    tmp_path.mkdir(exist_ok=True)
    with FileLock(str(tmp_path / ".fit.lock")):
        with pytest.raises(RuntimeError, match="being written by another `vtr fit`"):
            fit_tensors(data, tmp_path, cfg, progress=False, log=lambda s: None)
    assert not (tmp_path / "last.safetensors").exists()
    fit_tensors(data, tmp_path, cfg, progress=False, log=lambda s: None)  # released: it runs
    assert read_last(tmp_path)["epoch"] == 1


def write_cache(data: CacheTensors, path):
    """``data`` (without phrases) as an HDF5 cache, through the writer `vtr extract` uses."""
    from vtr.cache import CacheWriter, TextRow, VideoRow

    with CacheWriter(path, {"dataset": "toy", "clip_model": "synthetic"}, max_frames=T, dim=D) as w:
        for i, vid in enumerate(data.video_ids):
            w.add_video(VideoRow(vid, str(data.video_split[i]), f"{vid}.mp4", 1.0, data.frames[i][data.frame_mask[i]]))
        for k, tid in enumerate(data.text_ids):
            w.add_text(TextRow(tid, data.video_ids[data.text_video[k]], str(data.text_split[k]), data.captions[k],
                               data.text_emb[k]))
        w.commit()
    return path


def test_cli_fit_options_reach_the_run_config(data, tmp_path):
    from click.testing import CliRunner
    from vtr.cli import main

    cache = write_cache(data, tmp_path / "toy.h5")
    args = ["fit", "--cache", str(cache), "--run", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "64",
            "--lr", "0.002", "--weight-decay", "0.05", "--warmup-epochs", "0.5", "--schedule", "cosine",
            "--dsl-temperature", "500", "--seed", "3", "--device", "cpu", "--threads", "1",
            "--head-option", "layers=1", "--head-option", "dropout=0", "--head-option", "learn_scale=true", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    want = FitConfig(epochs=1, batch_size=64, lr=0.002, weight_decay=0.05, warmup_epochs=0.5, schedule="cosine",
                     dsl_temperature=500.0, seed=3, device="cpu", num_threads=1,
                     head_options={"layers": 1, "dropout": 0, "learn_scale": True})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["fit"] == want.to_dict()
    assert "log_scale" in load_run(tmp_path / "run")[0].state_dict()  # learn_scale reached the head

    r = CliRunner().invoke(main, args[:3] + ["--run", str(tmp_path / "bad"), "--head-option", "layers"])
    assert r.exit_code == 2 and "'layers' is not KEY=VALUE" in r.output
    r = CliRunner().invoke(main, args[:3] + ["--run", str(tmp_path / "bad"), "--head-option", "wings=2", "--quiet"])
    assert r.exit_code == 1 and "bad options for head 'seqTransf'" in r.output


def test_cli_fit_help_states_fitconfigs_defaults():
    from click.testing import CliRunner
    from vtr.cli import main

    text = " ".join(CliRunner().invoke(main, ["fit", "--help"]).output.split())
    for default in (f"(default {FitConfig.weight_decay})", f"default {FitConfig.warmup_epochs:g})",
                    f"(default {FitConfig.schedule})"):
        assert default in text
