"""The stages depend one way (docs/architecture.md): read every import with grimp and check the order."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import import_graph  # noqa: E402


@pytest.fixture(scope="module")
def edges():
    return import_graph.read_edges()


def test_the_graph_sees_every_stage(edges):
    # The mirror must expose the folders setup.cfg maps: a graph with no arrows would pass every rule.
    arrows = import_graph.stage_arrows(edges)
    assert {("train", "cache"), ("extract", "cache"), ("eval", "train"), ("cache", "core"),
            ("pipeline", "extract"), ("search", "eval")} <= set(arrows)
    assert {import_graph.stage(m) for e in edges for m in e[:2]} == set(import_graph.RANKS)


def test_no_import_cycle(edges):
    assert import_graph.cycles(edges) == []


def test_no_stage_imports_a_stage_above_it(edges):
    assert import_graph.rule_breaks(edges) == []


def test_the_checks_catch_what_they_are_for():
    fake = [("vtr.train.fit", "vtr.eval.stage", 3), ("vtr.eval.stage", "vtr.train.fit", 9),
            ("vtr.extract.stage", "vtr.train.heads", 5), ("vtr.cache.store", "vtr.core.files", 1)]
    assert import_graph.cycles(fake) == [["vtr.eval.stage", "vtr.train.fit"]]
    assert import_graph.rule_breaks(fake) == [
        "vtr.train.fit (line 3) imports vtr.eval.stage: train may not depend on eval",
        "vtr.extract.stage (line 5) imports vtr.train.heads: extract may not depend on train"]
