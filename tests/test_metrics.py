import numpy as np
import pytest
import torch

from vtr.core.metrics import retrieval_metrics, t2v_ranks, v2t_ranks

# 3 captions, 3 videos, caption i belongs to video i.
SIM = np.array([
    [0.9, 0.1, 0.3],  # true 0.9, nothing else >= 0.9            -> rank 1
    [0.5, 0.2, 0.4],  # true 0.2, 0.5 and 0.4 are >= 0.2         -> rank 3
    [0.1, 0.7, 0.6],  # true 0.6, 0.7 >= 0.6                     -> rank 2
])
TV = np.array([0, 1, 2])

# 5 captions of 3 videos: captions 0,1 -> video 0; caption 2 -> video 1; captions 3,4 -> video 2.
MULTI = np.array([
    [0.9, 0.2, 0.1],
    [0.3, 0.8, 0.2],
    [0.4, 0.5, 0.6],
    [0.2, 0.1, 0.3],
    [0.1, 0.7, 0.4],
])
MULTI_TV = np.array([0, 0, 1, 2, 2])


def test_t2v_ranks_hand_example():
    assert t2v_ranks(SIM, TV).tolist() == [1, 3, 2]


def test_retrieval_metrics_hand_example():
    m = retrieval_metrics(np.array([1, 2, 6, 12, 5, 4]))
    assert m["R@1"] == pytest.approx(100 / 6)  # only the 1
    assert m["R@5"] == pytest.approx(400 / 6)  # 1, 2, 5, 4
    assert m["R@10"] == pytest.approx(500 / 6)  # all but 12
    assert m["MdR"] == 4.5  # sorted 1 2 4 5 6 12 -> (4 + 5) / 2
    assert m["MnR"] == 5.0  # 30 / 6
    assert set(m) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
    assert all(isinstance(x, float) for x in m.values())


def test_all_equal_scores_give_worst_rank():
    sim = np.full((4, 4), 0.5)
    tv = np.arange(4)
    assert t2v_ranks(sim, tv).tolist() == [4, 4, 4, 4]
    assert v2t_ranks(sim, tv).tolist() == [4, 4, 4, 4]
    assert retrieval_metrics(t2v_ranks(sim, tv))["R@1"] == 0.0


def test_tie_with_one_other_gives_rank_2():
    sim = np.array([[0.5, 0.5, 0.1],   # true 0 ties with video 1 -> 1 + 1 = 2
                    [0.7, 0.7, 0.2],   # true 1 ties with video 0 -> 2
                    [0.3, 0.1, 0.3]])  # true 2 ties with video 0 -> 2
    assert t2v_ranks(sim, np.arange(3)).tolist() == [2, 2, 2]


def test_multi_caption_t2v_and_v2t_group_max():
    # T2V: c0 0.9 top -> 1; c1 0.3 < 0.8 -> 2; c2 0.5 < 0.6 -> 2; c3 0.3 top -> 1; c4 0.4 < 0.7 -> 2
    assert t2v_ranks(MULTI, MULTI_TV).tolist() == [1, 2, 2, 1, 2]
    # V2T group scores G[v, g] = max over g's captions of sim[c, v]:
    #   video 0: g0 = max(.9, .3) = .9, g1 = .4, g2 = max(.2, .1) = .2 -> own .9 is top  -> 1
    #   video 1: g0 = max(.2, .8) = .8, g1 = .5, g2 = max(.1, .7) = .7 -> own .5, 2 above -> 3
    #   video 2: g0 = max(.1, .2) = .2, g1 = .6, g2 = max(.3, .4) = .4 -> own .4, 1 above -> 2
    assert v2t_ranks(MULTI, MULTI_TV).tolist() == [1, 3, 2]
    assert v2t_ranks(MULTI, MULTI_TV, n_videos=3).tolist() == [1, 3, 2]


def test_torch_and_numpy_inputs_agree():
    assert t2v_ranks(torch.tensor(MULTI), torch.tensor(MULTI_TV)).tolist() == t2v_ranks(MULTI, MULTI_TV).tolist()
    assert v2t_ranks(torch.tensor(MULTI), torch.tensor(MULTI_TV)).tolist() == v2t_ranks(MULTI, MULTI_TV).tolist()
    assert retrieval_metrics(torch.tensor([1, 3, 2])) == retrieval_metrics(np.array([1, 3, 2]))


def test_nan_raises():
    sim = SIM.copy()
    sim[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        t2v_ranks(sim, TV)
    with pytest.raises(ValueError, match="NaN"):
        v2t_ranks(sim, TV)


def test_video_without_caption_raises():
    with pytest.raises(ValueError, match="1 of 3 videos have no caption"):
        v2t_ranks(SIM, np.array([0, 0, 1]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="one entry per similarity row"):
        t2v_ranks(SIM, np.array([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        t2v_ranks(SIM, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="n_videos"):
        v2t_ranks(SIM, TV, n_videos=4)
    with pytest.raises(ValueError, match="no ranks"):
        retrieval_metrics(np.array([]))


def test_chunking_invariance_and_brute_force():
    rng = np.random.default_rng(0)
    sim = np.round(rng.random((5000, 300)), 2)  # rounded so ties occur
    tv = np.arange(5000) % 300
    r_t2v = t2v_ranks(sim, tv)
    r_v2t = v2t_ranks(sim, tv)
    assert np.array_equal(t2v_ranks(sim, tv, chunk=7), r_t2v)
    assert np.array_equal(v2t_ranks(sim, tv, chunk=7), r_v2t)
    # Brute force on a few rows / videos.
    for i in (0, 17, 4999):
        assert r_t2v[i] == 1 + sum(sim[i, k] >= sim[i, tv[i]] for k in range(300) if k != tv[i])
    for v in (0, 123, 299):
        group = np.array([sim[tv == g, v].max() for g in range(300)])
        assert r_v2t[v] == 1 + sum(group[g] >= group[v] for g in range(300) if g != v)
