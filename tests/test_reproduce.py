"""scripts/reproduce.sh: its layout check stops before any work and names what is missing (quick); the whole
protocol on stand-in MSR-VTT videos named by real ids, with their real captions and the random CLIP (slow)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from shared_data import make_video
from test_datasets_e2e import msrvtt_subset

from vtr.eval import references

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce.sh"
CHECKS = REPO / "scripts" / "reproduce_checks.py"


def reproduce(tmp_path, *args, timeout=120, **env):
    full = dict(os.environ, VTR_WORK=str(tmp_path / "work"), VTR_QUIET="1", **env)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], check=False, cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=timeout)


def nothing_done(tmp_path, r):
    assert r.returncode == 2, r.stderr
    assert "nothing was done" in r.stderr and "2/5" not in r.stderr
    assert not list((tmp_path / "work").glob("*.h5"))


def test_usage():
    r = subprocess.run(["bash", str(SCRIPT)], check=False, capture_output=True, text=True)
    assert r.returncode == 64 and "usage:" in r.stderr


def test_layout_check_names_missing_annotations_and_weights(tmp_path):
    (tmp_path / "msrvtt").mkdir()
    r = reproduce(tmp_path, "msrvtt", tmp_path / "msrvtt", VTR_CLIP="ViT-B/32", VTR_OFFLINE="1",
                  VTR_CLIP_CACHE=str(tmp_path / "no-weights"))
    nothing_done(tmp_path, r)
    lines = [line for line in r.stderr.splitlines() if line.startswith("reproduce: missing")]
    assert len(lines) == 2
    assert lines[0].startswith("reproduce: missing annotations:") and "msrvtt" in lines[0]
    assert lines[1].startswith(f"reproduce: missing CLIP weights: {tmp_path / 'no-weights' / 'ViT-B-32.pt'} is "
                               "missing and downloads are off")


def test_layout_check_names_missing_root(tmp_path):
    r = reproduce(tmp_path, "msvd", tmp_path / "nowhere", VTR_CLIP="random:tiny")
    nothing_done(tmp_path, r)
    assert f"reproduce: missing root: {tmp_path / 'nowhere'} is not a folder" in r.stderr


def test_layout_check_names_missing_videos(tmp_path):
    _, missing = msrvtt_subset(tmp_path / "msrvtt")
    r = reproduce(tmp_path, "msrvtt", tmp_path / "msrvtt", VTR_CLIP="random:tiny")
    nothing_done(tmp_path, r)
    line = next(line for line in r.stderr.splitlines() if line.startswith("reproduce: missing videos:"))
    assert f"2 annotated videos are not under {tmp_path / 'msrvtt'}" in line
    assert all(m in line for m in missing) and "VTR_ALLOW_MISSING=1" in line


def expect(dataset, clip):
    r = subprocess.run([sys.executable, str(CHECKS), "expect", "--dataset", dataset, "--clip", clip],
                       capture_output=True, text=True, check=True)
    return r.stdout


def test_the_zero_shot_figure_is_announced_for_msrvtt_with_vit_b32_only():
    figure = references.EXPECTED_ZERO_SHOT[("msrvtt-9k", "ViT-B/32")]
    assert f"zero-shot text-to-video R@1 of about {figure:.0f} before training anything" in expect("msrvtt", "ViT-B/32")
    assert "will not be compared" in expect("msrvtt", "random:tiny")
    assert expect("msvd", "ViT-B/32") == ""


@pytest.mark.slow
def test_reproduce_end_to_end_on_stand_in_msrvtt(tmp_path):
    root = tmp_path / "msrvtt"
    _, missing = msrvtt_subset(root)
    for i, vid in enumerate(missing):  # the whole layout: every annotated video present
        make_video(root / "videos" / "all" / f"{vid}.mp4", 20 + i)
    r = reproduce(tmp_path, "msrvtt", root, timeout=1800, VTR_CLIP="random:tiny", VTR_EPOCHS="2",
                  VTR_BATCH_SIZE="4", VTR_DEVICE="cpu", VTR_EXTRACT_ARGS="--workers 2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--clip random:tiny is another model, so it will not be compared" in r.stdout
    assert "zero-shot text-to-video R@1 measured" in r.stdout and "random weights" in r.stdout
    work = tmp_path / "work"
    table = json.loads((work / "table" / "table.json").read_text())
    assert table["dataset"] == "msrvtt-9k" and table["n_videos"] == 4
    ours = [(row["method"], row["rescore"]) for row in table["rows"] if row["kind"] == "ours"]
    methods = ["zero-shot meanP"] + [f"{h} · {loss}" for h in ("CAMoE", "seqTransf")
                                     for loss in ("DSL loss", "InfoNCE")]
    assert ours == [(m, s) for m in methods for s in ("none", "qbnorm", "dsl")]
    published = [row["method"] for row in table["rows"] if row["kind"] == "published"]
    assert published == [row["name"] for row in references.BENCHMARKS["msrvtt-9k"]["rows"]]
    assert (work / "table" / "table.md").read_text() in r.stdout and (work / "table" / "table.csv").is_file()
    assert not table["skipped_runs"]


# ----------------------------------------------------------------------------- scripts/gpu_check.py


def gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check().main(["--device", "cpu", "--clip", "random:tiny", "--videos", "12", "--reference-videos", "2",
                             "--seconds", "2", "--batch", "16", "--bound-seconds", "0.2", "--workdir", str(tmp_path),
                             "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(line.startswith("DRY RUN on cpu (no GPU measured): ") for line in lines)
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["device"] == "cpu" and result["precision"] == "fp32"
    assert result["frames"] > 0 and result["extraction_fps"] > 0 and result["tower_bound_fps"] > 0
    # The same model and precision on the same CPU: the two caches hold the same embeddings.
    assert result["frames_cosine"]["min"] > 0.9999 and result["captions_cosine"]["min"] > 0.9999
    # A head fitted on the "device" (the CPU here) for 3 epochs, evaluated there and on the CPU: the same.
    assert len(result["fit"]["train_loss"]) == 3 and all(math.isfinite(x) for x in result["fit"]["train_loss"])
    assert result["eval_same_on_device_and_cpu"] and set(result["eval_on_cpu"]) == {"none", "dsl"}


def test_gpu_check_without_a_gpu_says_so_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the check runs instead of refusing")
    assert gpu_check().main([]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: no CUDA GPU on this machine")
    assert "nothing was measured" in err[0]
