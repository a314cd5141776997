"""Chunked evaluation (tiles, never the whole matrix) ranks exactly as the whole-matrix computation does."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_evaluate import make_cache
import vtr.eval.rescorers.dsl as dsl_module
from vtr.eval.evaluate import DSL_MEMORY_MIB, chunked_ranks, evaluate
from vtr.train.encode import encode_all, score_matrix
from vtr.core.metrics import plan_blocks, retrieval_metrics, t2v_ranks, v2t_ranks
from vtr.eval.rescore import dsl_t2v, dsl_v2t, qbnorm_t2v, qbnorm_v2t
from vtr.eval.tiles import Buffers
from vtr.train.heads import MeanP

D = 8
MODES = ["none", "dsl", "qbnorm"]
CHUNKS = [1, 4, 7, 1000]  # 4 and 7 divide neither the 23 videos nor the 50 captions; 1000 is one tile
# DSL keeps pass 1's tiles for pass 2 within a memory budget: none kept, one or two tiles kept, all kept.
DSL_BUDGETS = [0, 1e-4, DSL_MEMORY_MIB]


def reference_ranks(head, t, gate, v, text_video, rescore, bank):
    """What evaluate did before chunking: the whole matrix, re-scored, then ranked."""
    sim = score_matrix(head, t, gate, v)
    if rescore == "none":
        s_t2v = s_v2t = sim
    elif rescore == "dsl":
        s_t2v, s_v2t = dsl_t2v(sim), dsl_v2t(sim)
    else:
        t_b, g_b, v_b = bank
        cos = sim / head.scale
        s_t2v = qbnorm_t2v(cos, score_matrix(head, t_b, g_b, v) / head.scale)
        s_v2t = qbnorm_v2t(cos, score_matrix(head, t, gate, v_b).T / head.scale)
    return t2v_ranks(s_t2v, text_video), v2t_ranks(s_v2t, text_video, v.shape[0])


def captions_of_videos(rng, n_videos=23, n_texts=50):
    """Every video gets 1 to 4 captions; the captions are shuffled, so not grouped by video."""
    text_video = np.concatenate([np.arange(n_videos), rng.integers(0, n_videos, n_texts - n_videos)])
    return rng.permutation(text_video)


def tied_integer_data(seed=0):
    """Small-integer embeddings: every score is exact in float32 whatever the order of the sums, so ties are
    exact too, and many (values in -1..1, 8 dimensions). Videos 3 and 4 are identical, and so are captions 0
    and 1 (of different videos)."""
    rng = np.random.default_rng(seed)
    text_video = captions_of_videos(rng)
    v = torch.from_numpy(rng.integers(-1, 2, (23, 1, D))).float()
    v[4] = v[3]
    t = torch.from_numpy(rng.integers(-1, 2, (50, 1, D))).float()
    t[1] = t[0]
    return t, torch.ones(50, 1), v, text_video


def tied_float_data(seed=0):
    """Random float embeddings (no accidental near-ties) with exact duplicates: video 4 = video 3, caption 1 =
    caption 0. For DSL, whose exp and softmax round differently in the two computations."""
    torch.manual_seed(seed)
    text_video = captions_of_videos(np.random.default_rng(seed))
    v = F.normalize(torch.randn(23, 1, D), dim=-1)
    v[4] = v[3]
    t = F.normalize(v[text_video] + 0.7 * torch.randn(50, 1, D), dim=-1)
    t[1] = t[0]
    return t, torch.ones(50, 1), v, text_video


def bank_data(seed=1):
    """A query bank of 30 captions and 20 videos with random float embeddings."""
    torch.manual_seed(seed)
    return F.normalize(torch.randn(30, 1, D), dim=-1), torch.ones(30, 1), F.normalize(torch.randn(20, 1, D), dim=-1)


def assert_every_chunking_matches(head, t, gate, v, text_video, rescore, bank):
    """Chunked ranks equal the whole-matrix ranks at every tile size in CHUNKS; returns the reference ranks."""
    want_t2v, want_v2t = reference_ranks(head, t, gate, v, text_video, rescore, bank)
    for chunk in CHUNKS:
        for budget in DSL_BUDGETS if rescore == "dsl" else [DSL_MEMORY_MIB]:
            got_t2v, got_v2t = chunked_ranks(head, t, gate, v, text_video, rescore=rescore, bank=bank, chunk=chunk,
                                             dsl_memory_mib=budget)
            assert np.array_equal(got_t2v, want_t2v), (rescore, chunk, budget)
            assert np.array_equal(got_v2t, want_v2t), (rescore, chunk, budget)
    return want_t2v, want_v2t


@pytest.mark.parametrize("rescore", ["none", "qbnorm"])
def test_exact_scores_with_ties_rank_identically(rescore):
    head, bank = MeanP(D), bank_data()
    t, gate, v, text_video = tied_integer_data()
    want_t2v, _ = assert_every_chunking_matches(head, t, gate, v, text_video, rescore, bank)
    assert (want_t2v[text_video == 3] >= 2).all()  # the duplicate video ties with the true one: ranks are not 1


@pytest.mark.parametrize("rescore", MODES)
def test_float_scores_with_duplicates_rank_identically(rescore):
    head, bank = MeanP(D), bank_data()
    t, gate, v, text_video = tied_float_data()
    assert_every_chunking_matches(head, t, gate, v, text_video, rescore, bank)


@pytest.mark.parametrize("rescore", MODES)
def test_all_equal_scores_give_worst_ranks(rescore):
    text_video = captions_of_videos(np.random.default_rng(0))
    t, v = torch.zeros(50, 1, D), torch.zeros(23, 1, D)  # every score is 0
    bank = (torch.zeros(30, 1, D), torch.ones(30, 1), torch.zeros(20, 1, D))
    t2v, v2t = chunked_ranks(MeanP(D), t, torch.ones(50, 1), v, text_video, rescore=rescore, bank=bank, chunk=4)
    assert (t2v == 23).all() and (v2t == 23).all()


@pytest.mark.parametrize("rescore", MODES)
def test_several_experts_and_a_head_with_its_own_similarity(rescore):
    """The one-product path (gate folded into the text embeddings) and a head's own ``similarity``."""

    class OwnSimilarity(MeanP):
        def similarity(self, t, gate, v):
            return super().similarity(t, gate, v)

    torch.manual_seed(2)
    text_video = captions_of_videos(np.random.default_rng(2))
    v = F.normalize(torch.randn(23, 3, D), dim=-1)
    t = F.normalize(v[text_video] + torch.randn(50, 3, D), dim=-1)
    gate = torch.softmax(torch.randn(50, 3), dim=1)
    bank = (F.normalize(torch.randn(30, 3, D), dim=-1), torch.softmax(torch.randn(30, 3), 1),
            F.normalize(torch.randn(20, 3, D), dim=-1))
    for head in (MeanP(D), OwnSimilarity(D)):
        want = reference_ranks(head, t, gate, v, text_video, rescore, bank)
        got = chunked_ranks(head, t, gate, v, text_video, rescore=rescore, bank=bank, chunk=7)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_dsl_far_apart_scores_take_the_direct_form(monkeypatch):
    """Chunked DSL derives both directions from one exp(s - c) per tile and computes directly where that could
    underflow: videos (T2V) or captions (V2T) far below the tile's maximum, and captions (T2V) or videos (V2T)
    whose own DSL score is tiny. Scores from 20 to 100 logits exercise each case; ranks stay the whole matrix's."""
    rng = np.random.default_rng(0)
    n_videos = 12
    logits = [rng.uniform(20, 40, n_videos) for _ in range(11)]  # captions 0-10: strong for videos 0-10 ...
    for j, row in enumerate(logits):
        row[j] = 100.0
    text_video = list(range(11))
    weak = rng.uniform(25, 45, n_videos)  # ... a weak caption of video 0: its own DSL weight about e^-65
    weak[0] = 35.0
    lone = rng.uniform(20, 40, n_videos)  # video 11's one caption: 50, so its column's lse is 50 below 100
    lone[11] = 50.0
    twin = rng.uniform(20, 40, n_videos)  # a caption of video 10 that is video 3's: video 10's V2T DSL is tiny
    twin[3], twin[10] = 100.0, 35.0
    logits += [weak, lone, twin]
    text_video += [0, 11, 10]
    # One-hot videos: the scores are exactly 100 * t (MeanP's logit scale is CLIP's 100).
    t = torch.tensor(np.array(logits) / 100.0, dtype=torch.float32)[:, None, :]
    v = torch.eye(n_videos)[:, None, :]
    seen = {"far": 0, "direct": 0}
    begin = dsl_module.DslValues.begin

    def spy(self, *args):
        begin(self, *args)
        seen["far"] += len(self.far_cols) + len(self.far_rows)
        seen["direct"] += int(self.direct_t.sum() + self.direct_v.sum())

    monkeypatch.setattr(dsl_module.DslValues, "begin", spy)
    assert_every_chunking_matches(MeanP(n_videos), t, torch.ones(len(t), 1), v, np.array(text_video), "dsl", None)
    assert seen["far"] > 0 and seen["direct"] > 0


def test_dsl_tile_values_match_the_direct_form_wherever_they_matter():
    """Pass 2's values, one tile: equal to ``s * exp(s - lse)`` (``dsl_direct``) to float rounding, except below
    ``max|s| * e^-57`` where only the side of any threshold matters. A video whose scores all lie 90 below the
    tile's maximum, and a caption likewise, would underflow in the shared-shift product."""
    from vtr.eval.rescore import dsl_direct

    torch.manual_seed(0)
    s = torch.rand(9, 7) * 20 + 80  # logits 80..100
    s[:, 4] -= 85.0  # a video far below the maximum: its column is computed directly
    s[6] -= 85.0  # a caption likewise (V2T)
    text_video = np.arange(9) % 7
    blocks = plan_blocks(text_video, 7, chunk=1000)  # one tile, the diagonal one

    def score(rows, cols):
        return s[blocks.order][rows, cols]

    score.alpha = 1.0
    pass1 = dsl_module.dsl_pass1(score, blocks, 9, 7)
    sorted_s = s[blocks.order]
    assert pass1.lse_v.dtype == pass1.lse_t.dtype == torch.float64  # summed in float64 (ties: test_eval_ties.py)
    assert torch.allclose(pass1.lse_v.float(), torch.logsumexp(sorted_s, 0))
    assert torch.allclose(pass1.lse_t.float(), torch.logsumexp(sorted_s, 1))
    dsl = dsl_module.DslValues(pass1, 9, 7)
    rows, cols = blocks.texts(0), blocks.videos(0)
    own = torch.as_tensor(blocks.text_video[rows])
    dsl.begin(sorted_s, 0, 0, rows, cols, own, Buffers("cpu"))
    zone = 100.0 * math.exp(-57.0)
    far_row = int(np.flatnonzero(blocks.order == 6)[0])
    # A caption (video) ranked with the direct form is scaled by one factor per row (column): the same order.
    lse_v = pass1.lse_v.float() + torch.where(dsl.direct_t, dsl.k_t, 0.0)[:, None]
    lse_t = pass1.lse_t.float()[:, None] + torch.where(dsl.direct_v, dsl.k_v, 0.0)
    for got, want, far in ((dsl.t2v(sorted_s, rows, cols, None).clone(), dsl_direct(sorted_s, lse_v),
                            (slice(None), 4)),
                           (dsl.v2t(sorted_s, rows, cols, None).clone(), dsl_direct(sorted_s, lse_t),
                            (far_row, slice(None)))):
        matters = want.abs() >= zone
        assert matters[far].sum() >= 6 and matters.sum() > 40  # the far video (T2V), caption (V2T) matter
        assert torch.allclose(got[matters], want[matters], rtol=1e-5, atol=0)
        assert (got[~matters].abs() < zone).all()


def test_plan_blocks_keeps_each_videos_captions_in_its_block():
    text_video = np.array([2, 0, 1, 1, 1, 1, 1, 0, 3, 2])  # video 1 has 5 captions, more than chunk=3
    blocks = plan_blocks(text_video, 4, chunk=3)
    assert np.array_equal(text_video[blocks.order], blocks.text_video)
    assert np.array_equal(blocks.text_video, np.sort(text_video))
    seen = []
    for b in range(len(blocks)):
        videos, texts = blocks.videos(b), blocks.texts(b)
        assert set(blocks.text_video[texts]) == set(range(videos.start, videos.stop))  # whole groups, no others
        assert videos.stop - videos.start <= 3
        assert texts.stop - texts.start <= 3 or videos.stop - videos.start == 1  # only a lone big video exceeds
        seen += list(range(videos.start, videos.stop))
    assert seen == [0, 1, 2, 3]
    assert blocks.video_bounds.tolist() == [0, 1, 2, 4] and blocks.text_bounds.tolist() == [0, 2, 7, 10]
    assert blocks.max_group.tolist() == [2, 5, 2]


@pytest.mark.parametrize("rescore", MODES)
def test_evaluate_report_is_the_whole_matrix_report(rescore):
    data = make_cache(wrong=True)  # ranks are spread out, not all 1
    head = MeanP(16)
    test, train = data.select("test"), data.select("train")
    t, gate, v = encode_all(head, test)
    want_t2v, want_v2t = reference_ranks(head, t, gate, v, test.text_video, rescore, encode_all(head, train))
    for chunk in (2, 3, 4096):
        report = evaluate(head, data, rescore=rescore, bank=data, chunk=chunk)
        assert report["t2v"] == retrieval_metrics(want_t2v) and report["v2t"] == retrieval_metrics(want_v2t)


def test_errors():
    t, gate, v, text_video = tied_float_data()
    bad = t.clone()
    bad[5, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        chunked_ranks(MeanP(D), bad, gate, v, text_video, chunk=4)
    with pytest.raises(ValueError, match="have no caption"):
        chunked_ranks(MeanP(D), t, gate, v, np.where(text_video == 5, 6, text_video))
    with pytest.raises(ValueError, match="query bank"):
        chunked_ranks(MeanP(D), t, gate, v, text_video, rescore="qbnorm")
    with pytest.raises(ValueError, match="rescore must be one of"):
        chunked_ranks(MeanP(D), t, gate, v, text_video, rescore="softmax")
    with pytest.raises(ValueError, match="chunk must be"):
        chunked_ranks(MeanP(D), t, gate, v, text_video, chunk=0)
