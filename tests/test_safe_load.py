"""No file a user is handed runs code when vtr reads it: planted checkpoints are refused through the CLI.

Each payload is a pickle whose ``__reduce__`` would create a marker file when unpickled; every test checks
the exit code, the one-line error naming the file, and that the marker was not created.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vtr.cache import CacheWriter, TextRow, VideoRow
from vtr.cli import main
from vtr.core.safe_load import LoadError, dump_state, load_state, load_torch
from vtr.train.fit import FitConfig, fit_tensors
from vtr.train.runs import read_best, read_last

D, T = 16, 4


class Payload:
    """Unpickled, it runs ``touch MARKER`` (through os.system, the classic payload)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_the_payload_is_live(tmp_path):
    """The guard for every test below: unpickled freely, the payload does create its marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(r, *fragments) -> str:
    """The run failed with exactly one `Error: ...` line, holding every fragment, and no traceback."""
    assert r.exit_code not in (0, None), r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def write_small_cache(path):
    """8 training and 4 test videos, one caption each, through the writer `vtr extract` uses."""
    rng = np.random.default_rng(0)
    with CacheWriter(path, {"dataset": "toy", "clip_model": "synthetic"}, max_frames=T, dim=D) as w:
        for i in range(12):
            split = "train" if i < 8 else "test"
            w.add_video(VideoRow(f"v{i}", split, f"v{i}.mp4", 1.0, rng.normal(size=(T, D)).astype(np.float16)))
            w.add_text(TextRow(f"v{i}#0", f"v{i}", split, f"caption {i}", rng.normal(size=D).astype(np.float16),
                               phrase_emb=np.zeros((3, D), np.float16), phrase_mask=np.zeros(3, bool)))
        w.commit()
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A cache and a one-epoch run on it (written by `vtr fit`); tests copy the run before planting files."""
    root = tmp_path_factory.mktemp("safe")
    cache = write_small_cache(root / "small.h5")
    r = cli("fit", "--cache", cache, "--run", root / "run", "--epochs", "1", "--batch-size", "4", "--quiet")
    assert r.exit_code == 0, r.output
    return cache, root / "run"


@pytest.fixture()
def run_copy(trained_run, tmp_path):
    cache, run = trained_run
    shutil.copytree(run, tmp_path / "run")
    return cache, tmp_path / "run"


def plant_best(run, obj):
    """Replace the run's best checkpoint with ``obj`` saved as an earlier vtr's best.pt."""
    (run / "best.safetensors").unlink()
    torch.save(obj, run / "best.pt")
    return run / "best.pt"


def plant_last(run, obj):
    (run / "last.safetensors").unlink()
    torch.save(obj, run / "last.pt")
    return run / "last.pt"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------- runs


def test_malicious_best_pt_is_refused_by_eval(run_copy, tmp_path, monkeypatch):
    _, run = run_copy
    marker = tmp_path / "pwned"
    best = read_best(run)[1]
    path = plant_best(run, {"head": best["head"], "epoch": 1, "val": None, "extra": Payload(marker)})
    r = cli("eval", "--run", run)
    one_error_line(r, f"{path}: refused: it holds Python objects (posix.system)", "not only tensors and plain data")
    assert not marker.exists()

    # a plain `vtr eval` picks the latest run under cache/runs: the same refusal
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache" / "runs").mkdir(parents=True)
    shutil.move(run, tmp_path / "cache" / "runs" / "shared")
    r = cli("eval")
    one_error_line(r, "shared/best.pt: refused: it holds Python objects")
    assert not marker.exists()


def test_malicious_last_pt_is_refused_by_a_resuming_fit(run_copy, tmp_path):
    cache, run = run_copy
    marker = tmp_path / "pwned"
    state = read_last(run)
    path = plant_last(run, dict(state, history=[Payload(marker)]))
    r = cli("fit", "--cache", cache, "--run", run, "--epochs", "2", "--batch-size", "4", "--quiet")
    one_error_line(r, f"{path}: refused: it holds Python objects (posix.system)")
    assert not marker.exists()
    assert path.read_bytes()  # nothing of the run was touched or lost
    assert not (run / "last.safetensors").exists()


def test_truncated_checkpoints_are_one_line_naming_the_file(run_copy):
    cache, run = run_copy
    legacy = io.BytesIO()
    torch.save(read_last(run), legacy)
    last_pt = plant_last(run, {})
    last_pt.write_bytes(legacy.getvalue()[: len(legacy.getvalue()) // 2])
    fit = ("fit", "--cache", cache, "--run", run, "--epochs", "2", "--batch-size", "4", "--quiet")
    one_error_line(cli(*fit), f"{last_pt} is truncated or not a checkpoint")

    best_pt = plant_best(run, {"head": read_best(run)[1]["head"], "epoch": 1, "val": None})
    truncate(best_pt)
    one_error_line(cli("eval", "--run", run), f"{best_pt} is truncated or not a checkpoint")


def test_truncated_safetensors_are_one_line_naming_the_file(run_copy):
    cache, run = run_copy
    truncate(run / "best.safetensors")
    one_error_line(cli("eval", "--run", run), f"{run / 'best.safetensors'} is truncated or not a checkpoint")
    truncate(run / "last.safetensors")
    fit = ("fit", "--cache", cache, "--run", run, "--epochs", "2", "--batch-size", "4", "--quiet")
    one_error_line(cli(*fit), f"{run / 'last.safetensors'} is truncated or not a checkpoint")


def test_weights_of_another_head_are_one_line(run_copy):
    _, run = run_copy
    plant_best(run, {"head": {"nope": torch.zeros(2)}, "epoch": 1, "val": None})
    one_error_line(cli("eval", "--run", run), f"{run / 'best.pt'}: its weights do not fit the seqTransf head")


# ----------------------------------------------------------------------------- --clip


@pytest.fixture()
def byo_root(tmp_path):
    """One annotated video (its file is never decoded: CLIP is loaded, or refused, first)."""
    root = tmp_path / "byo"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"")
    (root / "annotations.csv").write_text("video,caption\na.mp4,a caption\n")
    return root


def extract_with(root, clip):
    return cli("extract", "--dataset", "byo", "--root", root, "--out", root / "c.h5", "--clip", clip, "--quiet")


def test_malicious_clip_checkpoint_is_refused_by_extract(byo_root, tmp_path):
    from vtr.extract.clip_encoder import RANDOM_ARCHS, build_random

    marker = tmp_path / "pwned"
    evil = tmp_path / "clip.pt"
    torch.save({"config": RANDOM_ARCHS["tiny"], "state_dict": build_random("tiny").state_dict(),
                "note": Payload(marker)}, evil)
    one_error_line(extract_with(byo_root, evil), f"{evil}: refused: it holds Python objects (posix.system)")
    assert not marker.exists() and not (byo_root / "c.h5").exists()

    raw = tmp_path / "raw.pkl"  # a bare pickle (protocol 2) rather than a torch.save file
    raw.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    one_error_line(extract_with(byo_root, raw), f"{raw}: refused: it holds Python objects (posix.system)")
    assert not marker.exists()


def test_a_payload_dressed_as_torchscript_is_refused(byo_root, tmp_path, monkeypatch):
    """A zip laid out like a TorchScript archive (constants.pkl, code/) whose data.pkl holds the payload: a
    TorchScript archive that is not one of OpenAI's files is refused unread; and even one taken for OpenAI's,
    torch.jit.load's unpickler resolves no Python globals, and vtr names what it refused."""
    from vtr.extract import clip_encoder
    from vtr.extract.weights import sha256_file

    marker = tmp_path / "pwned"
    src = tmp_path / "src.pt"
    torch.save({"w": torch.zeros(2), "note": Payload(marker)}, src)
    fake = tmp_path / "fake_jit.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(fake, "w") as zout:
        for item in zin.infolist():
            zout.writestr("archive/" + item.filename.split("/", 1)[1], zin.read(item))
        zout.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        zout.writestr("archive/code/__torch__/m.py", "")
    one_error_line(extract_with(byo_root, fake), f"{fake}: refused: a TorchScript archive runs its own code")
    assert not marker.exists()
    monkeypatch.setattr(clip_encoder, "TRUSTED_TORCHSCRIPT", {sha256_file(fake)})
    one_error_line(extract_with(byo_root, fake), f"{fake}: refused: it holds Python objects (posix.system)")
    assert not marker.exists()


def test_truncated_clip_checkpoint_is_one_line(byo_root, tmp_path):
    from vtr.extract.clip_encoder import RANDOM_ARCHS, build_random

    ckpt = tmp_path / "clip.pt"
    torch.save({"config": RANDOM_ARCHS["tiny"], "state_dict": build_random("tiny").state_dict()}, ckpt)
    truncate(ckpt)
    one_error_line(extract_with(byo_root, ckpt), f"{ckpt} is truncated or not a checkpoint")
    not_clip = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, not_clip)
    one_error_line(extract_with(byo_root, not_clip), f"{not_clip}: not a CLIP checkpoint")


# ----------------------------------------------------------------------------- the loader itself


def test_state_files_round_trip_exactly(tmp_path):
    """Tuples, integer keys, dtypes and bits come back as they were saved (exact resume depends on it)."""
    state = {"head": {"w": torch.randn(3, 2), "b": torch.arange(3, dtype=torch.int64)},
             "optimizer": {"state": {0: {"step": torch.tensor(7.0), "m": torch.randn(2, dtype=torch.bfloat16)}},
                           "param_groups": [{"betas": (0.9, 0.999), "params": [0], "lr": 1e-3, "foreach": None}]},
             "$odd": "key", "history": [{"val": None, "loss": float("nan")}]}
    path = tmp_path / "s.safetensors"
    path.write_bytes(dump_state(state))
    back = load_state(path)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(back["optimizer"]["state"]) == [0]
    assert torch.equal(back["optimizer"]["state"][0]["m"], state["optimizer"]["state"][0]["m"])
    assert back["optimizer"]["state"][0]["m"].dtype == torch.bfloat16
    assert torch.equal(back["head"]["b"], state["head"]["b"]) and back["$odd"] == "key"
    assert back["history"][0]["val"] is None and np.isnan(back["history"][0]["loss"])
    with pytest.raises(TypeError, match="not plain data"):
        dump_state({"x": Payload(path)})


def test_load_torch_refuses_and_names(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "x.pt"
    torch.save([Payload(marker)], path)
    with pytest.raises(LoadError, match=r"x\.pt: refused: it holds Python objects \(posix\.system\)"):
        load_torch(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(LoadError, match=r"empty\.pt is truncated or not a checkpoint"):
        load_torch(tmp_path / "empty.pt")
    with pytest.raises(LoadError, match="cannot read it"):
        load_torch(tmp_path / "missing.pt")
    assert not marker.exists()
