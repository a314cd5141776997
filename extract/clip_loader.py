"""`load_clip`: one entry point for every ``--clip`` spec. OpenAI's CLIP (a name, a checkpoint file, or
``random:SHAPE``) is built by `vtr.extract.clip_encoder`; open_clip backbones by
`vtr.extract.open_clip_encoder`, which builds on the former: this dispatcher sits above both."""
from __future__ import annotations

from pathlib import Path

from vtr.core.device import resolve_device
from vtr.core.files import sha256_file
from vtr.extract.clip_encoder import (RANDOM_ARCHS, ClipEncoder, _finish, _load_checkpoint, _state_sha256,
                                      build_random, resolve_precision)
from vtr.extract.weights import ClipWeightsMissing, clip_model_urls, clip_weights
from vtr.extract.open_clip_encoder import load_open_clip


def load_clip(spec: str, device: str = "auto", download_root: str | Path | None = None,
              precision: str = "auto", *, offline: bool | None = None, progress: bool = True,
              log=None) -> ClipEncoder:
    """Load a frozen CLIP by OpenAI name, checkpoint path or ``random:SHAPE[:SEED]`` (see the module doc).

    ``precision`` is one of `PRECISIONS` (see `resolve_precision`); checked before any weights are read.
    An OpenAI name whose file is missing is downloaded into ``download_root`` unless ``offline`` (None:
    the ``VTR_OFFLINE`` environment variable decides); ``progress`` shows the download's bar.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if spec.startswith(("open_clip:", "random:open_clip:")):  # the optional extra vtr[open_clip]
        return load_open_clip(spec, dev, "fp32" if prec == "auto" else prec, download_root, offline=offline, progress=progress, log=log)
    if spec.startswith("random:"):
        arch, _, seed = spec[len("random:"):].partition(":")
        model = build_random(arch, int(seed or 0))
        digest = _state_sha256(model)  # of CLIP's own weights, before _finish fuses some
        return ClipEncoder(_finish(model, dev, prec), spec, digest, True, dev, prec)

    names = clip_model_urls()
    if spec in names:
        path, digest = clip_weights(spec, download_root, offline=offline, progress=progress, log=log)
        return ClipEncoder(_finish(_load_checkpoint(path, digest), dev, prec), spec, digest, False, dev, prec)

    path = Path(spec).expanduser()
    if path.is_file():
        digest = sha256_file(path)
        return ClipEncoder(_finish(_load_checkpoint(path, digest), dev, prec), str(path), digest, False, dev, prec)
    raise ClipWeightsMissing(
        f"--clip {spec}: neither an OpenAI model name ({', '.join(names)}), "
        f"nor an existing checkpoint file, nor random:SHAPE ({', '.join(RANDOM_ARCHS)}), nor "
        "open_clip:ARCH:PRETRAINED / random:open_clip:ARCH (docs/backbones.md)"
    )
