"""The CAMoE head: a mixture of video experts, each aligned with its own text stream, fused by one gate.

The paper (Cheng et al. 2021) released no code for the head; this is our reading of it.
Frozen CLIP gives frame embeddings X [T, D] for a video and, for a caption, its sentence embedding s and
the embeddings of its parsed action, entity and scene phrases p_a, p_e, p_s (zero where a caption has no
such phrase; ``phrase_mask`` says which exist).

Video experts. Every expert starts from the masked mean of the frames, m (zero-shot CLIP's video), and
adds a learned residual whose last layer starts at zero, so an untrained head *is* meanP:

    v_k = normalize(m + r_k(X)),   r_k = 0 at the start (its output layer O_k is zero)
    r_global = O mean_t Transformer(X + P)_t                     order-aware context over the whole clip
    r_action = O mean_t Transformer(X[1:] + (X[1:] - X[:-1]) + P)_t   frame changes, in order: what moves how
    r_entity = O sum_t a_t MLP(X_t),  a = softmax_t(w . tanh(U X_t))  attention over frames: who is there
    r_scene  = O MLP([mean_t X_t, max_t X_t])                    pooled static context: where it happens

Why zero output layers and not a zero scale (ReZero's alpha * r): a scalar that starts at zero moves about
one learning rate per Adam step, so after the few hundred steps of a small dataset the experts had barely
switched on and retrieval was worse (docs/camoe.md has the figures). A zero matrix gets a full
gradient at once, and the head still starts at zero-shot meanP exactly.

Text streams. Each expert reads the sentence s through its own linear map S_k (seqTransf's text projection,
one per expert), and the phrase experts add their phrase p_k through another, P_k:

    t_global = normalize(S_global s),   t_k = normalize(S_k s + P_k p_k)   (S_k = I, P_k = 0 at the start)

A caption without a phrase for stream k falls back to the sentence (t_k = normalize(S_k s)); with
``missing="mask"`` the expert is instead dropped from that caption's gate.

Gate and score. One gate from the sentence weights the experts, g = softmax(G s + c) (G = 0, c = 0 at the
start: uniform), and the score is the gate-weighted sum of per-expert cosines times the logit scale:

    score(t, v) = scale * sum_k g_k(s) * <t_k, v_k>

At the start every t_k = normalize(s) and every v_k = normalize(m), so the score is exactly zero-shot
meanP's, whatever the gate: training can only move from zero-shot CLIP. ``gate=False`` fixes g uniform
(the "no gate" ablation).

Loss. The contrastive loss (DSL by default) on the fused scores, plus ``expert_loss_weight`` times the
mean of the same loss on each expert's own similarity matrix (per-stream alignment).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vtr.train.layers import Block, RetrievalHead, identity_, masked_mean, temporal_transformer, zero_

EXPERTS = ("global", "action", "entity", "scene")
PHRASE_STREAMS = ("action", "entity", "scene")  # order of the cache's phrase embeddings [M, 3, D]


class TemporalExpert(nn.Module):
    """Transformer over time with positional embeddings; with ``changes`` it reads frame differences too."""

    def __init__(self, dim: int, max_frames: int, layers: int, heads: int, dropout: float, changes: bool):
        super().__init__()
        self.changes = changes
        self.pos = nn.Parameter(torch.zeros(max_frames, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.out = zero_(nn.Linear(dim, dim))

    def forward(self, x, mask):
        if self.changes:
            if x.shape[1] < 2:
                return torch.zeros_like(x[:, 0])
            x, mask = x[:, 1:] + (x[:, 1:] - x[:, :-1]), mask[:, 1:] & mask[:, :-1]
        return self.out(masked_mean(temporal_transformer(x, mask, self.pos, self.blocks), mask))


class EntityExpert(nn.Module):
    """Frame-wise MLP, pooled with attention over the frames."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), zero_(nn.Linear(dim, dim)))
        # No bias on the last layer: a softmax over frames ignores a shift, so it would only learn noise.
        self.score = nn.Sequential(nn.Linear(dim, dim // 4), nn.Tanh(), nn.Linear(dim // 4, 1, bias=False))

    def forward(self, x, mask):
        logits = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # a video with no frame: all zero
        return (weights.unsqueeze(-1) * self.mlp(x)).sum(1)


class SceneExpert(nn.Module):
    """An MLP over the pooled static context (mean and max over the frames)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout), zero_(nn.Linear(dim, dim)))

    def forward(self, x, mask):
        peak = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1).nan_to_num(0.0, neginf=0.0)
        return self.mlp(torch.cat([masked_mean(x, mask), peak], dim=-1))


class CAMoE(RetrievalHead):
    """The CAMoE head (see the module docstring for every formula)."""

    name = "camoe"

    def __init__(self, dim: int, max_frames: int, experts=EXPERTS, gate: bool = True, layers: int = 1,
                 heads: int = 8, dropout: float = 0.1, missing: str = "sentence",
                 expert_loss_weight: float = 0.5, learn_scale: bool = False):
        super().__init__(dim, learn_scale=learn_scale)
        experts = tuple(experts.split(",")) if isinstance(experts, str) else tuple(experts)
        unknown = [e for e in experts if e not in EXPERTS]
        if unknown or not experts:
            raise ValueError(f"camoe: unknown experts {unknown}; choose from {', '.join(EXPERTS)}")
        if missing not in ("sentence", "mask"):
            raise ValueError(f"camoe: missing must be 'sentence' or 'mask', not {missing!r}")
        if dim % heads:
            raise ValueError(f"camoe: dim {dim} is not divisible by heads {heads}")
        self.experts = [e for e in EXPERTS if e in experts]  # canonical order
        self.use_gate, self.missing, self.expert_loss_weight = gate, missing, expert_loss_weight
        build = {
            "global": lambda: TemporalExpert(dim, max_frames, layers, heads, dropout, changes=False),
            "action": lambda: TemporalExpert(dim, max_frames, layers, heads, dropout, changes=True),
            "entity": lambda: EntityExpert(dim, dropout),
            "scene": lambda: SceneExpert(dim, dropout),
        }
        self.video = nn.ModuleDict({e: build[e]() for e in self.experts})
        streams = [e for e in self.experts if e != "global"]
        self.sentence_proj = nn.ModuleDict({e: identity_(nn.Linear(dim, dim)) for e in self.experts})  # S_k
        self.phrase_proj = nn.ModuleDict({e: zero_(nn.Linear(dim, dim)) for e in streams})  # P_k
        self.gate = zero_(nn.Linear(dim, len(self.experts)))
        if not gate:
            self.gate.requires_grad_(False)

    def encode_video(self, frames, mask):
        m = masked_mean(frames, mask)
        v = [m + self.video[e](frames, mask) for e in self.experts]
        return F.normalize(torch.stack(v, dim=1), dim=-1)

    def encode_text(self, text):
        s = text["sentence"]
        streams = [e for e in self.experts if e != "global"]
        if streams and "phrases" not in text:
            raise ValueError("camoe needs phrase embeddings; this cache has none (re-extract it with this vtr)")
        t, present = [], []
        for e in self.experts:
            s_e = self.sentence_proj[e](s)
            if e == "global":
                t.append(s_e)
                present.append(torch.ones_like(s[:, 0], dtype=torch.bool))
                continue
            k = PHRASE_STREAMS.index(e)
            has = text["phrase_mask"][:, k]
            residual = self.phrase_proj[e](text["phrases"][:, k])
            t.append(s_e + residual * has.unsqueeze(-1).to(s.dtype))  # no phrase: the sentence alone
            present.append(has if self.missing == "mask" else torch.ones_like(has))
        logits = self.gate(s) if self.use_gate else torch.zeros(s.shape[0], len(self.experts), device=s.device)
        logits = logits.masked_fill(~torch.stack(present, dim=1), float("-inf"))
        return F.normalize(torch.stack(t, dim=1), dim=-1), torch.softmax(logits, dim=-1)

    def pair_loss(self, t, gate, v, loss_fn):
        """Fused loss plus the mean per-expert alignment loss (each through ``loss_fn``, DSL by default)."""
        per_expert = self.scale * torch.einsum("ted,ved->tve", t, v)
        loss = loss_fn((per_expert * gate[:, None, :]).sum(-1))
        if self.expert_loss_weight and len(self.experts) > 1:
            aligned = torch.stack([loss_fn(per_expert[..., k]) for k in range(len(self.experts))]).mean()
            loss = loss + self.expert_loss_weight * aligned
        return loss
