"""The fit loop: train a head on the cached CLIP features with a contrastive loss.

Only the head's parameters are trained; CLIP is not involved at all (its outputs are in the cache).

Sampling. One epoch visits every training video once (videos whose decode failed, ``video_ok == False``,
and videos without captions are skipped). Each video is paired with one of its captions drawn at random,
and the videos are shuffled into batches of ``batch_size``. A batch therefore never holds two captions of
the same video, so every off-diagonal pair in the [B, B] logits is a true negative.

Reproducibility. The randomness of epoch ``e`` (the caption draw, the shuffle, dropout) is seeded from
(seed, e) alone, so resuming after epoch k from last.pt replays epochs k+1.. exactly as an uninterrupted
run would, without carrying RNG state across epochs.
"""
from __future__ import annotations

import io
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vtr.device import resolve_device
from vtr.records import CacheTensors
from vtr.train.heads import RetrievalHead, build_head, count_parameters, text_batch, video_batch
from vtr.train.losses import dsl_loss, get_loss
from vtr.files import atomic_write_bytes, atomic_write_text
from vtr.train.runs import (BEST, CONFIG, CURVES, LAST, LOG, FitConfig, atomic_torch_save, config_differences,
                            read_record, run_record)

__all__ = ["FitConfig", "fit", "fit_tensors", "validate", "epoch_batches"]


def captions_by_video(data: CacheTensors) -> list[np.ndarray]:
    """For each video row, the caption rows that describe it."""
    order = np.argsort(data.text_video, kind="stable")
    bounds = np.searchsorted(data.text_video[order], np.arange(len(data.video_ids) + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(data.video_ids))]


def epoch_batches(caps: list[np.ndarray], usable: np.ndarray, batch_size: int, seed: int, epoch: int):
    """The (video rows, caption rows) batches of one epoch: each usable video once, one random caption each."""
    rng = np.random.default_rng([seed, epoch])
    videos = rng.permutation(usable)
    texts = np.array([caps[v][rng.integers(len(caps[v]))] for v in videos], dtype=np.int64)
    return [(videos[i:i + batch_size], texts[i:i + batch_size]) for i in range(0, len(videos), batch_size)]


@torch.no_grad()
def validate(head: RetrievalHead, data: CacheTensors, batch_size: int, device) -> dict:
    """T2V retrieval metrics of ``head`` on ``data`` (every caption against every video)."""
    from vtr.eval.evaluate import encode_all, score_matrix
    from vtr.eval.metrics import retrieval_metrics, t2v_ranks

    was_training = head.training
    head.eval()
    t, gate, v = encode_all(head, data, batch_size, device)
    sim = score_matrix(head, t, gate, v)
    head.train(was_training)
    return {k: float(x) for k, x in retrieval_metrics(t2v_ranks(sim, data.text_video)).items()}


def make_optimizer(head: RetrievalHead, cfg: FitConfig) -> torch.optim.Optimizer:
    # Decay matrices only (as nanoGPT does); LayerNorm gains, biases and scalars keep their values.
    params = [p for p in head.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer, cfg: FitConfig, steps_per_epoch: int):
    """Linear warmup over ``warmup_epochs``, then a constant lr, or a cosine decay to 0 at ``epochs``."""
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    total = cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        return 1.0

    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use 'constant' or 'cosine'")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def plot_curves(history: list[dict]) -> bytes:
    """PNG of train loss and val R@1 per epoch (matplotlib's Agg canvas; no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    FigureCanvasAgg(fig)
    ax_loss, ax_r1 = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss")
    val = [(h["epoch"], h["val"]["R@1"]) for h in history if h.get("val")]
    if val:
        ax_r1.plot(*zip(*val), marker="o", color="tab:green")
    ax_r1.set(xlabel="epoch", ylabel="R@1 (%)", title="val T2V R@1" if val else "no val split")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def val_score(metrics: dict) -> float:
    return metrics["R@1"] + metrics["R@5"] + metrics["R@10"]


def train_epoch(head, train: CacheTensors, batches, loss_fn, optimizer, scheduler, device, bar) -> float:
    """One pass over ``batches``; returns the mean loss per video."""
    head.train()
    total, count = 0.0, 0
    for videos, texts in batches:
        frames, mask = video_batch(train, videos, device)
        loss = head.training_loss(frames, mask, text_batch(train, texts, device), loss_fn)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total, count = total + loss.item() * len(videos), count + len(videos)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return total / count


def resume(run_dir: Path, record: dict, cfg: FitConfig, head, optimizer, scheduler, device):
    """Load last.pt of a matching run in ``run_dir`` into head/optimizer/scheduler.

    Returns (epochs done, history, best); (0, [], None) for a new run. Refuses a run with another config.
    """
    if not (run_dir / CONFIG).is_file():
        return 0, [], None
    saved = read_record(run_dir)
    diffs = config_differences(saved, record)
    if cfg.schedule == "cosine" and saved["fit"]["epochs"] != cfg.epochs:
        diffs.append("fit.epochs (a cosine schedule is tied to the number of epochs)")
    if diffs:
        raise ValueError(f"{run_dir} holds a different run; differing keys: {', '.join(diffs)}. "
                         "Use a new run folder or the same settings.")
    if not (run_dir / LAST).is_file():  # killed during its first epoch
        return 0, [], None
    ckpt = torch.load(run_dir / LAST, map_location=device, weights_only=True)
    head.load_state_dict(ckpt["head"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt["epoch"], ckpt["history"], ckpt["best"]


def fit_tensors(data: CacheTensors, run_dir: Path, cfg: FitConfig, cache_path: str = "",
                progress: bool = True, log=print) -> Path:
    """Train ``cfg.model`` on the train split of ``data``, validating on val, writing ``run_dir``.

    If ``run_dir`` already holds a run with the same config (``epochs``, ``device`` and ``num_threads`` may
    differ; a larger ``epochs`` extends a finished run), training resumes from last.pt. A different config
    is refused, naming the keys that differ. Returns ``run_dir``.
    """
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2 (got {cfg.epochs}, {cfg.batch_size})")
    loss_fn = get_loss(cfg.loss)
    if loss_fn is dsl_loss:
        loss_fn = partial(dsl_loss, temperature=cfg.dsl_temperature)

    train, val = data.select("train"), data.select("val")
    caps = captions_by_video(train)
    usable = np.array([v for v in range(len(caps)) if len(caps[v])], dtype=np.int64)
    if len(usable) < 2:
        raise ValueError(f"the cache has {len(usable)} usable training videos (decoded, with captions); "
                         "contrastive training needs at least 2")
    steps_per_epoch = math.ceil(len(usable) / cfg.batch_size)

    torch.manual_seed(cfg.seed)
    head = build_head(cfg.model, data.dim, data.max_frames, **cfg.head_options).to(device)
    n_params = count_parameters(head)
    if n_params == 0:
        raise ValueError(f"{head.name} has no trainable parameters: zero-shot needs no fitting "
                         "(`vtr eval` evaluates it directly)")
    optimizer = make_optimizer(head, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)

    record = run_record(cfg, data, cache_path)
    done, history, best = resume(run_dir, record, cfg, head, optimizer, scheduler, device)
    if done >= cfg.epochs:
        log(f"{run_dir}: run already complete ({done} epochs trained, {cfg.epochs} asked); nothing to do")
        return run_dir

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG, json.dumps(record, indent=2, default=str) + "\n")
    log(f"fit {head.name} ({n_params:,} parameters) with {cfg.loss} on {len(usable)} training videos, "
        f"{len(val.text_ids)} val captions, device {device}" + (f"; resuming after epoch {done}" if done else ""))

    for epoch in range(done + 1, cfg.epochs + 1):
        start = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout stream of this epoch (see module doc)
        batches = epoch_batches(caps, usable, cfg.batch_size, cfg.seed, epoch)
        train_loss = train_epoch(head, train, batches, loss_fn, optimizer, scheduler, device,
                                 tqdm(total=len(batches), desc=f"epoch {epoch}", disable=not progress, leave=False))

        metrics = validate(head, val, cfg.batch_size, device) if len(val.text_ids) else None
        entry = {"epoch": epoch, "train_loss": train_loss, "val": metrics,
                 "seconds": round(time.time() - start, 3), "lr": optimizer.param_groups[0]["lr"]}
        history.append(entry)
        improved = metrics is None or best is None or val_score(metrics) > best["score"]
        if improved:
            best = {"epoch": epoch, "score": val_score(metrics) if metrics else None}
            atomic_torch_save({"head": head.state_dict(), "epoch": epoch, "val": metrics}, run_dir / BEST)
        atomic_torch_save({"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                           "best": best}, run_dir / LAST)
        atomic_write_text(run_dir / LOG, "".join(json.dumps(h) + "\n" for h in history))
        atomic_write_bytes(run_dir / CURVES, plot_curves(history))

        shown = (" ".join(f"{k} {v:.1f}" for k, v in metrics.items()) if metrics else "no val")
        log(f"epoch {epoch}/{cfg.epochs}  loss {entry['train_loss']:.4f}  val {shown}  "
            f"lr {entry['lr']:.2e}  {entry['seconds']:.1f}s" + ("  *best" if improved and metrics else ""))
    log(f"done: {run_dir} (best epoch {best['epoch']})")
    return run_dir


def fit(cache_path, run_dir, cfg: FitConfig, progress: bool = True, log=print) -> Path:
    """Read the cache at ``cache_path`` and train on it (see ``fit_tensors``)."""
    from vtr.cache import read_cache  # lazily: the HDF5 reader is only needed here

    # The absolute path, so eval finds the cache from any working directory.
    return fit_tensors(read_cache(cache_path), run_dir, cfg, cache_path=str(Path(cache_path).resolve()),
                       progress=progress, log=log)
