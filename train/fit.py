"""The fit loop: train a head on the cached CLIP features with a contrastive loss.

Only the head's parameters are trained; CLIP is not involved at all (its outputs are in the cache).

Sampling. One epoch visits every training video once (videos whose decode failed, ``video_ok == False``,
and videos without captions are skipped). Each video is paired with one of its captions drawn at random,
and the videos are shuffled into batches of ``batch_size``. A batch therefore never holds two captions of
the same video, so every off-diagonal pair in the [B, B] logits is a true negative.

Reproducibility. The randomness of epoch ``e`` (the caption draw, the shuffle, dropout) is seeded from
(seed, e) alone, so resuming after epoch k from last.safetensors replays epochs k+1.. exactly as an uninterrupted
run would, without carrying RNG state across epochs.

Distributed. Under torchrun (or ``vtr fit --nproc N``) every rank draws the same batches and encodes its
slice of each; the loss is computed on the gathered global batch (see ``vtr.train.distributed``), so N
processes train as one process with the same ``batch_size`` would (up to dropout, which is drawn per rank).
Rank 0 alone validates and writes the run folder; the others wait for it at a barrier.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from vtr.cache.records import CacheTensors
from vtr.core.device import resolve_device
from vtr.core.files import atomic_write_bytes, atomic_write_text
from vtr.train.distributed import Dist, PairLoss, init_from_env, launch, local_rows, shard_sizes, shutdown
from vtr.train.encode import encode_all, score_matrix
from vtr.train.heads import RetrievalHead, build_head, count_parameters, text_batch, video_batch
from vtr.train.layers import use_model_logit_scale
from vtr.train.losses import dsl_loss, get_loss
from vtr.train.runs import (CONFIG, CURVES, LAST, LOG, FitConfig, checkpoint_path, claim_run_folder,
                            config_differences, load_weights, read_last, read_record, run_record, save_best, save_last)

__all__ = ["FitConfig", "fit", "fit_tensors", "fit_processes", "validate", "epoch_batches", "train_captions"]


def captions_by_video(data: CacheTensors) -> list[np.ndarray]:
    """For each video row, the caption rows that describe it."""
    order = np.argsort(data.text_video, kind="stable")
    bounds = np.searchsorted(data.text_video[order], np.arange(len(data.video_ids) + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(data.video_ids))]


def train_captions(data: CacheTensors) -> tuple[list[np.ndarray], np.ndarray]:
    """The training pairs of ``data`` in its own row numbers: (caption rows per video row, usable video rows).

    Usable: a train-split video that decoded and has train captions. The same pairs, in the same order, as
    ``captions_by_video(data.select("train"))`` gives, but without copying the split's arrays (most of the
    cache's memory, once per process).
    """
    in_train = (data.video_split == "train") & data.video_ok
    keep = (data.text_split == "train") & in_train[data.text_video]
    caps = [rows[keep[rows]] for rows in captions_by_video(data)]
    usable = np.array([v for v in np.flatnonzero(in_train) if len(caps[v])], dtype=np.int64)
    return caps, usable


def epoch_batches(caps: list[np.ndarray], usable: np.ndarray, batch_size: int, seed: int, epoch: int):
    """The (video rows, caption rows) batches of one epoch: each usable video once, one random caption each."""
    rng = np.random.default_rng([seed, epoch])
    videos = rng.permutation(usable)
    texts = np.array([caps[v][rng.integers(len(caps[v]))] for v in videos], dtype=np.int64)
    return [(videos[i:i + batch_size], texts[i:i + batch_size]) for i in range(0, len(videos), batch_size)]


@torch.no_grad()
def validate(head: RetrievalHead, data: CacheTensors, batch_size: int, device) -> dict:
    """T2V retrieval metrics of ``head`` on ``data`` (every caption against every video)."""
    from vtr.core.metrics import retrieval_metrics, t2v_ranks

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
    # The fused kernel updates each tensor in one pass, much faster on CPU than the default loop (bench/fit.py).
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


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


def train_epoch(model: PairLoss, data: CacheTensors, batches, optimizer, scheduler, device, bar,
                d: Dist = Dist()) -> float:
    """One pass over ``batches`` (global batches of rows of ``data``); returns the mean loss per video.

    ``model`` is the ``PairLoss`` of the head (wrapped in DistributedDataParallel when ``d`` is active):
    this rank encodes its slice of each batch and the loss is that of the whole batch.
    """
    model.train()
    total, count = 0.0, 0
    for videos, texts in batches:
        sizes = shard_sizes(len(videos), d.world_size)
        frames, mask = video_batch(data, local_rows(videos, d), device)
        loss = model(frames, mask, text_batch(data, local_rows(texts, d), device), sizes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = loss.item()  # the global batch's loss: the same on every rank
        total, count = total + value * len(videos), count + len(videos)
        bar.update()
        bar.set_postfix(loss=f"{value:.3f}")
    bar.close()
    return total / count


def read_checkpoint(run_dir: Path, record: dict, cfg: FitConfig) -> dict | None:
    """The resume state (last.safetensors, or an earlier version's last.pt) of a matching run in ``run_dir``
    (on the CPU), or None for a new run.

    Refuses a run with another config, naming the keys that differ, and a checkpoint that holds more than
    tensors and plain data (vtr.core.safe_load.LoadError).
    """
    if not (run_dir / CONFIG).is_file():
        return None
    saved = read_record(run_dir)
    diffs = config_differences(saved, record)
    if cfg.schedule == "cosine" and saved["fit"]["epochs"] != cfg.epochs:
        diffs.append("fit.epochs (a cosine schedule is tied to the number of epochs)")
    if diffs:
        raise ValueError(f"{run_dir} holds a different run; differing keys: {', '.join(diffs)}. "
                         "Use a new run folder or the same settings.")
    return read_last(run_dir)  # None when killed during its first epoch


def on_main_rank(d: Dist, fn):
    """``fn()`` on rank 0 alone, its result or its error sent to every rank, so all go on alike or fail alike.

    Rank 0 alone touches the run folder: the other ranks may be on machines that do not see it.
    """
    if not d.active:
        return fn()
    box = [None]
    if d.is_main:
        try:
            box[0] = ("ok", fn())
        except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def resume(run_dir: Path, record: dict, cfg: FitConfig, head, optimizer, scheduler, d: Dist = Dist()):
    """Load the resume state of a matching run in ``run_dir`` into head/optimizer/scheduler.

    Returns (epochs done, history, best); (0, [], None) for a new run. Refuses a run with another config.
    In a distributed run rank 0 reads the checkpoint and sends it to every rank (`on_main_rank`).
    """
    ckpt = on_main_rank(d, lambda: read_checkpoint(run_dir, record, cfg))
    if ckpt is None:
        return 0, [], None
    load_weights(head, ckpt["head"], checkpoint_path(run_dir, LAST), cfg.model)
    optimizer.load_state_dict(ckpt["optimizer"])  # moves the state to the parameters' device
    scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt["epoch"], ckpt["history"], ckpt["best"]


def fit_tensors(data: CacheTensors, run_dir: Path, cfg: FitConfig, cache_path: str = "",
                progress: bool = True, log=print) -> Path:
    """Train ``cfg.model`` on the train split of ``data``, validating on val, writing ``run_dir``.

    If ``run_dir`` already holds a run with the same config (``epochs``, ``device`` and ``num_threads`` may
    differ; a larger ``epochs`` extends a finished run), training resumes from last.pt. A different config
    is refused, naming the keys that differ. Returns ``run_dir``.

    Started by torchrun (WORLD_SIZE > 1 in the environment), each process calls this with the same
    arguments: they train data-parallel with DistributedDataParallel, and only rank 0 logs and writes.
    """
    d, device = init_from_env(resolve_device(cfg.device))
    try:
        with contextlib.ExitStack() as held:  # what _fit holds until it returns: the run folder's lock
            return _fit(data, Path(run_dir), cfg, cache_path, progress, log, d, device, held)
    finally:
        shutdown(d)


@contextlib.contextmanager
def run_folder_lock(run_dir: Path, d: Dist, log):
    """Rank 0 holds the run folder's lock (`claim_run_folder`: one fit per folder, a killed run's temporaries
    removed) while the block runs; a refusal reaches every rank."""
    held = []
    on_main_rank(d, lambda: held.append(claim_run_folder(run_dir, log)))
    try:
        yield
    finally:
        for lock in held:
            lock.release()


def _fit(data: CacheTensors, run_dir: Path, cfg: FitConfig, cache_path: str, progress: bool, log, d: Dist,
         device, held: contextlib.ExitStack) -> Path:
    if not d.is_main:
        log, progress = (lambda msg: None), False
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2 (got {cfg.epochs}, {cfg.batch_size})")
    loss_fn = get_loss(cfg.loss)
    if loss_fn is dsl_loss:
        loss_fn = partial(dsl_loss, temperature=cfg.dsl_temperature)

    caps, usable = train_captions(data)
    val = data.select("val")
    if len(usable) < 2:
        raise ValueError(f"the cache has {len(usable)} usable training videos (decoded, with captions); "
                         "contrastive training needs at least 2")
    steps_per_epoch = math.ceil(len(usable) / cfg.batch_size)

    torch.manual_seed(cfg.seed)
    head = build_head(cfg.model, data.dim, data.max_frames, **cfg.head_options).to(device)
    use_model_logit_scale(head, data.attrs)  # an open_clip backbone's own scale; CLIP's 100 otherwise
    n_params = count_parameters(head)
    if n_params == 0:
        raise ValueError(f"{head.name} has no trainable parameters: zero-shot needs no fitting "
                         "(`vtr eval` evaluates it directly)")
    optimizer = make_optimizer(head, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)

    record = run_record(cfg, data, cache_path)
    held.enter_context(run_folder_lock(run_dir, d, log))
    done, history, best = resume(run_dir, record, cfg, head, optimizer, scheduler, d)
    if done >= cfg.epochs:
        log(f"{run_dir}: run already complete ({done} epochs trained, {cfg.epochs} asked); nothing to do")
        return run_dir
    model = PairLoss(head, loss_fn, d)
    if d.active:
        # Every rank holds the same checkpoint (or the same seeded head); DDP also broadcasts rank 0's
        # parameters.
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG, json.dumps(record, indent=2, default=str) + "\n")
    log(f"fit {head.name} ({n_params:,} parameters) with {cfg.loss} on {len(usable)} training videos, "
        f"{len(val.text_ids)} val captions, device {device}"
        + (f", {d.world_size} processes" if d.active else "") + (f"; resuming after epoch {done}" if done else ""))

    for epoch in range(done + 1, cfg.epochs + 1):
        start = time.time()
        # Dropout stream of this epoch (see module doc); each rank drops out on its own slice.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7919 * d.rank)
        batches = epoch_batches(caps, usable, cfg.batch_size, cfg.seed, epoch)
        train_loss = train_epoch(model, data, batches, optimizer, scheduler, device,
                                 tqdm(total=len(batches), desc=f"epoch {epoch}", disable=not progress, leave=False), d)
        train_seconds = time.time() - start
        if d.is_main:
            history, best = _finish_epoch(head, val, run_dir, cfg, optimizer, scheduler, device, epoch,
                                                    train_loss, start, train_seconds, history, best, d, log)
        d.barrier()  # the others wait while rank 0 validates and writes
    log(f"done: {run_dir} (best epoch {best['epoch'] if best else None})")
    return run_dir


def _finish_epoch(head, val, run_dir, cfg, optimizer, scheduler, device, epoch, train_loss, start, train_seconds,
                  history, best, d, log):
    """Rank 0's end of an epoch: validate, then write best.safetensors (when improved), last.safetensors,
    log.jsonl and curves.png."""
    val_start = time.time()
    metrics = validate(head, val, max(cfg.batch_size, 1024), device) if len(val.text_ids) else None
    entry = {"epoch": epoch, "train_loss": train_loss, "val": metrics,
             "seconds": round(time.time() - start, 3), "train_seconds": round(train_seconds, 3),
             "val_seconds": round(time.time() - val_start, 3), "lr": optimizer.param_groups[0]["lr"],
             "world_size": d.world_size}
    history.append(entry)
    improved = metrics is None or best is None or val_score(metrics) > best["score"]
    if improved:
        best = {"epoch": epoch, "score": val_score(metrics) if metrics else None}
        save_best(run_dir, head.state_dict(), epoch, metrics)
    save_last(run_dir, {"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "best": best})
    atomic_write_text(run_dir / LOG, "".join(json.dumps(h) + "\n" for h in history))
    atomic_write_bytes(run_dir / CURVES, plot_curves(history))

    shown = (" ".join(f"{k} {v:.1f}" for k, v in metrics.items()) if metrics else "no val")
    log(f"epoch {epoch}/{cfg.epochs}  loss {entry['train_loss']:.4f}  val {shown}  "
        f"lr {entry['lr']:.2e}  {entry['seconds']:.1f}s" + ("  *best" if improved and metrics else ""))
    return history, best


def fit(cache_path, run_dir, cfg: FitConfig, progress: bool = True, log=print) -> Path:
    """Read the cache at ``cache_path`` and train on it (see ``fit_tensors``)."""
    from vtr.cache import read_cache  # lazily: the HDF5 reader is only needed here

    # The absolute path, so eval finds the cache from any working directory.
    return fit_tensors(read_cache(cache_path), run_dir, cfg, cache_path=str(Path(cache_path).resolve()),
                       progress=progress, log=log)


def fit_processes(cache_path, run_dir, cfg: FitConfig, nproc: int, progress: bool = True, log=print) -> Path:
    """``fit`` in ``nproc`` data-parallel processes on this machine (what ``torchrun --nproc_per_node`` does).

    Each process reads the cache and trains on its slice of every global batch of ``cfg.batch_size``;
    rank 0 logs and writes ``run_dir``. ``log`` must be picklable (a module-level function). With
    ``nproc`` 1 this is plain ``fit``.
    """
    if nproc <= 1:
        return fit(cache_path, run_dir, cfg, progress=progress, log=log)
    launch(fit, nproc, cache_path, run_dir, cfg, progress, log)
    return Path(run_dir)
