"""The `vtr` commands as a user runs them: extract -> fit -> eval -> info, and the demo."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from vtr.cli import main

METRICS = {"R@1", "R@5", "R@10", "MdR", "MnR"}


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch, synthetic_root):
    """A working folder with the session's synthetic clips at ./cache/synthetic (the default root)."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(synthetic_root, tmp_path / "cache" / "synthetic")
    return tmp_path


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_every_command_has_help():
    for cmd in ([], ["extract"], ["fit"], ["eval"], ["info"], ["demo"]):
        r = run(*cmd, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output
    assert "--max-frames" in run("extract", "--help").output


def test_extract_fit_eval_info(in_tmp):
    r = run("extract", "--dataset", "synthetic", "--n-videos", "24", "--clip", "random:tiny", "--quiet")
    assert r.exit_code == 0, r.output
    assert (in_tmp / "cache" / "synthetic.h5").exists()
    r = run("extract", "--dataset", "synthetic", "--n-videos", "24", "--clip", "random:tiny", "--quiet")
    assert "nothing to do" in r.output

    r = run("fit", "--cache", "cache/synthetic.h5", "--epochs", "2", "--batch-size", "8", "--quiet")
    assert r.exit_code == 0, r.output
    run_dir = in_tmp / "cache" / "runs" / "synthetic-seqTransf-dsl"
    assert (run_dir / "config.json").exists() and (run_dir / "curves.png").exists()

    r = run("eval", "--json", "report.json")  # no arguments: the latest run
    assert r.exit_code == 0, r.output
    report = json.loads((in_tmp / "report.json").read_text())
    assert set(report["t2v"]) >= METRICS and set(report["v2t"]) >= METRICS
    assert report["split"] == "test" and report["transductive"] is False
    assert report["n_videos"] > 0 and report["n_texts"] == 5 * report["n_videos"]
    assert report["model"] == "seqTransf" and report["cache"].endswith("synthetic.h5")

    r = run("eval", "--dsl", "--json", "dsl.json")
    assert json.loads((in_tmp / "dsl.json").read_text())["transductive"] is True
    assert "transductive" in r.output
    r = run("eval", "--qbnorm", "--json", "qb.json")
    qb = json.loads((in_tmp / "qb.json").read_text())
    assert qb["transductive"] is False and qb["rescore"] == "qbnorm"
    r = run("eval", "--zero-shot", "--cache", "cache/synthetic.h5", "--json", "zs.json")
    assert json.loads((in_tmp / "zs.json").read_text())["model"] == "meanP"

    r = run("info", "cache/synthetic.h5", "--json", "info.json")
    assert r.exit_code == 0 and "random weights" in r.output
    info = json.loads((in_tmp / "info.json").read_text())
    assert sum(s["videos"] for s in info["splits"].values()) == 24


def test_clear_errors(in_tmp):
    r = CliRunner().invoke(main, ["extract", "--dataset", "synthetic", "--n-videos", "4", "--quiet"])
    assert r.exit_code != 0 and "not on this machine" in r.output and "random:tiny" in r.output
    r = CliRunner().invoke(main, ["extract", "--dataset", "nope"])
    assert r.exit_code != 0 and "unknown dataset" in r.output
    r = CliRunner().invoke(main, ["eval"])
    assert r.exit_code != 0 and "cache/runs" in r.output
