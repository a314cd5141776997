"""The run folder: what fit writes and eval reads. Plain data end to end: JSON and safetensors, no pickle.

    run_dir/
      config.json        FitConfig + the cache's path and fingerprint + feature shape + vtr version
      last.safetensors   head, optimizer and scheduler state, epoch, best-so-far and the per-epoch history
                         (tensors as safetensors, the rest as a JSON skeleton in its header: vtr.core.safe_load)
      best.safetensors   the head's state dict at the best validation epoch (T2V R@1+R@5+R@10 on val; the
                         last epoch if the cache has no val captions); its header holds that epoch and metrics
      log.jsonl          one JSON line per epoch: epoch, train_loss, val metrics, seconds, lr
      curves.png         train loss and val R@1 per epoch
      .fit.lock          held by the one `vtr fit` writing the folder

Every file is written to a temporary name and moved into place with ``os.replace``, so a run killed at
any moment leaves either the old file or the new one, never half of one; the temporary it was writing is
removed by the next `vtr fit` of the folder. Runs written by earlier versions (``last.pt``, ``best.pt``)
are still read, through ``torch.load(weights_only=True)``, and replaced by the new files as training
goes on. See docs/weights-and-runs.md for why.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from vtr.core import __version__
from vtr.core.files import atomic_write_bytes, remove_temporaries
from vtr.core.settings import settings_diff
from vtr.cache.records import CacheTensors
from vtr.core.safe_load import LoadError, dump_state, load_json, load_safetensors, load_state, load_torch
from vtr.train.heads import RetrievalHead, build_head

CONFIG, LAST, BEST, LOG, CURVES = "config.json", "last.safetensors", "best.safetensors", "log.jsonl", "curves.png"
# What vtr wrote before runs were safetensors: read (weights_only), never written, removed once superseded.
LEGACY = {LAST: "last.pt", BEST: "best.pt"}
LOCK = ".fit.lock"
# The header key of best.safetensors that holds its epoch and val metrics (JSON).
RUN_META = "vtr_run"


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


def run_record(cfg: FitConfig, data: CacheTensors, cache_path: str) -> dict:
    """The contents of config.json."""
    return {
        "fit": cfg.to_dict(),
        "cache": {"path": str(cache_path), "fingerprint": cache_fingerprint(data), "attrs": data.attrs},
        "dim": data.dim,
        "max_frames": data.max_frames,
        "vtr_version": __version__,
    }


def read_record(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    record = load_json(path)
    missing = [k for k in ("fit", "dim", "max_frames", "cache") if not isinstance(record, dict) or k not in record]
    if missing:
        raise LoadError(f"{path} is not a vtr run config (it lacks {', '.join(missing)})")
    return record


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(run_dir: Path, name: str) -> Path | None:
    """The file that holds ``name`` (LAST or BEST) in ``run_dir``: the safetensors file, else an earlier
    version's ``.pt``, else None."""
    for candidate in (Path(run_dir) / name, Path(run_dir) / LEGACY[name]):
        if candidate.is_file():
            return candidate
    return None


def _plain_tensors(state: dict) -> dict[str, torch.Tensor]:
    # copies on the CPU: safetensors refuses tensors that share memory (tied weights)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_best(run_dir: Path, head_state: dict, epoch: int, val: dict | None) -> None:
    """best.safetensors: the head's state dict, with its epoch and val metrics in the header."""
    from safetensors.torch import save

    meta = {RUN_META: json.dumps({"epoch": epoch, "val": val})}
    atomic_write_bytes(Path(run_dir) / BEST, save(_plain_tensors(head_state), metadata=meta))
    (Path(run_dir) / LEGACY[BEST]).unlink(missing_ok=True)


def save_last(run_dir: Path, state: dict) -> None:
    """last.safetensors: everything an exact resume needs (``head``, ``optimizer``, ``scheduler``, ``epoch``,
    ``history``, ``best``), as tensors plus a JSON skeleton."""
    atomic_write_bytes(Path(run_dir) / LAST, dump_state(state))
    (Path(run_dir) / LEGACY[LAST]).unlink(missing_ok=True)


def _checked(path: Path, ckpt, keys: tuple) -> dict:
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys) or not isinstance(ckpt["head"], dict):
        raise LoadError(f"{path} is not a vtr run checkpoint (it needs {', '.join(keys)})")
    return ckpt


def read_last(run_dir: Path) -> dict | None:
    """The resume state of ``run_dir`` on the CPU (see `save_last`), or None when it has none yet."""
    path = checkpoint_path(run_dir, LAST)
    if path is None:
        return None
    ckpt = load_state(path) if path.name == LAST else load_torch(path)
    return _checked(path, ckpt, ("head", "optimizer", "scheduler", "epoch", "history", "best"))


def read_best(run_dir: Path, device: str = "cpu") -> tuple[Path, dict]:
    """(path, {"head": state dict, "epoch", "val"}) of the run's best checkpoint."""
    path = checkpoint_path(run_dir, BEST)
    if path is None:
        raise FileNotFoundError(f"run {run_dir} has no {BEST}: it has not finished an epoch yet")
    if path.name != BEST:
        return path, _checked(path, load_torch(path, map_location=device), ("head", "epoch"))
    tensors, meta = load_safetensors(path, device)
    try:
        info = json.loads(meta[RUN_META])
        return path, {"head": tensors, "epoch": info["epoch"], "val": info.get("val")}
    except (KeyError, ValueError, TypeError, AttributeError):
        raise LoadError(f"{path} is not a vtr run checkpoint (its header lacks {RUN_META})") from None


def load_weights(head: torch.nn.Module, state: dict, path: Path, model: str) -> None:
    """``state`` into ``head``; weights of another shape or head are one line naming the file."""
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:200]
        raise LoadError(f"{path}: its weights do not fit the {model} head that config.json describes "
                        f"({first})") from None


def claim_run_folder(run_dir: Path, log=print):
    """Lock ``run_dir`` for this `vtr fit` and remove the temporaries a killed run left there.

    Returns the held lock (release it when done). Only one fit writes a run folder at a time, so with the
    lock held every temporary in the folder is a leftover. A second fit of the same folder is refused.
    """
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"{run_dir} is being written by another `vtr fit` (it holds {run_dir / LOCK}); "
                           "wait for it to finish, or use another --run folder") from None
    removed = remove_temporaries(run_dir)
    if removed:
        log(f"{run_dir}: removed {len(removed)} temporary file(s) left by a run that was killed while writing: "
            + ", ".join(p.name for p in removed))
    return lock


def config_differences(saved: dict, new: dict) -> list[str]:
    """The config.json keys (dotted) whose values differ, ignoring FitConfig.RESUMABLE and the cache path."""
    ignore = {f"fit.{k}" for k in FitConfig.RESUMABLE} | {"cache.path", "cache.attrs", "vtr_version"}
    diff = settings_diff(saved, new, depth=None, whole={"fit.head_options"}, ignore=ignore, one_sided=True)
    return sorted(k for k, _, _ in diff)


def load_run(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[RetrievalHead, FitConfig, dict]:
    """Rebuild a run's head from config.json and load its best or last checkpoint into it (in eval mode).

    Returns (head, config, info) where info is config.json's contents plus ``cache_path`` (the cache the
    run was trained on), the checkpoint's ``epoch`` and, for best, its ``val`` metrics. Every file is read
    as plain data (vtr.core.safe_load): one holding anything else is refused with a `LoadError`.
    """
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    record = read_record(run_dir)
    if which == "best":
        ckpt_path, ckpt = read_best(run_dir, device)
    else:
        ckpt_path, ckpt = checkpoint_path(run_dir, LAST), read_last(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"run {run_dir} has no {LAST}: it has not finished an epoch yet")
    cfg = FitConfig.from_dict(record["fit"])
    head = build_head(cfg.model, record["dim"], record["max_frames"], **cfg.head_options)
    load_weights(head, ckpt["head"], ckpt_path, cfg.model)
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
            ckpts = [p for p in (checkpoint_path(d, LAST), checkpoint_path(d, BEST)) if p is not None]
            if (d / CONFIG).is_file() and ckpts:
                candidates.append((max(p.stat().st_mtime for p in ckpts), d))
    if not candidates:
        raise FileNotFoundError(f"no finished run under {runs_root} (a folder with {CONFIG} and {LAST}); "
                                "run `vtr fit` first")
    return max(candidates)[1]
