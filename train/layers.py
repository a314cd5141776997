"""What every head is built from: the head interface, masked pooling, the transformer block, the temporal
transformer, and the zero / identity initialisations that make an untrained head score as zero-shot CLIP.

Kept apart from ``heads`` (the registry) and ``camoe`` so both import it and neither imports the other.
"""
from __future__ import annotations

import math

import torch
from torch import nn

CLIP_LOGIT_SCALE = 100.0  # CLIP's trained temperature (exp(4.6052)); zero-shot scores use it


def use_model_logit_scale(head: RetrievalHead, attrs, trained: bool = False) -> RetrievalHead:
    """Give ``head`` the frozen backbone's logit scale where the cache records one (open_clip backbones,
    ``clip_logit_scale``); OpenAI CLIP caches record none and keep CLIP's 100, bit for bit. The clamp moves
    up with a larger scale, so SigLIP's is kept. ``trained``: the head comes from a run, whose own (possibly
    learned) scale stays; only the clamp is set. Returns ``head``."""
    scale = (attrs or {}).get("clip_logit_scale")
    if scale is None:
        return head
    head.max_scale = max(CLIP_LOGIT_SCALE, float(scale))
    if not trained:
        with torch.no_grad():
            head.log_scale.fill_(math.log(float(scale)))
    return head


class RetrievalHead(nn.Module):
    """Base class: subclasses implement ``encode_video`` and ``encode_text`` (see ``vtr.train.heads``)."""

    name = "head"

    def __init__(self, dim: int, logit_scale: float = CLIP_LOGIT_SCALE, learn_scale: bool = False):
        super().__init__()
        self.dim = dim
        self.max_scale = CLIP_LOGIT_SCALE  # the clamp; raised to a backbone's own larger scale (use_model_logit_scale)
        log_scale = torch.tensor(math.log(logit_scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        # Clamped as CLIP does, so a learned temperature cannot blow up the logits.
        return self.log_scale.exp().clamp(max=self.max_scale)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, text: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def similarity(self, t: torch.Tensor, gate: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        per_expert = torch.einsum("ted,ved->tve", t, v)
        return self.scale * (per_expert * gate[:, None, :]).sum(-1)

    def forward(self, frames, mask, text):
        t, gate = self.encode_text(text)
        return self.similarity(t, gate, self.encode_video(frames, mask))

    def training_loss(self, frames, mask, text, loss_fn) -> torch.Tensor:
        """The loss of one batch whose pairs sit on the diagonal."""
        t, gate = self.encode_text(text)
        return self.pair_loss(t, gate, self.encode_video(frames, mask), loss_fn)

    def pair_loss(self, t, gate, v, loss_fn) -> torch.Tensor:
        """The loss on encoded pairs (row i of ``t`` matches row i of ``v``); heads with extra terms override it.

        Kept apart from encoding so distributed training can gather every rank's embeddings first.
        """
        return loss_fn(self.similarity(t, gate, v))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``x`` [B, T, D] counting only positions where ``mask`` [B, T] is True."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def zero_(layer: nn.Linear) -> nn.Linear:
    """``layer`` with weight and bias set to zero: it outputs zero until trained (the last layer of a residual)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def identity_(layer: nn.Linear) -> nn.Linear:
    """``layer`` (square) set to the identity map: it passes its input through until trained."""
    with torch.no_grad():
        layer.weight.copy_(torch.eye(layer.in_features))
        layer.bias.zero_()
    return layer


class Block(nn.Module):
    """A pre-norm transformer block (as in CLIP): ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

    The two output projections start at zero, so a fresh block is the identity; the head then starts
    exactly at zero-shot CLIP and training moves it from there.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        zero_(self.attn.out_proj)
        zero_(self.mlp[2])

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def attention_padding(mask: torch.Tensor) -> torch.Tensor:
    """The key padding mask of frames ``mask`` [B, T] (True = real frame) for ``Block``.

    A row with no real frame would have every key masked, and a softmax over nothing but -inf is NaN;
    such a row attends to its padding instead. Whatever it computes is dropped by the masked pool.
    """
    return ~mask & mask.any(1, keepdim=True)


def temporal_transformer(x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
    """``blocks`` over time on ``x`` [B, T, D] plus the positional embedding ``pos`` [>= T, D]: [B, T, D].

    The temporal transformer of seqTransf and of CAMoE's global and action experts; padding frames are
    masked as attention keys, so they cannot change a real frame's output.
    """
    pad = attention_padding(mask)
    h = x + pos[: x.shape[1]]
    for block in blocks:
        h = block(h, pad)
    return h
