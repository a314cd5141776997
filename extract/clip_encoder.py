"""Frozen CLIP: load it (OpenAI name, local checkpoint, or a seeded random model) and encode with it.

Three ways to name a model (``--clip``):

- an OpenAI name (``ViT-B/32``, ``ViT-B/16``, ``RN50``, ...): the weights file in the clip package's cache
  folder (``~/.cache/clip``, or ``--clip-cache``), checked against the SHA256 in OpenAI's URL. vtr never
  downloads: a missing file is a `ClipWeightsMissing` error that says where to put it.
- a path to a checkpoint: an OpenAI JIT archive or state dict (as ``clip.load`` takes), or a dict
  ``{"config": {CLIP(...) keyword arguments}, "state_dict": ...}`` for custom sizes, whose head counts
  ``clip.model.build_model`` would otherwise re-infer wrongly as width // 64.
- ``random:tiny`` / ``random:ViT-B/32`` (optionally ``random:tiny:SEED``): randomly initialised weights of
  that shape, for offline tests and the demo. Its embeddings carry information about the pixels and the
  tokens, but the two towers share no embedding space: zero-shot retrieval with it is at chance, and no
  number made with it says anything about CLIP on real data. Caches and reports label it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vtr.device import resolve_device

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
    # ViT-B/32's shape, for benchmarks.
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
                     transformer_heads=8, transformer_layers=12),
}


class ClipWeightsMissing(RuntimeError):
    """The named CLIP weights are not on this machine (and vtr does not download)."""


def _import_clip():
    import warnings

    with warnings.catch_warnings():  # clip imports pkg_resources, which warns on every import
        warnings.simplefilter("ignore")
        import clip
        import clip.model
    return clip


def default_clip_cache() -> Path:
    return Path(os.environ.get("VTR_CLIP_CACHE", Path.home() / ".cache" / "clip"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ClipEncoder:
    """A frozen CLIP and what a cache must record about it."""

    model: torch.nn.Module
    name: str  # as the user gave it
    sha256: str  # of the weights file, or of the random model's state dict
    is_random: bool
    device: torch.device

    @property
    def resolution(self) -> int:
        return int(self.model.visual.input_resolution)

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames [B, R, R, 3] (already resized and cropped) -> float16 embeddings [B, D]."""
        x = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).to(self.dtype).div_(255.0)
        mean = torch.tensor(CLIP_MEAN, dtype=self.dtype, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=self.dtype, device=self.device).view(1, 3, 1, 1)
        return self.model.encode_image((x - mean) / std).float().cpu().numpy().astype(np.float16)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], max_tokens: int = 77) -> np.ndarray:
        """Captions -> float16 embeddings [B, D], read at the batch's real token length.

        ``max_tokens`` counts the start and end tokens, as CLIP4Clip's ``max_words`` does: a longer caption
        keeps its first ``max_tokens - 2`` words' tokens and gets the end token after them.
        CLIP's text attention is causal and the embedding is read at the end-of-text token, so cutting
        the 77-token context to the longest caption in the batch gives the same embeddings, much faster.
        """
        clip = _import_clip()
        tokens = clip.tokenize(texts, truncate=True)
        eot = tokens.max()  # end-of-text has the largest token id
        if max_tokens < tokens.shape[1]:
            long = tokens[:, max_tokens - 1] != 0
            tokens = tokens[:, :max_tokens].clone()
            tokens[long, max_tokens - 1] = eot
        length = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :length].to(self.device)
        return self.model.encode_text(tokens).float().cpu().numpy().astype(np.float16)

    def describe(self) -> str:
        label = " (random weights: not meaningful for real retrieval)" if self.is_random else ""
        return f"CLIP {self.name}{label}, {self.resolution}px, {self.dim}-d, on {self.device}"


def _state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _finish(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device).eval()
    model = model.half() if device.type == "cuda" else model.float()  # fp16 on GPU, fp32 on CPU
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


def _load_checkpoint(path: Path):
    clip = _import_clip()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        obj = None  # maybe a JIT archive: clip.load reads those
    if isinstance(obj, dict) and "config" in obj and "state_dict" in obj:
        model = clip.model.CLIP(**obj["config"])
        model.load_state_dict(obj["state_dict"])
        return model
    try:
        model, _ = clip.load(str(path), device="cpu", jit=False)
    except Exception as e:
        raise RuntimeError(f"{path}: not a CLIP checkpoint clip.load can read ({e})") from e
    return model


def load_clip(spec: str, device: str = "auto", download_root: str | Path | None = None) -> ClipEncoder:
    """Load a frozen CLIP by OpenAI name, checkpoint path or ``random:SHAPE[:SEED]`` (see the module doc)."""
    clip = _import_clip()
    dev = resolve_device(device)
    if spec.startswith("random:"):
        arch, _, seed = spec[len("random:"):].partition(":")
        model = build_random(arch, int(seed or 0))
        return ClipEncoder(_finish(model, dev), spec, _state_sha256(model), True, dev)

    if spec in clip.available_models():
        url = clip.clip._MODELS[spec]
        root = Path(download_root) if download_root else default_clip_cache()
        path = root / os.path.basename(url)
        expected = url.split("/")[-2]  # OpenAI put each file's SHA256 in its URL
        if not path.is_file():
            raise ClipWeightsMissing(
                f"CLIP weights for {spec} are not on this machine (looked for {path}), and vtr does not "
                f"download them. Copy OpenAI's file {os.path.basename(url)} there (or set --clip-cache / "
                f"VTR_CLIP_CACHE to its folder), or pass --clip /path/to/checkpoint.pt. For an offline run "
                f"whose numbers mean nothing for real retrieval, use --clip random:tiny."
            )
        digest = sha256_file(path)
        if digest != expected:
            raise ClipWeightsMissing(f"{path}: SHA256 {digest[:12]}... does not match OpenAI's {expected[:12]}... "
                                     f"for {spec}; the file is damaged or another model")
        return ClipEncoder(_finish(_load_checkpoint(path), dev), spec, digest, False, dev)

    path = Path(spec).expanduser()
    if path.is_file():
        return ClipEncoder(_finish(_load_checkpoint(path), dev), str(path), sha256_file(path), False, dev)
    raise ClipWeightsMissing(
        f"--clip {spec}: neither an OpenAI model name ({', '.join(clip.available_models())}), "
        f"nor an existing checkpoint file, nor random:SHAPE ({', '.join(RANDOM_ARCHS)})"
    )
