"""The heads: shapes, padding invariance, zero-shot start, the registry."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vtr.train.heads import MeanP, SeqTransf, build_head, count_parameters

D, T, B = 32, 6, 5


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, T, D, generator=g)
    mask = torch.arange(T)[None] < torch.tensor([6, 4, 1, 3, 5])[:, None]
    text = {"sentence": torch.randn(B, D, generator=g)}
    return frames, mask, text


def scrambled(head):
    """A head with every parameter random, so no zero initialisation hides a leak."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return head.eval()


@pytest.mark.parametrize("head", [MeanP(D), SeqTransf(D, T, layers=2, heads=4)])
def test_shapes_and_unit_norm(head):
    frames, mask, text = batch()
    v = head.encode_video(frames, mask)
    t, gate = head.encode_text(text)
    assert v.shape == (B, 1, D) and t.shape == (B, 1, D) and gate.shape == (B, 1)
    assert torch.allclose(v.norm(dim=-1), torch.ones(B, 1), atol=1e-5)
    assert torch.allclose(t.norm(dim=-1), torch.ones(B, 1), atol=1e-5)
    assert torch.equal(gate, torch.ones(B, 1))
    assert head(frames, mask, text).shape == (B, B)


@pytest.mark.parametrize("make", [lambda: MeanP(D), lambda: scrambled(SeqTransf(D, T + 3, heads=4))])
def test_padding_frames_change_nothing(make):
    head = make()
    frames, mask, _ = batch()
    garbage = torch.randn(B, 3, D) * 50
    padded = torch.cat([frames.masked_fill(~mask[..., None], 0.0), garbage], 1)
    padded[:, :T][~mask] = torch.randn(int((~mask).sum()), D) * 50  # garbage inside the padding too
    padded_mask = torch.cat([mask, torch.zeros(B, 3, dtype=torch.bool)], 1)
    assert torch.allclose(head.encode_video(padded, padded_mask), head.encode_video(frames, mask), atol=1e-5)


def test_meanp_is_normalised_masked_mean():
    frames, mask, text = batch()
    expected = torch.stack([F.normalize(frames[i, mask[i]].mean(0), dim=0) for i in range(B)])
    assert torch.allclose(MeanP(D).encode_video(frames, mask)[:, 0], expected, atol=1e-6)
    assert count_parameters(MeanP(D)) == 0


def test_seqtransf_starts_as_zero_shot_clip():
    head = SeqTransf(D, T, heads=4)
    assert torch.equal(head.text_proj.weight, torch.eye(D)) and not head.text_proj.bias.any()
    frames, mask, text = batch()
    for mode in (head.eval(), head.train()):  # dropout acts on zero outputs: same either way
        assert torch.allclose(mode(frames, mask, text), MeanP(D)(frames, mask, text), atol=1e-4)
    assert head.scale.item() == pytest.approx(100.0) and "log_scale" not in dict(head.named_parameters())
    assert "log_scale" in dict(SeqTransf(D, T, heads=4, learn_scale=True).named_parameters())


def test_seqtransf_uses_order_and_every_parameter_learns():
    head = scrambled(SeqTransf(D, T, heads=4))
    frames, mask, text = batch()
    full = torch.ones_like(mask)
    reversed_frames = frames.flip(1)
    assert not torch.allclose(head.encode_video(frames, full), head.encode_video(reversed_frames, full), atol=1e-3)
    head = SeqTransf(D, T, heads=4).train()
    torch.optim.SGD(head.parameters(), lr=0.1).zero_grad()
    head(frames, mask, text).logsumexp(1).sum().backward()
    # Zero-initialised output layers still receive gradient, so training can leave the identity.
    assert head.blocks[0].attn.out_proj.weight.grad.abs().sum() > 0
    assert head.blocks[0].mlp[2].weight.grad.abs().sum() > 0


def test_edge_cases():
    head = SeqTransf(D, T, heads=4).eval()
    frames, mask, _ = batch()
    mask[2] = False  # a video with no real frame: zeros, not NaN
    v = head.encode_video(frames, mask)
    assert not v.isnan().any() and not v[2].any()
    with pytest.raises(ValueError, match="built for 6 frames"):
        head.encode_video(torch.randn(1, T + 1, D), torch.ones(1, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="not divisible"):
        SeqTransf(D, T, heads=5)


def test_build_head():
    assert isinstance(build_head("MEANP", D, T), MeanP)
    head = build_head("seqtransf", D, T, layers=3, heads=4)
    assert isinstance(head, SeqTransf) and len(head.blocks) == 3 and head.name == "seqTransf"
    assert count_parameters(head) == sum(p.numel() for p in head.parameters()) > 0
    with pytest.raises(ValueError, match="known heads: meanP, seqTransf"):
        build_head("camoe2", D, T)
    with pytest.raises(ValueError, match="bad options for head 'seqTransf'"):
        build_head("seqTransf", D, T, depth=2)
