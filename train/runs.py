"""The run folder: what fit writes and eval reads.

    run_dir/
      config.json   FitConfig + the cache's path and fingerprint + feature shape + vtr version
      last.pt       head, optimizer and scheduler state, epoch, best-so-far and the per-epoch history
      best.pt       head state at the best validation epoch (T2V R@1+R@5+R@10 on val; the last epoch if
                    the cache has no val captions)
      log.jsonl     one JSON line per epoch: epoch, train_loss, val metrics, seconds, lr
      curves.png    train loss and val R@1 per epoch

Every file is written to a temporary name and moved into place with ``os.replace``, so a run killed at
any moment leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

import vtr
from vtr.files import atomic_write_bytes
from vtr.records import CacheTensors
from vtr.train.heads import RetrievalHead, build_head

CONFIG, LAST, BEST, LOG, CURVES = "config.json", "last.pt", "best.pt", "log.jsonl", "curves.png"


@dataclass
class FitConfig:
    """Everything that decides a fit. Defaults were measured on the synthetic test cache (see fit.py)."""

    model: str = "seqTransf"
    loss: str = "dsl"  # "dsl" or "infonce"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01  # AdamW, on matrices only
    warmup_epochs: float = 1.0  # linear warmup, then constant (schedule="constant") or cosine to 0
    schedule: str = "constant"  # "constant" lets a finished run be extended; "cosine" ties lr to epochs
    dsl_temperature: float = 1000.0
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu
    num_threads: int = 0  # torch CPU threads; 0 = torch's default (all physical cores)
    head_options: dict = field(default_factory=dict)  # passed to build_head, e.g. {"layers": 4}

    # Keys that may differ when a run is resumed: they change where and how fast, not what is computed.
    RESUMABLE = ("epochs", "device", "num_threads")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FitConfig keys: {', '.join(unknown)}")
        return cls(**d)


def cache_fingerprint(data: CacheTensors) -> str:
    """A short hash of the cache's settings (its attrs) and row counts: a rebuilt or grown cache differs.

    Where the file lives (an attr ``path``, if the reader adds one) is left out: a moved cache is the same.
    """
    attrs = {k: v for k, v in data.attrs.items() if k != "path"}
    blob = json.dumps({"attrs": attrs, "videos": len(data.video_ids), "texts": len(data.text_ids)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_torch_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def run_record(cfg: FitConfig, data: CacheTensors, cache_path: str) -> dict:
    """The contents of config.json."""
    return {
        "fit": cfg.to_dict(),
        "cache": {"path": str(cache_path), "fingerprint": cache_fingerprint(data), "attrs": data.attrs},
        "dim": data.dim,
        "max_frames": data.max_frames,
        "vtr_version": vtr.__version__,
    }


def read_record(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    return json.loads(path.read_text())


def config_differences(saved: dict, new: dict) -> list[str]:
    """The config.json keys (dotted) whose values differ, ignoring FitConfig.RESUMABLE and the cache path."""
    ignore = {f"fit.{k}" for k in FitConfig.RESUMABLE} | {"cache.path", "cache.attrs", "vtr_version"}

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key != "fit.head_options":
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(saved), flat(new)
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def load_run(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[RetrievalHead, FitConfig, dict]:
    """Rebuild a run's head from config.json and load ``best.pt`` or ``last.pt`` into it (in eval mode).

    Returns (head, config, info) where info is config.json's contents plus ``cache_path`` (the cache the
    run was trained on), the checkpoint's ``epoch`` and, for best.pt, its ``val`` metrics.
    """
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    record = read_record(run_dir)
    ckpt_path = run_dir / (BEST if which == "best" else LAST)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"run {run_dir} has no {ckpt_path.name}: it has not finished an epoch yet")
    cfg = FitConfig.from_dict(record["fit"])
    head = build_head(cfg.model, record["dim"], record["max_frames"], **cfg.head_options)
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    head.load_state_dict(ckpt["head"])
    head.to(device).eval()
    info = dict(record, cache_path=record["cache"]["path"], epoch=ckpt["epoch"], val=ckpt.get("val"),
                checkpoint=str(ckpt_path))
    return head, cfg, info


def latest_run(runs_root: Path) -> Path:
    """The most recently updated run folder under ``runs_root`` (one with config.json and a checkpoint)."""
    runs_root = Path(runs_root)
    candidates = []
    if runs_root.is_dir():
        for d in runs_root.iterdir():
            ckpts = [d / n for n in (LAST, BEST) if (d / n).is_file()]
            if (d / CONFIG).is_file() and ckpts:
                candidates.append((max(p.stat().st_mtime for p in ckpts), d))
    if not candidates:
        raise FileNotFoundError(f"no finished run under {runs_root} (a folder with {CONFIG} and {LAST}); "
                                "run `vtr fit` first")
    return max(candidates)[1]
