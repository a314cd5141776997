"""open_clip backbones behind `ClipEncoder`'s interface (the optional extra ``vtr[open_clip]``):
``--clip open_clip:ARCH:PRETRAINED`` (a pretrained tag of ARCH, or a weights file) and
``--clip random:open_clip:ARCH[:SEED]`` (seeded random weights, for tests). See docs/backbones.md.

What vtr does for OpenAI's CLIP is kept, or switched off, per model, from the model's own config:

- captions are encoded at the batch's real length only where that is exact: open_clip's CLIP text tower
  with a causal mask that pools at the end-of-text token (the largest BPE id). Every other tower (SigLIP's
  attends over the padding and pools the last position) is encoded at its full context length;
- the image MLPs are fused (`fuse_quick_gelu`) only where their activation is QuickGELU;
- frames are resized (short side + centre crop, or squashed) with the interpolation, mean and std of the
  model's preprocessing config, which the ffmpeg filter follows (vtr.extract.decode);
- the embedding width, logit scale and logit bias are the model's, and the cache records them.

Weights are read as plain data (safetensors, ``torch.load(weights_only=True)``, or one of OpenAI's
published TorchScript files, by SHA256): never unpickled with code.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vtr.core.safe_load import LoadError, is_torchscript, load_safetensors, load_torch
from vtr.extract.clip_encoder import ClipEncoder, _finish, _state_sha256, trusted_torchscript_state
from vtr.extract.decode import RESIZE_MODES
from vtr.extract.weights import open_clip_weights, sha256_file

# vtr's own small architectures, for offline tests with random weights: "vtr-tiny-clip" (causal text tower
# pooling at EOT, QuickGELU) and "vtr-tiny-siglip" (SigLIP's text tower: bidirectional attention, last-token
# pooling, projection bias, a logit bias; with open_clip's built-in BPE tokenizer, as SigLIP's own needs the hub).
CONFIG_DIR = Path(__file__).with_name("open_clip_configs")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
# open_clip keeps preprocessing with the pretrained tags; vtr's architectures have none, so theirs is here
# (SigLIP's: mean = std = 0.5, bicubic, squashed to the square).
OWN_PREPROCESS = {"vtr-tiny-siglip": dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
                                          resize_mode="squash")}
INTERPOLATIONS = ("bicubic", "bilinear")


def _import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise LoadError("--clip open_clip:...: open_clip is not installed; install the extra with "
                        "pip install -e '.[open_clip]' (docs/setup.md)") from None
    if "vtr-tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def parse_spec(spec: str) -> tuple[str, str | None, int]:
    """``open_clip:ARCH:PRETRAINED`` -> (ARCH, PRETRAINED, 0); ``random:open_clip:ARCH[:SEED]`` -> (ARCH, None, SEED)."""
    if spec.startswith("random:open_clip:"):
        arch, _, seed = spec[len("random:open_clip:"):].partition(":")
        if not arch or (seed and not seed.isdigit()):
            raise ValueError(f"--clip {spec}: expected random:open_clip:ARCH or random:open_clip:ARCH:SEED")
        return arch, None, int(seed or 0)
    arch, _, pretrained = spec[len("open_clip:"):].partition(":")
    if not arch or not pretrained:
        raise ValueError(f"--clip {spec}: expected open_clip:ARCH:PRETRAINED, PRETRAINED a tag of ARCH "
                         "(open_clip.list_pretrained()) or a weights file")
    return arch, pretrained, 0


def _tags_preprocess(oc, arch: str) -> dict:
    """The preprocessing every published weight file of ``arch`` shares (open_clip keeps it per tag), for
    weights that come without a tag (a file, random); {} when they disagree or there are none."""
    seen = {json.dumps([oc.get_pretrained_cfg(arch, t).get(k) for k in PREPROCESS_KEYS])
            for t in oc.list_pretrained_tags_by_model(arch)}
    if len(seen) != 1:
        return {}
    return {k: v for k, v in zip(PREPROCESS_KEYS, json.loads(seen.pop())) if v is not None}


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def _create(oc, arch: str, quick_gelu: bool, preprocess: dict, seed: int):
    """open_clip's model of ``arch`` with its own (seeded) random initialisation; no download (no tower
    weights, no pretrained tag)."""
    rng, quiet = torch.random.get_rng_state(), logging.root.manager.disable
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # "No pretrained weights loaded": vtr loads them next, or wants none
    try:
        return oc.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu, force_preprocess_cfg=preprocess,
                               pretrained_image=False, pretrained_text=False, device="cpu")
    except Exception as e:  # noqa: BLE001 - open_clip raises many kinds; one line names the model
        raise LoadError(f"open_clip {arch}: could not build it ({_one_line(e)})") from None
    finally:
        logging.disable(quiet)
        torch.random.set_rng_state(rng)


def _read_state_dict(path: Path, sha256: str) -> dict:
    """A state dict from ``path``, read as plain data only (see the module doc)."""
    if is_torchscript(path):
        sd = trusted_torchscript_state(path, sha256)
    elif path.suffix == ".safetensors":
        sd = load_safetensors(path)[0]
    elif path.suffix in (".npz", ".npy"):
        raise LoadError(f"{path}: big_vision .npz weights are not read by vtr; pass the open_clip safetensors "
                        "file of the same model")
    else:
        sd = load_torch(path)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not (isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values())):
        raise LoadError(f"{path}: not an open_clip checkpoint (expected a state dict of tensors)")
    if next(iter(sd)).startswith("module."):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's TorchScript extras
        sd.pop(key, None)
    return sd


def _load_weights(model, path: Path, sha256: str, arch: str) -> None:
    """Load ``path`` into ``model`` as open_clip's load_checkpoint does (its state-dict conversions), from a
    state dict read by `_read_state_dict`."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    sd = _read_state_dict(path, sha256)
    try:
        sd = convert_state_dict(model, sd)
        if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
            sd = convert_to_custom_text_state_dict(sd)
        for key in ("logit_scale", "logit_bias"):
            own = getattr(model, key, None)
            if key in sd and own is not None and own.ndim != sd[key].ndim:
                sd[key] = sd[key].reshape(own.shape)
        if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None:
            sd["logit_bias"] = torch.zeros_like(model.logit_bias)
        resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
        model.load_state_dict(sd, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        raise LoadError(f"{path}: not weights of open_clip {arch} ({_one_line(e)})") from None


def _tokenizer(oc, arch: str, context_length: int):
    """open_clip's tokenizer for ``arch``; vtr's architectures use its built-in BPE tokenizer."""
    if (CONFIG_DIR / f"{arch}.json").is_file():
        return oc.SimpleTokenizer(context_length=context_length)
    try:
        return oc.get_tokenizer(arch)
    except Exception as e:  # noqa: BLE001 - a hub tokenizer fails in many ways offline
        raise LoadError(f"open_clip {arch}: its tokenizer could not be loaded ({_one_line(e)}); open_clip fetches "
                        "SigLIP's and other Hugging Face tokenizers from the hub at run time") from None


@dataclass
class OpenClipEncoder(ClipEncoder):
    """A frozen open_clip model and what a cache must record about it (see the module doc)."""

    arch: str = ""
    pretrained: str = ""  # the tag, "file NAME", or "random, seed N"
    tokenizer: object = None
    preprocess: dict = field(default_factory=dict)  # open_clip's: size, mean, std, interpolation, resize_mode
    embed_dim: int = 0
    context_length: int = 77
    pad_id: int = 0  # what the tokenizer pads with
    text_at_real_length: bool = False  # causal text tower pooling at EOT: see the module doc
    quick_gelu: bool = False
    # Read from the fp32 weights before any cast, so a cache begun in fp16 on a GPU resumes on a CPU.
    logit_scale: float = 100.0
    logit_bias: float | None = None  # SigLIP's; None where the model has none

    @property
    def resolution(self) -> int:
        size = self.preprocess["size"]
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def dim(self) -> int:
        return self.embed_dim

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    @property
    def image_mean(self):
        return tuple(self.preprocess["mean"])

    @property
    def image_std(self):
        return tuple(self.preprocess["std"])

    @property
    def resize_mode(self) -> str:
        return self.preprocess["resize_mode"]

    @property
    def interpolation(self) -> str:
        return self.preprocess["interpolation"]

    def tokenize(self, texts: list[str], max_tokens: int = 77) -> torch.Tensor:
        """open_clip's tokens [N, context_length], padded as its tokenizer pads; each text cut to
        ``max_tokens`` tokens (at most the context length), start and end included where the tokenizer adds
        them, as the OpenAI path cuts (CLIP4Clip's ``max_words``)."""
        n = min(max_tokens, self.context_length)
        if n >= self.context_length:
            return self.tokenizer(texts)
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        out[:, :n] = self.tokenizer(texts, context_length=n)
        return out

    def token_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each row's length up to its last token that is not padding [B]."""
        real = tokens != self.pad_id
        return torch.where(real.any(1), tokens.shape[1] - real.flip(1).int().argmax(1), 0)

    def _encode_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip CLIP's ``encode_text`` over the first L positions only (L = ``tokens.shape[1]``): with a
        causal mask no position sees the padding after it, and the embedding is read at the end-of-text
        token, so this equals the full-length embedding (only for `text_at_real_length` models)."""
        m, length = self.model, tokens.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:length, :length]))
        x = x[torch.arange(len(x), device=x.device), tokens.argmax(dim=-1)]
        proj = m.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, context_length] from `tokenize` -> float16 embeddings [B, D]: at the batch's real length
        where that is exact (`text_at_real_length`), else at the full context length."""
        if self.text_at_real_length:
            length = int(self.token_lengths(tokens).max())
            emb = self._encode_prefix(tokens[:, :max(length, 1)].to(self.device))
        else:
            emb = self.model.encode_text(tokens.to(self.device))
        return emb.float().to("cpu", torch.float16).numpy()

    def preprocessing(self) -> str:
        r, how = self.resolution, self.interpolation
        fit = (f"squashed to {r}x{r} ({how})" if self.resize_mode == "squash"
               else f"short side to {r}px ({how}), centre crop {r}x{r}")
        return (f"ffmpeg: {fit}, rgb24; mean {list(self.image_mean)} std {list(self.image_std)} "
                "(the model's open_clip preprocessing config)")

    def extra_settings(self) -> dict:
        text = "at the batch's real length (causal, EOT pooling)" if self.text_at_real_length else \
            f"at the full context length {self.context_length}"
        return {
            "clip_backbone": "open_clip",
            "clip_arch": self.arch,
            "clip_pretrained": self.pretrained,
            "clip_quick_gelu": self.quick_gelu,
            "preprocessing": self.preprocessing(),
            "text": f"open_clip {type(self.tokenizer).__name__}; captions cut to max_words tokens; encoded {text}",
            "clip_logit_scale": self.logit_scale,
            "clip_logit_bias": self.logit_bias,
        }

    def describe(self) -> str:
        label = " (random weights: not meaningful for real retrieval)" if self.is_random else ""
        return (f"open_clip {self.arch} ({self.pretrained}){label}, {self.resolution}px, {self.dim}-d, on "
                f"{self.device} in {self.precision}")


def load_open_clip(spec: str, device: torch.device, precision: str, download_root=None, *,
                   offline: bool | None = None, progress: bool = True, log=None) -> OpenClipEncoder:
    """The `OpenClipEncoder` for ``spec`` (see the module doc) on ``device`` in ``precision`` (resolved)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"--precision {precision}: open_clip models run in fp32, bf16 or fp16")
    arch, pretrained, seed = parse_spec(spec)
    oc = _import_open_clip()
    from open_clip.transformer import QuickGELU

    config = oc.get_model_config(arch)
    if config is None:
        raise LoadError(f"--clip {spec}: {arch!r} is not an open_clip architecture (open_clip.list_models() "
                        "lists them)")
    preprocess = dict(OWN_PREPROCESS.get(arch) or _tags_preprocess(oc, arch))
    quick_gelu = bool(config.get("quick_gelu", False))
    path = None
    if pretrained is not None:
        path = Path(pretrained).expanduser()
        if path.is_file():
            digest, label = sha256_file(path), f"file {path.name}"
        else:
            tag = oc.get_pretrained_cfg(arch, pretrained)
            if not tag:
                tags = ", ".join(oc.list_pretrained_tags_by_model(arch)) or "it has none"
                raise LoadError(f"--clip {spec}: {pretrained!r} is neither a pretrained tag of {arch} ({tags}) nor "
                                "an existing file")
            path, digest = open_clip_weights(f"{arch}:{pretrained}", tag, download_root, offline=offline,
                                             progress=progress, log=log)
            preprocess.update({k: tag[k] for k in PREPROCESS_KEYS if k in tag})
            quick_gelu = quick_gelu or bool(tag.get("quick_gelu"))  # the activation the weights were trained with
            label = pretrained
    if preprocess.get("resize_mode", "shortest") not in RESIZE_MODES or \
            preprocess.get("interpolation", "bicubic") not in INTERPOLATIONS:
        raise LoadError(f"open_clip {arch}: preprocessing {preprocess} is not one vtr's ffmpeg filter does "
                        f"(resize {', '.join(RESIZE_MODES)}; interpolation {', '.join(INTERPOLATIONS)})")
    model = _create(oc, arch, quick_gelu, preprocess, seed)
    if path is not None:
        _load_weights(model, path, digest, arch)
    else:
        digest, label = _state_sha256(model), f"random, seed {seed}"
    context_length = int(config["text_cfg"].get("context_length", 77))
    tokenizer = _tokenizer(oc, arch, context_length)
    causal_eot = (isinstance(tokenizer, oc.SimpleTokenizer) and type(model) is oc.CLIP
                  and model.attn_mask is not None and model.text_pool_type == "argmax")
    scale, bias = float(model.logit_scale.detach().exp()), getattr(model, "logit_bias", None)
    bias = None if bias is None else float(bias.detach())  # both before _finish casts the weights
    size = oc.get_model_preprocess_cfg(model)["size"]
    if isinstance(size, (tuple, list)) and size[0] != size[1]:
        raise LoadError(f"open_clip {arch}: a {size[0]}x{size[1]} input; vtr's frames are square")
    return OpenClipEncoder(
        _finish(model, device, precision, (QuickGELU,), torch.nn.Module.half), spec, digest, pretrained is None, device, precision,
        arch=arch, pretrained=label, tokenizer=tokenizer, preprocess=dict(oc.get_model_preprocess_cfg(model)),
        embed_dim=int(config["embed_dim"]), context_length=context_length,
        pad_id=int(tokenizer([""])[0, -1]), text_at_real_length=causal_eot, quick_gelu=quick_gelu,
        logit_scale=scale, logit_bias=bias)
