"""Frozen CLIP: build it (OpenAI name, local checkpoint, or a seeded random model) and encode with it.
`vtr.extract.clip_loader.load_clip` is the entry point for every ``--clip`` spec.

The ways to name a model (``--clip``):

- an OpenAI name (``ViT-B/32``, ``ViT-B/16``, ``RN50``, ...): the weights file in the clip package's cache
  folder (``~/.cache/clip``, or ``--clip-cache``), checked against the SHA256 in OpenAI's URL; a missing
  one is downloaded there first, as ``clip.load`` does (`vtr.extract.weights`), unless downloads are off
  (``--offline``, ``VTR_OFFLINE=1``): then a `ClipWeightsMissing` error says where to put it.
- a path to a checkpoint: an OpenAI JIT archive or state dict (as ``clip.load`` takes), a safetensors state
  dict, or a dict ``{"config": {CLIP(...) keyword arguments}, "state_dict": ...}`` for custom sizes, whose
  head counts ``clip.model.build_model`` would otherwise re-infer wrongly as width // 64. Each is read as
  plain data (`vtr.core.safe_load`): a file that holds Python objects is refused, never unpickled.
- ``open_clip:ARCH:PRETRAINED`` / ``random:open_clip:ARCH[:SEED]``: an open_clip backbone (the optional
  extra ``vtr[open_clip]``), loaded by `vtr.extract.open_clip_encoder`; see docs/backbones.md.
- ``random:tiny`` / ``random:ViT-B/32`` (optionally ``random:tiny:SEED``): randomly initialised weights of
  that shape, for offline tests and the demo. Its embeddings carry information about the pixels and the
  tokens, but the two towers share no embedding space: zero-shot retrieval with it is at chance, and no
  number made with it says anything about CLIP on real data. Caches and reports label it.

Precision (``--precision``, `PRECISIONS`): ``auto`` is fp16 on a GPU (as OpenAI's CLIP runs there), bf16
on a CPU with native bfloat16 instructions (autocast over fp32 weights for the image tower; captions stay fp32, exact; docs/performance.md has the measured speed and
error), and on other x86 CPUs with AVX2 int8
for the image tower if it passes a quality check on the first frames, else fp32 (`vtr.extract.precision`).
``fp32`` is the model's plain forward.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# ClipWeightsMissing is also imported from here by callers.
from vtr.extract.weights import OPENAI_CLIP_URLS, ClipWeightsMissing, url_sha256  # noqa: F401
from vtr.core.safe_load import LoadError, is_torchscript, load_safetensors, load_torch, load_torchscript_state
from vtr.extract.precision import (describe_gate, encode_first_frames, int8_available, prepare_int8,
                                   quantize_image_tower)

# CLIP's image normalisation (OpenAI's preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# CLIP(...) keyword arguments of the random architectures.
RANDOM_ARCHS = {
    # Small enough for the demo and the tests on 2 CPU cores. Width 256 rather than 128: with 128 the
    # random features kept too little of the shapes' colour and form for the demo's head to learn from
    # (synthetic demo, test R@10 56% at width 128 vs 80% at 256).
    "tiny": dict(embed_dim=256, image_resolution=64, vision_layers=2, vision_width=256, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=256, transformer_heads=2,
                 transformer_layers=2),
    # The shapes of OpenAI's ViT-B/32, ViT-B/16 and ViT-L/14, for benchmarks (the CLIP paper, table 20).
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
                     transformer_heads=8, transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=512,
                     transformer_heads=8, transformer_layers=12),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, context_length=77, vocab_size=49408, transformer_width=768,
                     transformer_heads=12, transformer_layers=12),
}


# Precisions CLIP can run in (``--precision``). "auto": fp16 on a GPU, bf16 on a CPU with native bfloat16
# instructions, fp32 otherwise. bf16 runs the fp32 weights under torch.autocast (matrix products in
# bfloat16, accumulation and normalisation in float32); fp16 converts the weights as OpenAI's CLIP does on
# a GPU (`_finish`). Either way embeddings come out as float32 and are stored as float16.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# x86 /proc/cpuinfo flags of native bfloat16 matrix instructions (AVX512-BF16, AMX). Without them oneDNN
# emulates bf16, which is no faster than fp32; other CPUs (ARM) are not measured here, so they get fp32.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux x86); empty where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True only when both the CPU (its flags) and this torch build (oneDNN with bf16) do bfloat16 natively.
    Unsure (no /proc/cpuinfo, no oneDNN, an unknown torch) means False: fp32 is never wrong, only slower."""
    if not any(flag in cpu_flags() for flag in _BF16_FLAGS):
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else True
    except Exception:  # noqa: BLE001 - a torch without these probes: be conservative
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp16 on CUDA, bf16 on a CPU with native bfloat16 (`cpu_has_native_bf16`), else fp32;
    an explicit choice is checked against the device. Raises ValueError for an unknown or unusable one."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: unknown; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        if device.type != "cpu" or cpu_has_native_bf16():
            return "bf16" if device.type == "cpu" else "fp32"
        # int8 or fp32, decided on the first frames encoded (ClipEncoder.encode_image): "auto" until then
        return "auto" if int8_available(cpu_flags()) else "fp32"
    if precision == "int8" and not (device.type == "cpu" and int8_available(cpu_flags())):
        raise ValueError(f"--precision int8 runs on x86 CPUs with AVX2 (torch's fbgemm engine); not on {device} "
                         f"here: use fp32")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16 runs CLIP's weights in float16, which only a GPU does fast; on "
                         f"{device} use bf16 (fast where the CPU has bfloat16 instructions) or fp32")
    return precision


def _import_clip():
    import warnings

    with warnings.catch_warnings():  # clip imports pkg_resources, which warns on every import
        warnings.simplefilter("ignore")
        import clip
        import clip.model
    return clip


@dataclass
class ClipEncoder:
    """A frozen CLIP and what a cache must record about it."""

    model: torch.nn.Module
    name: str  # as the user gave it
    sha256: str  # of the weights file, or of the random model's state dict
    is_random: bool
    device: torch.device
    precision: str = "fp32"  # resolved: fp32, bf16, fp16 or int8, or auto until the first frames (PRECISIONS)
    gate = None  # auto's int8 check, once made (vtr.extract.precision.encode_first_frames): what it measured
    # How ffmpeg fits frames to the model (vtr.extract.decode): OpenAI's CLIP resizes the short side
    # (bicubic) and crops the centre; open_clip models take theirs from their own config.
    resize_mode = "shortest"
    interpolation = "bicubic"
    image_mean, image_std = CLIP_MEAN, CLIP_STD

    def extra_settings(self) -> dict:
        """Cache settings beyond the common ones (vtr.extract.stage.cache_settings): none for OpenAI's CLIP,
        so its caches stay as they were; open_clip models add their architecture, weights and preprocessing."""
        return {}

    @property
    def resolution(self) -> int:
        return int(self.model.visual.input_resolution)

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    def _normaliser(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(255 * mean, 1 / (255 * std)) in float32 on the model's device, made once: uint8 pixels then
        need one subtraction and one multiplication, both in place."""
        if getattr(self, "_norm", None) is None:
            mean = torch.tensor(self.image_mean, dtype=torch.float64).view(1, 3, 1, 1) * 255
            scale = 1.0 / (torch.tensor(self.image_std, dtype=torch.float64).view(1, 3, 1, 1) * 255)
            self._norm = (mean.to(self.device, torch.float32), scale.to(self.device, torch.float32))
        return self._norm

    def _autocast(self):
        """bf16: torch.autocast around the image tower's forward (fp32 weights, bfloat16 matrix products);
        fp32 and fp16 need nothing (the weights are already in that dtype).

        Measured with random:ViT-B/32 on 2 AVX512-BF16 cores (under load): images 1.8-2.1x faster, min
        cosine to fp32 0.99994. The text tower stays in fp32: it would gain only 1.4-1.7x on a stage that
        is already cheap, and in bf16 a caption's embedding would depend on the padding of its batch (up to
        0.016 apart), where in fp32 it is exactly the 77-token embedding whatever the batch.
        """
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's image tower at this encoder's precision: normalised [B, 3, R, R] (on the device, in
        `dtype`) -> float32 embeddings [B, D] on the device."""
        # On the CPU, batches run in slices of CPU_IMAGE_SLICE: the activations of 256 frames (80 MB for one
        # ViT-B/32 MLP) overflow the caches, and 64 at a time was 4-10% faster per frame on 2 cores.
        if self.precision == "auto":  # the first frames: int8 if it passes the quality check, else fp32
            return encode_first_frames(self, x)
        step = CPU_IMAGE_SLICE if self.device.type == "cpu" else len(x)
        with self._autocast():
            if len(x) <= step:
                return self.model.encode_image(x).float()
            return torch.cat([self.model.encode_image(x[i : i + step]).float() for i in range(0, len(x), step)])

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames [B, R, R, 3] (already resized and cropped) -> float16 embeddings [B, D].

        The frames go to the device as uint8 (a quarter of the bytes of float32), from pinned memory
        without blocking on a GPU; conversion and CLIP's normalisation happen there, once per batch.
        """
        x = torch.from_numpy(np.ascontiguousarray(frames))  # no copy
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        mean, scale = self._normaliser()
        # normalised in float32 (exact enough for any model dtype), then cast: a no-op on the CPU
        x = x.permute(0, 3, 1, 2).float().sub_(mean).mul_(scale).to(self.dtype)
        return self.encode_image(x).to("cpu", torch.float16).numpy()

    def tokenize(self, texts: list[str], max_tokens: int = 77) -> torch.Tensor:
        """CLIP's BPE tokens [N, 77] (zero-padded), each text cut to ``max_tokens`` tokens, start and end
        included, as CLIP4Clip's ``max_words`` does: a longer text keeps its first ``max_tokens - 2`` BPE
        tokens and gets the end token after them."""
        clip = _import_clip()
        tokens = clip.tokenize(texts, truncate=True)
        if max_tokens < tokens.shape[1]:
            eot = clip.clip._tokenizer.encoder["<|endoftext|>"]
            long = tokens[:, max_tokens - 1] != 0
            tokens[:, max_tokens:] = 0
            tokens[long, max_tokens - 1] = eot
        return tokens

    @staticmethod
    def token_lengths(tokens: torch.Tensor) -> torch.Tensor:
        """Each row's length up to and including its end-of-text token, the largest id in a row [B]."""
        return tokens.argmax(dim=-1) + 1

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Tokens [B, L] from `tokenize` -> float16 embeddings [B, D], read at the batch's real length.

        CLIP's text attention is causal and the embedding is read at the end-of-text token (the largest
        id in a row), so dropping the padding after the longest row's end token changes nothing, and costs
        far less than CLIP's full 77-token context.
        """
        length = int(self.token_lengths(tokens).max())
        tokens = tokens[:, :length].to(self.device)
        emb = self.model.encode_text(tokens)  # fp32 under bf16 too: see _autocast
        return emb.to("cpu", torch.float16).numpy()

    def encode_texts(self, texts: list[str], max_tokens: int = 77) -> np.ndarray:
        """Captions -> float16 embeddings [B, D]: `tokenize` then `encode_tokens` (one batch)."""
        return self.encode_tokens(self.tokenize(texts, max_tokens))

    def describe(self) -> str:
        label = " (random weights: not meaningful for real retrieval)" if self.is_random else ""
        how = " (int8 or fp32, checked on the first frames)" if self.precision == "auto" else (
            f" ({describe_gate(self.gate)})" if self.gate else "")
        return f"CLIP {self.name}{label}, {self.resolution}px, {self.dim}-d, on {self.device} in {self.precision}{how}"


def _state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# Frames per image-tower call on the CPU (see ClipEncoder.encode_image).
CPU_IMAGE_SLICE = 64
# CLIP's QuickGELU is x * sigmoid(1.702 x) = silu(1.702 x) / 1.702.
QUICK_GELU = 1.702


@torch.no_grad()
def fuse_quick_gelu(transformer: torch.nn.Module, quick_gelu_types: tuple[type, ...] | None = None) -> int:
    """Rewrite each MLP ``c_proj(QuickGELU(c_fc(x)))`` of ``transformer`` as ``c_proj'(silu(c_fc'(x)))``, with
    1.702 folded into c_fc and 1 / 1.702 into c_proj: the same function, up to rounding, with one SiLU kernel
    where QuickGELU runs three elementwise ops over the widest activation. Returns the MLPs rewritten.

    On the image tower of random:ViT-B/32 in bf16 (2 cores, batch 64), 30.6 -> 26.3 ms per image, minimum
    cosine 0.99994 to the unfused output (bf16's own rounding), in a one-off timing; bench/extract.py
    measures whole extractions. ``quick_gelu_types``: the activation classes that are QuickGELU (default
    OpenAI clip's; open_clip has its own); an MLP with any other activation (GELU) is left as it is.
    """
    types = quick_gelu_types or (_import_clip().model.QuickGELU,)
    n = 0
    for block in getattr(transformer, "resblocks", []):
        mlp = getattr(block, "mlp", None)
        if mlp is None or not isinstance(getattr(mlp, "gelu", None), types):
            continue
        mlp.c_fc.weight.mul_(QUICK_GELU)
        mlp.c_fc.bias.mul_(QUICK_GELU)
        mlp.c_proj.weight.div_(QUICK_GELU)
        mlp.gelu = torch.nn.SiLU()
        n += 1
    return n


def _finish(model: torch.nn.Module, device: torch.device, precision: str,
            quick_gelu_types: tuple[type, ...] | None = None, to_fp16=None) -> torch.nn.Module:
    """The model on ``device`` for inference in ``precision``. The image tower's MLPs are fused
    (`fuse_quick_gelu`); the text tower is left as it is, so captions stay exactly CLIP's.

    fp16 casts the weights with ``to_fp16`` (default: OpenAI's ``clip.model.convert_weights``, as
    ``clip.load`` does on a GPU: matrices in float16; LayerNorms and embeddings stay float32, and CLIP's
    LayerNorm computes in float32, so ``model.half()`` would make it fail)."""
    fuse_quick_gelu(getattr(model.visual, "transformer", None), quick_gelu_types)
    model = model.to(device).eval().float()  # bf16 keeps fp32 weights (autocast)
    if precision == "fp16":
        (to_fp16 or _import_clip().model.convert_weights)(model)
    if precision == "int8":
        model.visual = quantize_image_tower(model.visual)
    elif precision == "auto":  # int8 made now, kept aside until the first frames decide (vtr.extract.precision)
        prepare_int8(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_random(arch: str, seed: int = 0):
    """A CLIP of a known shape with CLIP's own random initialisation, seeded."""
    clip = _import_clip()
    if arch not in RANDOM_ARCHS:
        raise ValueError(f"random:{arch}: unknown shape; choose one of {', '.join(RANDOM_ARCHS)}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = clip.model.CLIP(**RANDOM_ARCHS[arch])
    finally:
        torch.random.set_rng_state(gen_state)
    return model


# TorchScript archives run their own (TorchScript) code when loaded, so only OpenAI's published files, known
# by their SHA256, are read that way; any other model must come as a state dict or safetensors file.
TRUSTED_TORCHSCRIPT = frozenset(url_sha256(url) for url in OPENAI_CLIP_URLS.values())


def trusted_torchscript_state(path: Path, sha256: str) -> dict:
    """The weights of a TorchScript archive of SHA256 ``sha256`` if it is one of OpenAI's published files;
    `LoadError` otherwise (its code never runs)."""
    if sha256 not in TRUSTED_TORCHSCRIPT:
        raise LoadError(f"{path}: refused: a TorchScript archive runs its own code when loaded, and this one "
                        f"is not one of OpenAI's published CLIP files (SHA256 {sha256[:16]}...); save its "
                        "weights as a state dict or a safetensors file and pass that")
    return load_torchscript_state(path)


def _load_checkpoint(path: Path, sha256: str):
    """A CLIP from a checkpoint file of SHA256 ``sha256``, read as plain data only (see the module doc), or
    one of OpenAI's published TorchScript files; `LoadError` otherwise."""
    clip = _import_clip()
    if is_torchscript(path):  # OpenAI's files: keep the weights, rebuild eager CLIP (clip.load(jit=False))
        obj = trusted_torchscript_state(path, sha256)
    elif path.suffix == ".safetensors":
        obj = load_safetensors(path)[0]
    else:
        obj = load_torch(path)
    try:
        if isinstance(obj, dict) and "config" in obj and "state_dict" in obj:
            model = clip.model.CLIP(**obj["config"])
            model.load_state_dict(obj["state_dict"])
            return model
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return clip.model.build_model(dict(obj))  # in fp16, as OpenAI's weights are; _finish casts
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        why = " ".join(str(e).split())[:200]
        raise LoadError(f"{path}: not a CLIP checkpoint ({type(e).__name__}: {why})") from None
    raise LoadError(f"{path}: not a CLIP checkpoint (expected a TorchScript archive, a state dict, or "
                    "{\"config\", \"state_dict\"})")
