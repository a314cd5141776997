"""`vtr table` on stand-in videos named by real MSR-VTT and MSVD ids with their real captions (random CLIP):
the columns, the published rows of the right benchmark only, Markdown/CSV/JSON agreeing with each other
and with `vtr eval --json`, unfinished and foreign runs left out."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from click.testing import CliRunner
from test_datasets_e2e import msrvtt_subset, msvd_subset

from vtr.cache import read_cache
from vtr.cli import main
from vtr.eval import references
from vtr.eval.table import FILES, metric_columns
from vtr.extract.datasets import load_dataset
from vtr.extract.stage import run_extract
from vtr.train.fit import FitConfig, fit_tensors

QUICK = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "num_threads": 2, "device": "cpu"}
METRICS = ("R@1", "R@5", "R@10", "MdR", "MnR")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tiny_clip):
    """msrvtt-9k and msvd caches of the stand-in clips; one finished run on each, and a run on msrvtt killed
    before its first epoch ended (config.json, no checkpoint)."""
    tmp = tmp_path_factory.mktemp("table")
    caches = {}
    for name, make in (("msrvtt", msrvtt_subset), ("msvd", msvd_subset)):
        make(tmp / name)
        ds = load_dataset(name, tmp / name)
        caches[name] = tmp / f"{ds.name}.h5"
        run_extract(ds, tiny_clip, caches[name], workers=2, progress=False, log=lambda s: None)
    runs = tmp / "runs"
    fit_tensors(read_cache(caches["msrvtt"]), runs / "msrvtt-seq-infonce",
                FitConfig(model="seqTransf", loss="infonce", **QUICK), cache_path=str(caches["msrvtt"]),
                progress=False, log=lambda s: None)
    fit_tensors(read_cache(caches["msvd"]), runs / "msvd-camoe-dsl", FitConfig(model="camoe", loss="dsl", **QUICK),
                cache_path=str(caches["msvd"]), progress=False, log=lambda s: None)
    killed = runs / "msrvtt-killed"
    killed.mkdir()
    shutil.copy(runs / "msrvtt-seq-infonce" / "config.json", killed)
    return tmp, caches, runs


def vtr(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def msrvtt_table(stand_ins):
    """`vtr table` of the msrvtt cache, run once: (its output, the JSON, the three files' paths)."""
    tmp, caches, runs = stand_ins
    return table_of(tmp, caches["msrvtt"], runs, "msrvtt")


def table_of(tmp, cache, runs, name):
    out = tmp / f"out-{name}"
    r = vtr("table", "--cache", cache, "--runs", runs, "--out", out)
    paths = {k: out / v for k, v in FILES.items()}
    return r, json.loads(paths["json"].read_text()), paths


def test_msrvtt_table_rows_columns_and_references(stand_ins, msrvtt_table):
    runs = stand_ins[2]
    r, table, paths = msrvtt_table
    assert table["dataset"] == "msrvtt-9k" and table["benchmark"] == references.benchmark("msrvtt-9k")["name"]
    published = [row for row in table["rows"] if row["kind"] == "published"]
    ours = [row for row in table["rows"] if row["kind"] == "ours"]
    assert [p["method"] for p in published] == [p["name"] for p in references.BENCHMARKS["msrvtt-9k"]["rows"]]
    assert {"CAMoE", "CAMoE + DSL", "CLIP4Clip seqTransf", "CLIP zero-shot"} <= {p["method"] for p in published}
    camoe = {p["method"]: p for p in published}
    assert camoe["CAMoE"]["t2v"]["R@1"] == 44.6 and camoe["CAMoE + DSL"]["t2v"]["R@1"] == 47.3
    assert camoe["CAMoE + DSL"]["transductive"] and "fine-tuned" in camoe["CAMoE"]["how"]
    assert "2109.04290" in camoe["CAMoE"]["source"] and "2104.08860" in camoe["CLIP4Clip seqTransf"]["source"]
    assert camoe["CLIP zero-shot"]["approximate"] == ["t2v.R@1"]
    # Ours: zero-shot and the one finished run on this cache, each raw, QB-Norm and DSL; not the msvd run,
    # not the killed one (listed as skipped, with why).
    assert [(o["method"], o["rescore"]) for o in ours] == [
        (m, s) for m in ("zero-shot meanP", "seqTransf · InfoNCE") for s in ("none", "qbnorm", "dsl")]
    assert all(o["transductive"] == (o["rescore"] == "dsl") for o in ours)
    assert all("frozen CLIP random:tiny" in o["how"] and o["clip"] == "random:tiny" for o in ours)
    assert [s["run"] for s in table["skipped_runs"]] == [str(runs / "msrvtt-killed")]
    assert "not finished" in table["skipped_runs"][0]["why"]
    assert (table["n_texts"], table["n_videos"]) == (3, 3)

    md = paths["markdown"].read_text()
    assert r.stdout == md  # printed as written
    header = ["Method", "Obtained", "Rescore"] + metric_columns() + ["Source"]
    assert metric_columns() == [f"{d} {m}" for d in ("T2V", "V2T") for m in METRICS]
    assert "| " + " | ".join(header) + " |" in md
    assert "(transductive)" in md and "random weights" in md and "arXiv 2109.04290" in md
    assert "Skipped run" in md and "msrvtt-killed" in md


def test_markdown_csv_and_json_agree(msrvtt_table):
    _, table, paths = msrvtt_table
    with open(paths["csv"], newline="") as f:
        lines = list(csv.DictReader(f))
    body = [line for line in paths["markdown"].read_text().splitlines() if line.startswith("| ")][1:]
    assert len(lines) == len(body) == len(table["rows"])
    for row, line, md in zip(table["rows"], lines, body, strict=True):
        cells = [c.strip() for c in md.strip("|").split("|")]
        assert (line["kind"], line["method"], line["rescore"]) == (row["kind"], row["method"], row["rescore"])
        assert cells[0] == row["method"] and cells[2].endswith("*") == row["transductive"]
        for i, (d, m) in enumerate((d, m) for d in ("t2v", "v2t") for m in METRICS):
            value, column = row[d][m], f"{d.upper()} {m}"
            if value is None:
                assert line[column] == "" and cells[3 + i] == ""
            else:
                assert float(line[column]) == value  # full precision in the CSV
                approx = "≈" if f"{d}.{m}" in row["approximate"] else ""
                assert cells[3 + i] == f"{approx}{value:.1f}"


@pytest.mark.parametrize("rescore", ["none", "qbnorm", "dsl"])
def test_our_rows_are_vtr_eval_json(stand_ins, msrvtt_table, rescore):
    tmp, caches, runs = stand_ins
    _, table, _ = msrvtt_table
    flag = {"none": [], "qbnorm": ["--qbnorm"], "dsl": ["--dsl"]}[rescore]
    for method, args in (("zero-shot meanP", ["--zero-shot", "--cache", caches["msrvtt"]]),
                         ("seqTransf · InfoNCE", ["--run", runs / "msrvtt-seq-infonce"])):
        out = tmp / f"eval-{rescore}-{len(method)}.json"
        vtr("eval", *args, *flag, "--json", out)
        report = json.loads(out.read_text())
        row = next(r for r in table["rows"] if r["method"] == method and r["rescore"] == rescore)
        assert row["t2v"] == report["t2v"] and row["v2t"] == report["v2t"]
        assert row["transductive"] == report["transductive"]


def test_msvd_table_has_no_msrvtt_references(stand_ins):
    tmp, caches, runs = stand_ins
    _, table, paths = table_of(tmp, caches["msvd"], runs, "msvd")
    assert table["dataset"] == "msvd"
    assert not [r for r in table["rows"] if r["kind"] == "published"]
    assert [(o["method"], o["rescore"]) for o in table["rows"]] == [
        (m, s) for m in ("zero-shot meanP", "CAMoE · DSL loss") for s in ("none", "qbnorm", "dsl")]
    md = paths["markdown"].read_text()
    assert "CAMoE + DSL" not in md and "2109.04290" not in md and "no published figures recorded for msvd" in md


def test_runs_alone_pick_their_cache_or_say_there_are_several(stand_ins, tmp_path):
    _, caches, runs = stand_ins
    r = CliRunner().invoke(main, ["table", "--runs", str(runs), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "name 2 caches" in r.output and "pass --cache" in r.output
    only = tmp_path / "runs"
    shutil.copytree(runs / "msvd-camoe-dsl", only / "msvd-camoe-dsl")
    vtr("table", "--runs", only, "--out", tmp_path / "out", "--no-zero-shot")
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["cache"] == str(caches["msvd"])
    assert [(o["method"], o["rescore"]) for o in table["rows"]] == [("CAMoE · DSL loss", s)
                                                                    for s in ("none", "qbnorm", "dsl")]


def test_runs_of_a_moved_cache_are_found(stand_ins, tmp_path):
    """A cache moved after training (the path its runs name is gone) still gets its runs' rows; a copy
    beside the original does not, since the runs name the original."""
    _, caches, runs = stand_ins
    moved = tmp_path / "moved" / caches["msvd"].name
    moved.parent.mkdir()
    shutil.copy(caches["msvd"], moved)
    only = tmp_path / "runs"
    shutil.copytree(runs / "msvd-camoe-dsl", only / "msvd-camoe-dsl")

    def our_methods(out):
        vtr("table", "--cache", moved, "--runs", only, "--out", out)
        return {row["method"] for row in json.loads((out / "table.json").read_text())["rows"] if row["kind"] == "ours"}

    assert our_methods(tmp_path / "copy") == {"zero-shot meanP"}  # the original is still there: a copy
    record = json.loads((only / "msvd-camoe-dsl" / "config.json").read_text())
    record["cache"]["path"] = str(tmp_path / "gone" / caches["msvd"].name)  # as if the cache had been moved
    (only / "msvd-camoe-dsl" / "config.json").write_text(json.dumps(record))
    assert our_methods(tmp_path / "moved-out") == {"zero-shot meanP", "CAMoE · DSL loss"}


def test_reference_data_is_cited_and_complete():
    for bench in references.BENCHMARKS.values():
        for row in bench["rows"]:
            paper = references.PAPERS[row["paper"]]
            assert paper["title"] and paper["arxiv"] and paper["table"]
            assert set(row["t2v"]) == set(row["v2t"]) == set(METRICS)
            assert all(v is None or isinstance(v, float) for d in ("t2v", "v2t") for v in row[d].values())
            assert row["how"].startswith("published: ") and ("fine-tuned" in row["how"] or "zero-shot" in row["how"])
            assert row["transductive"] == (row["rescore"] == "dsl")
    assert references.benchmark("no-such-dataset")["rows"] == []
