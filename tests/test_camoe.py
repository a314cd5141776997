"""The CAMoE head: shapes, masking, starting exactly at zero-shot meanP, and what trains."""
from __future__ import annotations

import pytest
import torch

from vtr.train.camoe import CAMoE
from vtr.train.heads import MeanP, build_head
from vtr.train.losses import dsl_loss

B, T, D = 5, 6, 32


def batch(seed=0, no_scene_row=2):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, T, D, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False  # a short video
    text = {"sentence": torch.randn(B, D, generator=g), "phrases": torch.randn(B, 3, D, generator=g),
            "phrase_mask": torch.ones(B, 3, dtype=torch.bool)}
    text["phrase_mask"][no_scene_row, 2] = False  # a caption with no scene phrase
    text["phrases"][no_scene_row, 2] = 0.0
    return frames, mask, text


def perturb(head, seed=1):
    """Move every parameter off its initial value, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_shapes_and_gate():
    head = CAMoE(D, T, heads=4)
    frames, mask, text = batch()
    v = head.encode_video(frames, mask)
    t, gate = head.encode_text(text)
    assert v.shape == (B, 4, D) and t.shape == (B, 4, D) and gate.shape == (B, 4)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(B, 4))
    torch.testing.assert_close(gate.sum(-1), torch.ones(B))
    assert head(frames, mask, text).shape == (B, B)
    assert build_head("CAMoE", D, T, heads=4, experts="global,scene").experts == ["global", "scene"]
    with pytest.raises(ValueError, match="unknown experts"):
        CAMoE(D, T, heads=4, experts=("global", "audio"))


def test_untrained_head_is_zero_shot_meanp():
    frames, mask, text = batch()
    for options in ({}, {"gate": False}, {"missing": "mask"}, {"experts": ("global", "entity")}):
        head = CAMoE(D, T, heads=4, **options).eval()
        torch.testing.assert_close(head(frames, mask, text), MeanP(D)(frames, mask, text), atol=1e-5, rtol=0)


def test_missing_scene_phrase():
    frames, mask, text = batch()
    head = CAMoE(D, T, heads=4).eval()
    perturb(head)
    t, gate = head.encode_text(text)
    with torch.no_grad():
        s = torch.nn.functional.normalize(head.sentence_proj["scene"](text["sentence"]), dim=-1)
    torch.testing.assert_close(t[2, 3], s[2])  # falls back to the (scene expert's view of the) sentence
    assert not torch.allclose(t[0, 3], s[0])  # a caption with a scene phrase uses it
    assert gate[2, 3] > 0

    masked = CAMoE(D, T, heads=4, missing="mask").eval()
    perturb(masked)
    _, gate = masked.encode_text(text)
    assert gate[2, 3] == 0 and gate[0, 3] > 0
    torch.testing.assert_close(gate.sum(-1), torch.ones(B))


def test_padding_frames_change_nothing():
    head = CAMoE(D, T + 3, heads=4).eval()
    perturb(head)
    frames, mask, text = batch()
    padded = torch.cat([frames, 50 * torch.randn(B, 3, D)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(B, 3, dtype=torch.bool)], dim=1)
    padded[1, 4:6] = 99.0  # garbage where video 1 is already masked
    torch.testing.assert_close(head.encode_video(padded, padded_mask), head.encode_video(frames, mask),
                               atol=1e-5, rtol=1e-5)


def test_no_gate_is_uniform_and_frozen():
    head = CAMoE(D, T, heads=4, gate=False)
    _, gate = head.encode_text(batch()[2])
    torch.testing.assert_close(gate, torch.full((B, 4), 0.25))
    assert all(not p.requires_grad for p in head.gate.parameters())


def test_only_head_parameters_train():
    """The cached CLIP features are constants: a training step moves the head and nothing else."""
    head = CAMoE(D, T, heads=4)
    frames, mask, text = batch()
    before = (frames.clone(), {k: v.clone() for k, v in text.items()})
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # the zero output layers move first, then the layers behind them get gradients
        opt.zero_grad()
        loss = head.training_loss(frames, mask, text, dsl_loss)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert frames.grad is None and all(v.grad is None for v in text.values())
    torch.testing.assert_close(frames, before[0])
    for k in text:
        torch.testing.assert_close(text[k], before[1][k])
    named = dict(head.named_parameters())
    assert all(named[n].grad is not None and torch.isfinite(named[n].grad).all()
               for n in named if named[n].requires_grad)
    assert all(named[n].abs().sum() > 0 for n in named if n.endswith(".out.weight") or n.startswith("phrase_proj"))
    assert named["gate.weight"].grad.abs().sum() > 0


def test_needs_phrases():
    head = CAMoE(D, T, heads=4)
    frames, mask, text = batch()
    with pytest.raises(ValueError, match="phrase embeddings"):
        head.encode_text({"sentence": text["sentence"]})
