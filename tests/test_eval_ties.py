"""A tie stays a tie: equal scores against equal statistics get equal re-scored values wherever they sit.

Raw, DSL and QB-Norm ranks, tiled at several sizes and whole, in both directions, are checked against a float64
reference written here from the definitions. Its log-sum-exps take ``math.fsum`` (exactly rounded, so the same
numbers in any order give the same sum): duplicated or permuted rows and columns tie exactly, as they do in exact
arithmetic. Scores come from a head that looks them up in a given float32 matrix, so they are exact whatever the
tile, and the re-scoring alone decides.
"""
import math

import numpy as np
import pytest
import torch

from vtr.eval.evaluate import chunked_ranks
from vtr.core.metrics import t2v_ranks, v2t_ranks
from vtr.eval.rescore import dsl_t2v, dsl_v2t, qbnorm_t2v, qbnorm_v2t
from vtr.train.heads import MeanP

CHUNKS = [3, 7, 16, 1000]  # 1000: one tile, the whole matrix
BETA = 20.0


class LookupHead(MeanP):
    """Scores looked up in ``matrix``: a caption's embedding holds its row, a video's its column. Logit scale 1,
    so the scores are the logits (DSL) and the cosines (QB-Norm) alike."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__(1, logit_scale=1.0)
        self.matrix = matrix.float()

    def similarity(self, t, gate, v):
        return self.matrix[t[:, 0, 0].long()][:, v[:, 0, 0].long()]


def index_embeddings(n: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32)[:, None, None]


def lookup_setup(test: np.ndarray, bank_t2v: np.ndarray, bank_v2t: np.ndarray):
    """A head and embeddings for test scores [M, N], bank captions x test videos [Mb, N] and test captions x bank
    videos [M, Nb]: returns (head, t, gate, v, bank)."""
    m, n = test.shape
    mb, nb = bank_t2v.shape[0], bank_v2t.shape[1]
    whole = np.zeros((m + mb, n + nb), dtype=np.float32)
    whole[:m, :n], whole[m:, :n], whole[:m, n:] = test, bank_t2v, bank_v2t
    head = LookupHead(torch.from_numpy(whole))
    bank = (index_embeddings(mb, m), torch.ones(mb, 1), index_embeddings(nb, n))
    return head, index_embeddings(m), torch.ones(m, 1), index_embeddings(n), bank


# --- the float64 reference, from the definitions ---

def exact_logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """float64 log-sum-exp of each slice, its sum exactly rounded: the same numbers in any order, the same value."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    top = x.max(-1)
    return np.array([t + math.log(math.fsum(np.exp(row - t))) for row, t in zip(x.reshape(-1, x.shape[-1]),
                                                                                  top.reshape(-1))]).reshape(top.shape)


def reference_dsl(s: np.ndarray):
    """DSL at inference: T2V values S * softmax over captions (per video), V2T S * softmax over videos (per caption)."""
    s = s.astype(np.float64)
    return s * np.exp(s - exact_logsumexp(s, 0)[None, :]), s * np.exp(s - exact_logsumexp(s, 1)[:, None])


def reference_qbnorm(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Dynamic inverted softmax (beta 20, k 1): a query's row is beta * s - lse_bank if its top-1 is some bank
    query's top-1, else s. lse = m + r with m the exact column maximum."""
    q, b = queries.astype(np.float64), bank.astype(np.float64)
    m = BETA * b.max(0)
    r = exact_logsumexp(BETA * b - m, 0)
    active = np.zeros(b.shape[1], bool)
    active[b.argmax(1)] = True
    use = active[q.argmax(1)]
    return np.where(use[:, None], (BETA * q - m) - r, q)


def reference_ranks(rescore, test, bank_t2v, bank_v2t, text_video):
    n = test.shape[1]
    if rescore == "none":
        x = y = test.astype(np.float64)
    elif rescore == "dsl":
        x, y = reference_dsl(test)
    else:
        x, y = reference_qbnorm(test, bank_t2v), reference_qbnorm(test.T, bank_v2t.T).T
    return t2v_ranks(x, text_video), v2t_ranks(y, text_video, n)


def whole_matrix_ranks(rescore, test, bank_t2v, bank_v2t, text_video):
    """vtr's whole-matrix path: ``rescore`` functions on the matrix, then ``metrics``."""
    s = torch.from_numpy(test)
    if rescore == "none":
        x = y = s
    elif rescore == "dsl":
        x, y = dsl_t2v(s), dsl_v2t(s)
    else:
        x, y = qbnorm_t2v(s, torch.from_numpy(bank_t2v)), qbnorm_v2t(s, torch.from_numpy(bank_v2t).T)
    return t2v_ranks(x, text_video), v2t_ranks(y, text_video, test.shape[1])


def assert_all_paths_match_the_reference(test, bank_t2v, bank_v2t, text_video, modes=("none", "dsl", "qbnorm")):
    head, t, gate, v, bank = lookup_setup(test, bank_t2v, bank_v2t)
    for rescore in modes:
        want_t2v, want_v2t = reference_ranks(rescore, test, bank_t2v, bank_v2t, text_video)
        got_t2v, got_v2t = whole_matrix_ranks(rescore, test, bank_t2v, bank_v2t, text_video)
        assert np.array_equal(got_t2v, want_t2v), (rescore, "whole", "T2V")
        assert np.array_equal(got_v2t, want_v2t), (rescore, "whole", "V2T")
        for chunk in CHUNKS:
            for budget in ([0, 1024] if rescore == "dsl" else [1024]):  # DSL with no tile kept, and all kept
                got_t2v, got_v2t = chunked_ranks(head, t, gate, v, text_video, rescore=rescore, bank=bank,
                                                 chunk=chunk, dsl_memory_mib=budget)
                assert np.array_equal(got_t2v, want_t2v), (rescore, chunk, budget, "T2V")
                assert np.array_equal(got_v2t, want_v2t), (rescore, chunk, budget, "V2T")
    return head, t, gate, v, bank


# --- data ---

def duplicated_data(seed: int, n_videos: int = 23, n_texts: int = 50):
    """Continuous float32 scores with duplicates that straddle tile borders at every size in CHUNKS.

    Videos 2 and 19 are identical, and 6 and 15 (every caption scores them alike); so are captions 23 and 41,
    and 30 and 45, which belong to different videos, each the best caption of its own video; captions 35 and 36
    are the same text of one video. The bank's columns follow the test's duplicates (a duplicated video or
    caption is the same item for the bank too).
    """
    rng = np.random.default_rng(seed)
    text_video = np.concatenate([np.arange(n_videos), rng.integers(0, n_videos, n_texts - n_videos)])
    text_video[[23, 41, 30, 45, 35, 36]] = [1, 17, 4, 20, 8, 8]  # video j keeps caption j
    s = rng.normal(0.0, 3.0, (n_texts, n_videos)).astype(np.float32)
    s[np.arange(n_texts), text_video] += 4.0  # captions are closer to their own video
    bank_t2v = rng.normal(0.0, 0.1, (30, n_videos)).astype(np.float32)
    bank_v2t = rng.normal(0.0, 0.1, (n_texts, 20)).astype(np.float32)
    for a, b in ((2, 19), (6, 15)):  # duplicated videos
        s[:, b], bank_t2v[:, b] = s[:, a], bank_t2v[:, a]
    for a, b in ((23, 41), (30, 45), (35, 36)):  # duplicated captions
        s[a, text_video[a]] = s[:, text_video[a]].max() + 1.0  # the best caption of its video ...
        s[a, text_video[b]] = s[:, text_video[b]].max() + 1.0  # ... and, duplicated, of the other's too
        s[b], bank_v2t[b] = s[a], bank_v2t[a]
    return s, bank_t2v, bank_v2t, text_video


def circulant_integer_data(n: int = 40, seed: int = 0):
    """Integer-valued n x n scores, ``s[i, j] = base[(i + j) % n]``: every row and every column holds the same
    numbers in another order, so all of DSL's log-sum-exps are equal in exact arithmetic."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-3, 4, n).astype(np.float32)
    idx = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n
    text_video = rng.permutation(n)
    bank_t2v = rng.integers(-1, 2, (6, n)).astype(np.float32) / 8  # QB-Norm: small integer steps, beta * s <= 2.5
    bank_v2t = rng.integers(-1, 2, (n, 5)).astype(np.float32) / 8
    return base[idx], bank_t2v, bank_v2t, text_video


# --- tests ---

@pytest.mark.parametrize("seed", [0, 1])
def test_duplicated_captions_and_videos_across_tiles_keep_their_ties(seed):
    s, bank_t2v, bank_v2t, text_video = duplicated_data(seed)
    assert_all_paths_match_the_reference(s, bank_t2v, bank_v2t, text_video)
    # The duplicates decide: a caption of a duplicated video ties with it, raw and under DSL, and so does a
    # video whose best caption is duplicated, raw.
    for rescore in ("none", "dsl"):
        want_t2v, _ = reference_ranks(rescore, s, bank_t2v, bank_v2t, text_video)
        assert (want_t2v[np.isin(text_video, [2, 19, 6, 15])] >= 2).all()
    _, want_v2t = reference_ranks("none", s, bank_t2v, bank_v2t, text_video)
    assert (want_v2t[[1, 17, 4, 20]] >= 2).all()


def test_integer_scores_with_permuted_rows_keep_their_ties():
    """The 40 x 40 kind: rows and columns are permutations of each other, so DSL ranks by the score alone and
    ties abound; QB-Norm's normalised scores take integer steps too."""
    s, bank_t2v, bank_v2t, text_video = circulant_integer_data()
    assert_all_paths_match_the_reference(s, bank_t2v, bank_v2t, text_video)
    _, want_v2t = reference_ranks("dsl", s, bank_t2v, bank_v2t, text_video)
    # V2T under DSL: the same lse for every caption, so a video ranks the groups by s * e^s alone, ties included.
    s64 = s.astype(np.float64)
    assert np.array_equal(want_v2t, v2t_ranks(s64 * np.exp(s64), text_video, 40))
    assert want_v2t.max() > 3


def test_qbnorm_ties_near_beta_times_score():
    """QB-Norm on integer-valued cosines: normalised values near 60, where float32's step is 4e-6 to 8e-6.
    Gallery items whose bank scores are the same numbers, or the same numbers plus a constant, tie exactly in
    ``beta * s - lse`` when the query's scores differ by that constant."""
    rng = np.random.default_rng(3)
    n_videos, n_texts = 24, 30
    base = rng.integers(-8, 1, (8, 6)).astype(np.float32) / 8  # 6 bank columns, each reused shifted and permuted
    # The highest shift first: the bank's top-1s, the activation set, are the first items, where the queries' are.
    bank_t2v = np.concatenate([base[rng.permutation(8)] + k for k in range(3, -1, -1)], axis=1)  # 8 x 24
    bank_v2t = np.concatenate([base[rng.permutation(8)][:, :5].T + k for k in range(5, -1, -1)], axis=0)  # 30 x 8
    text_video = np.concatenate([np.arange(n_videos), rng.integers(0, n_videos, n_texts - n_videos)])
    s = rng.integers(1, 4, (n_texts, n_videos)).astype(np.float32)  # beta * s up to 60
    assert_all_paths_match_the_reference(s, bank_t2v, bank_v2t, text_video, modes=("qbnorm",))
    for queries, bank in ((s, bank_t2v), (s.T, bank_v2t.T)):
        z = reference_qbnorm(queries, bank)
        normalised = z[(z != queries).any(1)]
        assert len(normalised) > len(z) / 2  # most queries are normalised ...
        assert len(np.unique(normalised)) < normalised.size / 4  # ... with many exact ties in the definition


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_scores_are_refused_by_every_path_with_one_error(bad):
    s, bank_t2v, bank_v2t, text_video = duplicated_data(0)
    s[33, 11] = bad  # a score away from the first tiles
    head, t, gate, v, bank = lookup_setup(s, bank_t2v, bank_v2t)
    messages = set()
    for rescore in ("none", "dsl", "qbnorm"):
        for chunk in CHUNKS:
            with pytest.raises(ValueError) as err:
                chunked_ranks(head, t, gate, v, text_video, rescore=rescore, bank=bank, chunk=chunk)
            messages.add(str(err.value))
        with pytest.raises(ValueError) as err:
            whole_matrix_ranks(rescore, s, bank_t2v, bank_v2t, text_video)
        messages.add(str(err.value))
    # A non-finite score in the query bank is refused too.
    s[33, 11] = 0.0
    bank_t2v[4, 7] = bad
    head, t, gate, v, bank = lookup_setup(s, bank_t2v, bank_v2t)
    for chunk in CHUNKS:
        with pytest.raises(ValueError) as err:
            chunked_ranks(head, t, gate, v, text_video, rescore="qbnorm", bank=bank, chunk=chunk)
        messages.add(str(err.value))
    with pytest.raises(ValueError) as err:
        whole_matrix_ranks("qbnorm", s, bank_t2v, bank_v2t, text_video)
    messages.add(str(err.value))
    assert len(messages) == 1, messages
    assert "NaN" in messages.pop()


def test_dsl_scores_far_outside_float32s_exponential_range():
    """Logits spread over +-260: pass 1's shared-shift terms overflow for some rows and columns and underflow
    for others, which are then summed again alone; the ranks are still the reference's."""
    s, bank_t2v, bank_v2t, text_video = duplicated_data(5)
    s[3] += 250.0  # a caption far above the rest (its terms overflow against the first tile's shift)
    s[:, 5] -= 200.0  # a video far below (its terms underflow)
    s[20] -= 260.0
    assert_all_paths_match_the_reference(s, bank_t2v, bank_v2t, text_video, modes=("dsl",))
