"""InfoNCE and the Dual Softmax Loss against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vtr.train.losses import LOSSES, dsl_loss, dual_softmax, get_loss, info_nce

S2 = [[2.0, 0.0], [1.0, 3.0]]  # rows = texts, columns = videos; the diagonal pairs match


def ce(row, target):
    """Cross-entropy of one row of logits: -log(exp(row[target]) / sum(exp(row)))."""
    return -row[target] + math.log(sum(math.exp(x) for x in row))


def test_info_nce_2x2():
    # T2V rows: [2, 0] -> log(1 + e^-2); [1, 3] -> log(1 + e^-2).
    # V2T columns: [2, 1] -> log(1 + e^-1); [0, 3] -> log(1 + e^-3).
    t2v = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-2))) / 2
    v2t = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-3))) / 2
    assert info_nce(torch.tensor(S2)).item() == pytest.approx((t2v + v2t) / 2, rel=1e-6)


def test_dual_softmax_2x2():
    # Column 0 is [2, 1]: prior softmax = [e^2, e^1] / (e^2 + e^1); column 1 is [0, 3]: [1, e^3] / (1 + e^3).
    # S' = S * prior * 2 (len(S) = 2).
    p00, p10 = math.exp(2) / (math.exp(2) + math.exp(1)), math.exp(1) / (math.exp(2) + math.exp(1))
    p01, p11 = 1 / (1 + math.exp(3)), math.exp(3) / (1 + math.exp(3))
    expected = [[2 * p00 * 2, 0 * p01 * 2], [1 * p10 * 2, 3 * p11 * 2]]
    got = dual_softmax(torch.tensor(S2), temperature=1.0)
    assert torch.allclose(got, torch.tensor(expected), rtol=1e-6, atol=0)
    # Temperature 2 halves the logits inside the softmax only: column 0 prior = [e^1, e^0.5] / (e^1 + e^0.5).
    q00 = math.exp(1) / (math.exp(1) + math.exp(0.5))
    assert dual_softmax(torch.tensor(S2), 2.0)[0, 0].item() == pytest.approx(2 * q00 * 2, rel=1e-6)


def test_dsl_loss_3x3():
    S = np.array([[4.0, 1.0, 0.5], [2.0, 3.0, 1.0], [0.0, 2.5, 2.0]])
    temp = 2.0
    n = len(S)

    def reweight(M):
        # M'[i, j] = M[i, j] * n * exp(M[i, j] / temp) / sum_k exp(M[k, j] / temp)  (prior over dim 0)
        out = np.empty_like(M)
        for i in range(n):
            for j in range(n):
                col = sum(math.exp(M[k, j] / temp) for k in range(n))
                out[i, j] = M[i, j] * n * math.exp(M[i, j] / temp) / col
        return out

    t2v = np.mean([ce(list(reweight(S)[i]), i) for i in range(n)])
    v2t = np.mean([ce(list(reweight(S.T)[i]), i) for i in range(n)])
    got = dsl_loss(torch.tensor(S), temperature=temp).item()
    assert got == pytest.approx((t2v + v2t) / 2, rel=1e-6)
    # The prior changes the loss: DSL at this temperature is not InfoNCE.
    assert abs(got - info_nce(torch.tensor(S)).item()) > 1e-2


def test_dsl_with_huge_temperature_is_info_nce():
    # temperature -> inf makes the prior uniform (1/n), which the factor n cancels: S' = S.
    S = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    assert dsl_loss(S, temperature=1e12).item() == pytest.approx(info_nce(S).item(), rel=1e-9)


def test_losses_are_symmetric_and_lookup():
    S = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert dsl_loss(S.T, 0.5).item() == pytest.approx(dsl_loss(S, 0.5).item())
    assert info_nce(S.T).item() == pytest.approx(info_nce(S).item())
    assert get_loss("DSL") is dsl_loss and get_loss("infonce") is info_nce and set(LOSSES) == {"dsl", "infonce"}
    with pytest.raises(ValueError, match="known losses: infonce, dsl"):
        get_loss("triplet")
