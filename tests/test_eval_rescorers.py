"""The rescoring registry: the methods it lists are the ones `vtr eval`, the eval stage and ``chunked_ranks``
accept, and a method registered from one new module is taken everywhere with no other edit."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from test_eval_chunked import tied_float_data
from vtr.core.metrics import t2v_ranks, v2t_ranks
from vtr.eval import rescorers
from vtr.eval.evaluate import chunked_ranks, evaluate
from vtr.eval.rescorers import RankPlan, Rescorer, TileValues
from vtr.eval.rescorers import base
from vtr.train.encode import score_matrix
from vtr.train.heads import MeanP


def test_the_three_methods_are_listed_raw_first():
    from vtr.eval import stage

    assert rescorers.names() == ("none", "dsl", "qbnorm")
    assert stage.RESCORES == rescorers.names()
    assert [m.name for m in rescorers.flagged()] == ["dsl", "qbnorm"]
    assert rescorers.get("dsl").transductive and not rescorers.get("qbnorm").transductive
    assert rescorers.get("qbnorm").uses_bank and not rescorers.get("none").uses_bank
    with pytest.raises(ValueError, match=r"rescore must be one of \('none', 'dsl', 'qbnorm'\), got 'softmax'"):
        rescorers.get("softmax")


class _Reversed(TileValues):
    """Ranks by -score: the worst-scored candidate first."""

    def t2v(self, s, rows, cols, out):
        return torch.neg(s, out=out)

    v2t = t2v


class Reversed(Rescorer):
    name = "reversed"
    flag_help = "Rank by the negated scores (a test method)."

    def plan(self, job, score):
        return RankPlan(score, [_Reversed()])


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY))
    rescorers.register(Reversed)
    yield Reversed


def test_a_registered_method_is_taken_everywhere(registered):
    from vtr.cli_eval import eval_
    from test_evaluate import make_cache

    assert rescorers.names() == ("none", "dsl", "qbnorm", "reversed")
    head = MeanP(8)
    t, gate, v, text_video = tied_float_data()
    sim = -score_matrix(head, t, gate, v)
    want = t2v_ranks(sim, text_video), v2t_ranks(sim, text_video, v.shape[0])
    for chunk in (4, 7, 1000):
        got = chunked_ranks(head, t, gate, v, text_video, rescore="reversed", chunk=chunk)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    report = evaluate(MeanP(16), make_cache(), rescore="reversed")
    assert report["rescore"] == "reversed" and report["transductive"] is False
    assert report["t2v"]["R@1"] == 0.0  # the matching captions now rank their own video last
    runner = CliRunner()
    assert "--reversed" in runner.invoke(eval_, ["--help"]).output
    out = runner.invoke(eval_, ["--dsl", "--reversed"])
    assert out.exit_code == 2 and "choose one of --dsl, --qbnorm and --reversed" in out.output


def test_two_methods_may_not_share_a_name(registered):
    class Other(Rescorer):
        name = "reversed"

    with pytest.raises(ValueError, match="two rescoring methods are named 'reversed'"):
        rescorers.register(Other)
