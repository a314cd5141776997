"""int8 for CLIP's image tower on CPUs without bfloat16, and the quality check that lets ``auto`` use it.

On a CPU without native bfloat16 (most cloud VMs: AVX2 only) fp32 was the only choice, and the image
tower is most of extraction's cost. ``int8`` runs its linear layers (attention projections and MLPs,
nearly all of its multiply-adds) as dynamically quantized int8 matrix products (torch's fbgemm/x86
engine, which runs on AVX2): weights quantized once per output channel, activations per batch.

int8's error depends on the weights: a trained model whose activations have outliers can lose more than
a random one. So ``auto`` never assumes it: on the first real frames an extraction encodes it runs the
fp32 tower and the int8 tower on a sample of them, and keeps int8 only if every sampled embedding is
within `INT8_MIN_COSINE` of fp32's; otherwise it stays fp32 (exact). `ClipEncoder.gate` keeps what was
measured, and the run records the precision used. The int8 tower is made when the model is loaded, so
the check itself costs one fp32 pass over `GATE_FRAMES` frames. The text tower is never touched: captions stay fp32.
"""
from __future__ import annotations

import copy
import time
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

# auto keeps int8 only if the cosine of every sampled frame's int8 embedding to its fp32 embedding is at
# least this. Storing an embedding in float16 (as every cache does) already moves it by about 1e-6 in
# cosine, bf16 autocast by about 1e-4; 0.998 lets int8's rounding through and refuses a model whose
# activations int8 cannot hold (docs/performance.md gives the figures measured).
INT8_MIN_COSINE = 0.998
# Frames the check encodes twice (fp32 and int8), spread evenly over the first batch (many videos).
GATE_FRAMES = 16
# x86 /proc/cpuinfo flag fbgemm's int8 kernels need; other CPUs (ARM) are not measured, so they get fp32.
_INT8_FLAG = "avx2"


def int8_available(cpu_flags: set[str]) -> bool:
    """True when this torch has its x86 quantized engine (fbgemm) and the CPU has AVX2, which it needs."""
    engines = set(torch.backends.quantized.supported_engines)
    return _INT8_FLAG in cpu_flags and bool(engines & {"x86", "fbgemm"})


class LinearSelfAttention(nn.Module):
    """`nn.MultiheadAttention` used as self-attention, with its projections as plain `nn.Linear` layers.

    nn.MultiheadAttention keeps its input projection as a bare weight, which dynamic quantization skips
    (a third of the image tower's multiply-adds); as Linear layers they are quantized like the MLPs. The
    same function in fp32 (scaled dot-product attention, the same scale and mask); CLIP calls it as it
    calls nn.MultiheadAttention: ``attn(x, x, x, need_weights=False, attn_mask=mask)[0]``.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        d = mha.embed_dim
        self.heads, self.batch_first = mha.num_heads, mha.batch_first
        # skip_init: no random initialisation of weights that are overwritten next
        self.in_proj = nn.utils.skip_init(nn.Linear, d, 3 * d, bias=mha.in_proj_bias is not None)
        self.out_proj = nn.utils.skip_init(nn.Linear, d, d, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                self.in_proj.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    @staticmethod
    def fits(mha: nn.Module) -> bool:
        """Only the plain form CLIP uses: one input projection, no extra key/value bias, no zero attention."""
        return (isinstance(mha, nn.MultiheadAttention) and mha._qkv_same_embed_dim and mha.bias_k is None
                and not mha.add_zero_attn)

    def forward(self, query, key, value, need_weights=False, attn_mask=None, key_padding_mask=None):
        if key is not query or value is not query or key_padding_mask is not None or need_weights:
            raise NotImplementedError("LinearSelfAttention does self-attention only, without weights or padding masks")
        x = query if self.batch_first else query.transpose(0, 1)  # [N, L, D]
        n, length, d = x.shape
        qkv = self.in_proj(x).view(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # nn.MultiheadAttention: True masks out; scaled_dot_product_attention: True keeps
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


@torch.no_grad()
def quantize_image_tower(visual: nn.Module) -> nn.Module:
    """An int8 copy of an fp32 image tower (``visual`` itself is left as it is): its self-attention layers
    rewritten as `LinearSelfAttention`, then every nn.Linear dynamically quantized to int8 (weights per
    output channel). Convolutions, layer norms and attention scores stay in fp32."""
    q = copy.deepcopy(visual).float().eval()
    for name, module in list(q.named_modules()):
        for child_name, child in list(module.named_children()):
            if LinearSelfAttention.fits(child):
                setattr(module, child_name, LinearSelfAttention(child))
    with warnings.catch_warnings():  # torch.ao's eager quantization warns that it is deprecated for torchao
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(
            q, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    for p in q.parameters():
        p.requires_grad_(False)
    return q


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict:
    """Minimum and mean cosine between matching rows of two embedding batches [B, D]."""
    cos = F.cosine_similarity(reference.float(), candidate.float(), dim=-1)
    return {"frames": len(cos), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def gate_indices(n_frames: int, n: int = GATE_FRAMES) -> torch.Tensor:
    """Up to ``n`` row numbers of a batch of ``n_frames``, spread evenly over it (a batch holds many
    videos, in order)."""
    return torch.linspace(0, n_frames - 1, min(n, n_frames)).round().long().unique()


# CLIP model -> the int8 copy of its image tower, made when an ``auto`` encoder is loaded (`prepare_int8`)
# and taken by its first frames (`encode_first_frames`).
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_int8(model: nn.Module) -> None:
    """Quantize ``model``'s image tower now, with the model's loading, for `encode_first_frames`."""
    _PREPARED[model] = quantize_image_tower(model.visual)


@torch.no_grad()
def encode_first_frames(encoder, x: torch.Tensor, min_cosine: float = INT8_MIN_COSINE) -> torch.Tensor:
    """``auto``'s check, on an encoder whose precision is still "auto" and its first normalised frames ``x``
    [B, 3, R, R]; returns their embeddings. The batch is encoded in int8, as an int8 encoder encodes it (the
    same bits), and a sample of it (`gate_indices`) in fp32 as well; if every sampled cosine is at least
    ``min_cosine`` the encoder keeps int8, else it goes back to fp32 for good and encodes the batch again.
    ``encoder.gate`` keeps what was measured (`agreement`, the threshold, the check's own seconds)."""
    t = time.perf_counter()
    model = encoder.model
    fp32_visual = model.visual
    rows = gate_indices(len(x))
    reference = model.encode_image(x[rows])
    int8_visual = _PREPARED.pop(model, None)
    model.visual = quantize_image_tower(fp32_visual) if int8_visual is None else int8_visual
    seconds = time.perf_counter() - t  # the check's own cost: the int8 batch below is the run's work
    encoder.precision = "int8"
    got = encoder.encode_image(x)
    encoder.gate = {**agreement(reference, got[rows]), "threshold": min_cosine, "candidate": "int8",
                    "seconds": round(seconds, 2)}
    if encoder.gate["min_cosine"] >= min_cosine:
        return got
    model.visual, encoder.precision = fp32_visual, "fp32"
    return encoder.encode_image(x)


def describe_gate(measured: dict | None) -> str:
    """One line on auto's check, for logs: what was compared, over how many frames, and the outcome."""
    if not measured:
        return ""
    return (f"int8 vs fp32 on {measured['frames']} frames: min cosine {measured['min_cosine']:.5f}, "
            f"mean {measured['mean_cosine']:.5f} (int8 needs >= {measured['threshold']}; checked in "
            f"{measured['seconds']} s)")


def precision_record(precision: str, measured: dict | None, frames_encoded: int) -> dict:
    """What a cache's sync record says of a run's image tower: its precision and, when auto checked int8,
    what the check measured. Nothing when the run encoded no frames (a captions-only run)."""
    if not frames_encoded:
        return {}
    return {"image_precision": precision, **({"int8_check": measured} if measured else {})}
