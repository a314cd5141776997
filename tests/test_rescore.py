import pytest
import torch

from vtr.eval.rescore import dsl, dsl_t2v, dsl_v2t, qbnorm, qbnorm_t2v, qbnorm_v2t


def close(a, b, **tolerances) -> bool:
    """``torch.allclose`` across dtypes: the whole-matrix re-scorings return float64."""
    return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), **tolerances)


# Video 0 is a hub: top-1 for every text, though texts 1 and 2 belong to videos 1 and 2.
HUB = torch.tensor([[3.0, 1.0, 1.0],
                    [3.0, 2.5, 1.0],
                    [3.0, 1.0, 2.5]])


def test_dsl_2x2_hand_values():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # column softmax: [e/(e+1), 1/(e+1)] = [0.731059, 0.268941]; times S times 2 rows
    expected = torch.tensor([[1 * 0.731059 * 2, 0.0], [0.0, 1 * 0.731059 * 2]])
    assert close(dsl(s), expected, atol=1e-5)


def test_dsl_demotes_hub_video():
    assert HUB.argmax(1).tolist() == [0, 0, 0]
    out = dsl_t2v(HUB)
    # column 0: softmax(3, 3, 3) = 1/3 each             -> 3 * 1/3 * 3 = 3 on every row
    # column 1: softmax(1, 2.5, 1) = [e, e^2.5, e] / (e^2.5 + 2e) = [0.154281, 0.691438, 0.154281]
    #   row 1: 2.5 * 0.691438 * 3 = 5.185788 ; rows 0, 2: 1 * 0.154281 * 3 = 0.462842
    # column 2 is column 1 with rows 1 and 2 swapped.
    expected = torch.tensor([[3.0, 0.462842, 0.462842],
                             [3.0, 5.185788, 0.462842],
                             [3.0, 0.462842, 5.185788]])
    assert close(out, expected, atol=1e-5)
    assert out.argmax(1).tolist() == [0, 1, 2]


def test_dsl_v2t_softmax_over_videos():
    out = dsl_v2t(HUB)
    assert out.shape == HUB.shape  # texts x videos, ready for v2t_ranks
    assert close(out, dsl(HUB.T).T)
    # text 0 row: softmax over videos of (3, 1, 1) = [e^3, e, e] / (e^3 + 2e) = [0.786986, 0.106507, 0.106507]
    # times S times 3 videos: [3 * 0.786986 * 3, 1 * 0.106507 * 3, same] = [7.082874, 0.319521, 0.319521]
    assert close(out[0], torch.tensor([7.082874, 0.319521, 0.319521]), atol=1e-5)


def test_dsl_temperature_and_numpy_input():
    # A huge temperature makes the softmax uniform (1/M), so S' = S * 1/M * M = S.
    assert close(dsl(HUB, temperature=1e9), HUB, atol=1e-5)
    assert close(dsl(HUB.numpy()), dsl(HUB))


BANK = torch.tensor([[0.9, 0.1, 0.2],   # top-1: gallery item 0
                     [0.8, 0.3, 0.1]])  # top-1: gallery item 0  -> activation set A = {0} for k = 1
# logsumexp over the bank per gallery item (beta = 1):
#   item 0: log(e^.9 + e^.8) = log(2.459603 + 2.225541) = 1.544397
#   item 1: log(e^.1 + e^.3) = log(1.105171 + 1.349859) = 0.898139
#   item 2: log(e^.2 + e^.1) = log(1.221403 + 1.105171) = 0.844397
LSE = torch.tensor([1.544397, 0.898139, 0.844397])
QUERIES = torch.tensor([[0.7, 0.6, 0.2],   # top-1 is item 0, in A  -> normalised
                        [0.1, 0.2, 0.5]])  # top-1 is item 2, not in A -> kept


def test_qbnorm_hand_example():
    out = qbnorm(QUERIES, BANK, beta=1.0, k=1)
    # row 0: [.7 - 1.544397, .6 - .898139, .2 - .844397] = [-0.844397, -0.298139, -0.644397]: hub 0 demoted
    assert close(out[0], torch.tensor([-0.844397, -0.298139, -0.644397]), atol=1e-5)
    assert out[0].argmax().item() == 1
    assert torch.equal(out[1], QUERIES[1].double())


def test_qbnorm_k2_activates_more_items():
    # k = 2: bank row 0 top-2 = {0, 2}, row 1 top-2 = {0, 1} -> A = {0, 1, 2}: row 1 is normalised too.
    out = qbnorm(QUERIES, BANK, beta=1.0, k=2)
    assert close(out[1], QUERIES[1] - LSE, atol=1e-5)  # [-1.444397, -0.698139, -0.344397]


def test_qbnorm_default_beta_matches_inverted_softmax_and_chunks():
    torch.manual_seed(0)
    q, bank = torch.randn(6, 5) * 0.3, torch.randn(40, 5) * 0.3
    out = qbnorm(q, bank)
    inverted = torch.log(torch.exp(20 * q) / torch.exp(20 * bank).sum(0))  # the paper's formula, beta = 20
    active = torch.zeros(5, dtype=torch.bool)
    active[bank.argmax(1)] = True
    use = active[q.argmax(1)]
    assert close(out[use], inverted[use], atol=1e-4)
    assert torch.equal(out[~use], q[~use].double())
    # The bank may come in blocks; the result must not depend on the block size.
    assert close(qbnorm(q, bank, chunk=3), out, atol=1e-5)
    assert close(qbnorm(q, iter([bank[:7], bank[7:]])), out, atol=1e-5)


def test_qbnorm_directions_and_errors():
    texts_x_videos = QUERIES.T  # 3 texts x 2 videos; V2T queries are the 2 videos
    out = qbnorm_v2t(texts_x_videos, BANK, beta=1.0)
    assert out.shape == texts_x_videos.shape
    assert close(out, qbnorm(QUERIES, BANK, beta=1.0).T)
    assert close(qbnorm_t2v(QUERIES, BANK, beta=1.0), qbnorm(QUERIES, BANK, beta=1.0))
    with pytest.raises(ValueError, match="gallery columns"):
        qbnorm(QUERIES, BANK[:, :2])
    with pytest.raises(ValueError, match="empty"):
        qbnorm(QUERIES, BANK[:0])
    with pytest.raises(ValueError, match="k must be"):
        qbnorm(QUERIES, BANK, k=4)


def test_whole_matrix_rescorings_are_float64_and_keep_ties():
    """Columns holding the same numbers in another order get the same lse, so equal scores stay equal."""
    s = torch.tensor([[3.0, 0.5, 1.0], [0.5, 1.0, 0.5], [1.0, 3.0, 3.0]])  # columns 0, 1, 2: permutations
    out = dsl(s)
    assert out.dtype == torch.float64
    assert out[0, 0] == out[2, 1] == out[2, 2] and out[1, 0] == out[0, 1]
    q = torch.tensor([[0.25, 0.5, 0.25]])
    bank = torch.tensor([[0.5, 0.25, 0.5], [0.25, 0.5, 0.25]])  # columns 0 and 1 hold the same numbers
    out = qbnorm(q, bank, k=2)
    assert out.dtype == torch.float64 and out[0, 0] == out[0, 2] != out[0, 1]


def test_snap_ties_and_logsumexp_tie_safe():
    from vtr.eval.rescore import TIE_TOLERANCE, logsumexp_tie_safe, snap_ties

    v = torch.tensor([5.0, 5.0 * (1 + TIE_TOLERANCE / 4), 1.0, 5.0 * (1 + 4 * TIE_TOLERANCE), float("inf"),
                      float("inf"), 1.0 + 1e-9], dtype=torch.float64)
    out = snap_ties(v)
    assert out.tolist() == [5.0, 5.0, 1.0, v[3].item(), float("inf"), float("inf"), 1.0 + 1e-9]
    torch.manual_seed(0)
    x = torch.randn(200, 5) * 30
    x[:, 3] = x[torch.randperm(200), 1]  # column 3: column 1 in another order
    lse = logsumexp_tie_safe(x, 0)
    assert lse.dtype == torch.float64 and lse[3] == lse[1]
    assert close(lse, torch.logsumexp(x.double(), 0), rtol=1e-12)


def test_dsl_direct_ranks_as_a_tile_of_dsl():
    """``dsl_direct`` is DSL over the constants alpha * n: the same values up to them, so the same order."""
    from vtr.eval.rescore import dsl_direct

    torch.manual_seed(0)
    raw = torch.randn(7, 5) * 0.03  # dot products; the logits are 100 * raw
    s = raw * 100
    whole_t2v, whole_v2t = dsl_t2v(s), dsl_v2t(s)
    tile = raw[2:6, 1:4]
    t2v = dsl_direct(tile, torch.logsumexp(s, 0)[1:4], alpha=100.0) * 100 * 7
    v2t = dsl_direct(tile, torch.logsumexp(s, 1)[2:6, None], alpha=100.0) * 100 * 5
    assert close(t2v, whole_t2v[2:6, 1:4], rtol=1e-5)
    assert close(v2t, whole_v2t[2:6, 1:4], rtol=1e-5)



def test_query_bank_stats_from_column_tiles_equal_whole_rows():
    from vtr.eval.rescore import QueryBankStats

    torch.manual_seed(0)
    bank = torch.randn(9, 11) * 0.3
    bank[4, 2] = bank[4, 8] = bank[4].max() + 1.0  # a tie for the top-1 within a row
    for k in (1, 3):
        whole = QueryBankStats(11, k=k)
        whole.add(bank)
        lse, active = whole.finish()
        tiled = QueryBankStats(11, k=k)
        for r in range(0, 9, 4):  # groups of bank rows, each one sweep over the gallery in tiles of 3 columns
            for c in range(0, 11, 3):
                tiled.add(bank[r : r + 4, c : c + 3], c)
        lse_t, active_t = tiled.finish()
        assert close(lse_t, lse, rtol=1e-12) and torch.equal(active_t, active)
        assert close(lse, torch.logsumexp(20 * bank, 0), atol=1e-4)
        if k == 1:
            assert torch.equal(active.nonzero().squeeze(1).unique(), bank.argmax(1).unique())
    # A tie for the top-1 across two tiles: the lowest gallery index wins, as argmax does.
    tie = QueryBankStats(3)
    tie.add(torch.tensor([[1.0, 0.0]]), 0)
    tie.add(torch.tensor([[1.0]]), 2)
    assert tie.finish()[1].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="sweep the gallery"):
        QueryBankStats(11).add(bank[:, 3:], 3)
