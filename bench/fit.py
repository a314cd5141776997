"""Training speed at MSR-VTT-9k scale: seconds per epoch, peak memory and achieved FLOP/s of each head.

    python bench/fit.py [--epochs 1] [--models meanP,seqTransf,camoe] [--json fit_bench.json]
    python bench/fit.py --profile camoe --train-videos 1500   # where an epoch's time goes (torch.profiler)

The cache is MSR-VTT-9k-shaped and random (the speed of a step does not depend on the values): 9,000
training videos x 12 frames x 512 (float16, as extract writes them) with 20 captions each (180,000
captions, sentence and 3 phrase embeddings with masks), plus a validation split shaped like the 1k-A test
set (1,000 videos, one caption each; MSR-VTT-9k has no val split of its own and CLIP4Clip validates on
1k-A). It is built in memory, once per model.

Each model runs in a fresh process, so its peak memory (ru_maxrss) is its own: the cache itself (about
0.9 GB) plus training. Trainable heads (seqTransf, camoe) run ``fit_tensors`` with the default FitConfig
(batch 128, DSL, AdamW) for ``--epochs`` epochs, and the figures come from the run's log: epoch_s is a
whole epoch (training + validation), train_s and val_s its parts. meanP has no parameters (``vtr fit``
refuses it), so its row times the same batches through the loss without a backward pass: the floor set
by data gathering and the loss. data_s is the time one epoch spends gathering its batches from the
in-memory cache (row indexing and float16 -> float32), measured apart: it is part of train_s.

It prints the machine first (CPU model, its instruction sets, torch's CPU kernels; ``bench/cpu_info.py``)
and the precision used (float32 on every CPU), and stores both in the JSON.

FLOP/s: the FLOPs of one training step (forward and backward) are counted by
torch.utils.flop_counter.FlopCounterMode (matrix products; the optimizer's elementwise work and CPU
attention kernels, whose cost at 12 frames is small, are not counted), multiplied out to the epoch's
batches and divided by train_s. The baseline is this machine's float32 matmul rate, measured in the same
run (2048 x 2048 products), so ``of_matmul`` is the fraction of the machine the head uses.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from cpu_info import print_machine  # bench/cpu_info.py, beside this script
from vtr.eval.report import write_json
from vtr.cache.records import CacheTensors
from vtr.train.distributed import PairLoss, launch
from vtr.train.fit import FitConfig, epoch_batches, fit_tensors, train_captions, validate
from vtr.train.heads import build_head, text_batch, video_batch
from vtr.train.losses import dsl_loss

MODELS = ("meanP", "seqTransf", "camoe")
TARGET_5_EPOCHS_S = 180.0  # the target: five CAMoE epochs under 3 minutes on a 2-core AVX2-only CPU
PRECISION = "fp32"  # training runs in float32 on every CPU (the cache's float16 is widened on gathering)


def build_cache(n_train=9000, n_val=1000, captions=20, frames=12, dim=512, seed=0) -> CacheTensors:
    """A random MSR-VTT-9k-shaped cache: ``n_train`` videos with ``captions`` each, ``n_val`` with one."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val

    def f16(*shape):  # drawn in float32 a block at a time, so the float32 copy never exists whole
        out = np.empty(shape, np.float16)
        step = max(1, 4_000_000 // int(np.prod(shape[1:])))
        for i in range(0, shape[0], step):
            out[i:i + step] = rng.standard_normal((min(step, shape[0] - i), *shape[1:]), dtype=np.float32)
        return out

    text_video = np.concatenate([np.repeat(np.arange(n_train), captions), np.arange(n_train, n)])
    m = len(text_video)
    lengths = rng.integers(frames // 2, frames + 1, size=n)  # some short videos: padding is exercised
    split = np.array(["train"] * n_train + ["val"] * n_val)
    return CacheTensors(
        video_ids=[f"video{i}" for i in range(n)], frames=f16(n, frames, dim),
        frame_mask=np.arange(frames)[None] < lengths[:, None], video_split=split, video_ok=np.ones(n, bool),
        text_ids=[f"video{v}#{k}" for k, v in enumerate(text_video)], captions=[""] * m,
        text_video=text_video.astype(np.int64), text_split=split[text_video], text_emb=f16(m, dim),
        attrs={"clip_model": "random (bench)", "max_frames": frames},
        phrase_emb=f16(m, 3, dim), phrase_mask=rng.random((m, 3)) < 0.8,
    )


def nbytes(data: CacheTensors) -> int:
    arrays = (data.frames, data.frame_mask, data.text_emb, data.phrase_emb, data.phrase_mask, data.text_video)
    return sum(a.nbytes for a in arrays)


def matmul_gflops(n=2048, reps=10) -> float:
    """float32 n x n matmul rate of this machine (GFLOP/s), the best of ``reps`` timed products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def step_flops(model: str, data: CacheTensors, batch_rows, cfg: FitConfig) -> int:
    """Matmul FLOPs of one training step (forward + backward) on the given (videos, texts) rows."""
    torch.manual_seed(0)
    head = build_head(model, data.dim, data.max_frames, **cfg.head_options)
    loss_fn = partial(dsl_loss, temperature=cfg.dsl_temperature)
    videos, texts = batch_rows
    frames, mask = video_batch(data, videos)
    with FlopCounterMode(display=False) as counter:
        loss = PairLoss(head, loss_fn)(frames, mask, text_batch(data, texts), [len(videos)])
        if loss.requires_grad:
            loss.backward()
    return counter.get_total_flops()


def epoch_flops(model, data, batches, cfg) -> int:
    full = step_flops(model, data, batches[0], cfg)
    last = step_flops(model, data, batches[-1], cfg) if len(batches[-1][0]) != len(batches[0][0]) else full
    return full * (len(batches) - 1) + last


def gather_epoch(data: CacheTensors, batches) -> float:
    """Seconds to gather one epoch's batches from the in-memory cache (index, float16 -> float32)."""
    start = time.perf_counter()
    for videos, texts in batches:
        video_batch(data, videos)
        text_batch(data, texts)
    return time.perf_counter() - start


def forward_epoch(model, data, batches, cfg) -> float:
    """Seconds to push one epoch's batches through the loss without a backward pass (for meanP)."""
    head = build_head(model, data.dim, data.max_frames, **cfg.head_options)
    loss = PairLoss(head, partial(dsl_loss, temperature=cfg.dsl_temperature))
    start = time.perf_counter()
    with torch.no_grad():
        for videos, texts in batches:
            frames, mask = video_batch(data, videos)
            loss(frames, mask, text_batch(data, texts), [len(videos)])
    return time.perf_counter() - start


def _train_rank(shape: dict, run_dir: str, cfg: FitConfig) -> None:
    """One process of a ``--nproc`` run: the same random cache (same seed) on every rank, then fit."""
    fit_tensors(build_cache(**shape), Path(run_dir), cfg, progress=False, log=lambda m: print(m, file=sys.stderr))


def run_model(model: str, epochs: int, shape: dict, threads: int, nproc: int = 1) -> dict:
    """Train (or, for meanP, push through the loss) one model; the figures of this process.

    With ``nproc`` > 1 the trainable heads train in that many data-parallel processes (``launch``); peak
    memory is then the largest of those processes.
    """
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    data = build_cache(**shape)
    build_s = time.perf_counter() - start
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = FitConfig(model=model, epochs=epochs, num_threads=threads)
    caps, usable = train_captions(data)  # rows of data itself, as fit uses them
    batches = epoch_batches(caps, usable, cfg.batch_size, cfg.seed, 1)
    flops = epoch_flops(model, data, batches, cfg)
    gather_s = gather_epoch(data, batches)

    out = {"model": model, "epochs": epochs, "build_s": round(build_s, 1), "data_mib": round(nbytes(data) / 2**20),
           "rss_after_data_mib": round(rss_data), "epoch_gflop": round(flops / 1e9, 1), "steps": len(batches),
           "gather_s": round(gather_s, 3)}
    if model == "meanP":
        train_s = forward_epoch(model, data, batches, cfg)
        start = time.perf_counter()
        validate(build_head(model, data.dim, data.max_frames), data.select("val"), 1024, "cpu")
        val_s = time.perf_counter() - start
        out.update(train_s=train_s, val_s=val_s, epoch_s=train_s + val_s, note="no parameters: forward + loss only")
    else:
        with tempfile.TemporaryDirectory() as run_dir:
            if nproc > 1:
                del data  # each rank builds its own copy
                launch(_train_rank, nproc, shape, run_dir, cfg)
            else:
                fit_tensors(data, Path(run_dir), cfg, progress=False, log=lambda m: print(m, file=sys.stderr))
            log = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
        out.update(train_s=float(np.mean([e["train_seconds"] for e in log])),
                   val_s=float(np.mean([e["val_seconds"] for e in log])),
                   epoch_s=float(np.mean([e["seconds"] for e in log])),
                   epoch_s_each=[e["seconds"] for e in log])
    out["gflops"] = flops / 1e9 / out["train_s"]
    who = resource.RUSAGE_CHILDREN if nproc > 1 and model != "meanP" else resource.RUSAGE_SELF
    out.update(peak_mib=round(resource.getrusage(who).ru_maxrss / 1024), nproc=nproc if model != "meanP" else 1)
    return out


def profile_epoch(model: str, shape: dict, threads: int, top: int = 30) -> None:
    """torch.profiler of one ``fit_tensors`` epoch of ``model``: the operators its time goes to (self CPU time,
    by input shape), so a matmul can be told from the elementwise work around it."""
    from torch.profiler import ProfilerActivity, profile

    if threads:
        torch.set_num_threads(threads)
    data = build_cache(**shape)
    cfg = FitConfig(model=model, epochs=1, num_threads=threads)
    with tempfile.TemporaryDirectory() as run_dir, profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fit_tensors(data, Path(run_dir), cfg, progress=False, log=lambda m: print(m, file=sys.stderr))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=top,
                                                              max_name_column_width=36, max_shapes_column_width=56))


def table(results: dict, matmul: float) -> str:
    head = (f"{'model':<10} {'epoch_s':>8} {'train_s':>8} {'val_s':>6} {'data_s':>6} {'5 epochs':>9} "
            f"{'peak MiB':>9} {'GFLOP/epoch':>11} {'GFLOP/s':>8} {'of matmul':>9}")
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        rows.append(f"{name:<10} {r['epoch_s']:8.1f} {r['train_s']:8.1f} {r['val_s']:6.2f} {r['gather_s']:6.2f} "
                    f"{5 * r['epoch_s'] / 60:7.1f} m {r['peak_mib']:9,d} {r['epoch_gflop']:11,.0f} "
                    f"{r['gflops']:8.1f} {r['gflops'] / matmul:9.1%}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=1, help="epochs timed per model (figures are per-epoch means)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated heads to time")
    ap.add_argument("--train-videos", type=int, default=9000, help="training videos (MSR-VTT-9k: 9,000)")
    ap.add_argument("--captions", type=int, default=20, help="captions per training video (MSR-VTT: 20)")
    ap.add_argument("--val-videos", type=int, default=1000, help="validation videos, one caption each (1k-A: 1,000)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    ap.add_argument("--nproc", default="1",
                    help="train seqTransf/camoe in N data-parallel processes (each with cores/N threads); a "
                         "comma-separated list (1,2) times each, in one run, so their ratio is measured alike")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--profile", metavar="MODEL", help="profile one epoch of MODEL instead of timing")
    ap.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)  # internal: one model, JSON to stdout
    args = ap.parse_args(argv)
    shape = dict(n_train=args.train_videos, captions=args.captions, n_val=args.val_videos)
    nprocs = [int(n) for n in str(args.nproc).split(",")]

    if args.worker:
        print(json.dumps(run_model(args.worker, args.epochs, shape, args.threads, nprocs[0])))
        return 0
    if args.profile:
        profile_epoch(args.profile, shape, args.threads)
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = print_machine(precision=PRECISION)
    matmul = matmul_gflops()
    print(f"float32 2048x2048 matmul: {matmul:.1f} GFLOP/s on {torch.get_num_threads()} threads", file=sys.stderr)
    results = {}
    for nproc in nprocs:
        for model in args.models.split(","):
            if model.lower() == "meanp" and nproc != nprocs[0]:
                continue  # no training: the number of processes does not apply
            name = model.lower() if len(nprocs) == 1 or model.lower() == "meanp" else f"{model.lower()}/{nproc}p"
            print(f"timing {name} ({args.epochs} epoch(s), fresh process) ...", file=sys.stderr)
            cmd = [sys.executable, __file__, "--worker", model, "--epochs", str(args.epochs),
                   "--train-videos", str(args.train_videos), "--captions", str(args.captions),
                   "--val-videos", str(args.val_videos), "--threads", str(args.threads), "--nproc", str(nproc)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if proc.returncode:
                print(f"{name}: the worker failed (exit {proc.returncode}); see its output above", file=sys.stderr)
                return 1
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    print(f"\n{args.train_videos} train videos x {args.captions} captions, {args.val_videos} val videos; "
          f"batch {FitConfig.batch_size}, DSL, {PRECISION}; matmul {matmul:.1f} GFLOP/s"
          + (f"; trained in {nprocs[0]} processes" if nprocs != [1] and len(nprocs) == 1 else ""))
    print(table(results, matmul))
    for name, r in results.items():
        if name.startswith("camoe") and args.train_videos == 9000 and args.captions == 20:  # the target's scale
            five = 5 * r["epoch_s"]
            print(f"five CAMoE epochs ({r['nproc']} process{'es' if r['nproc'] > 1 else ''}): {five / 60:.1f} min "
                  f"(target: under {TARGET_5_EPOCHS_S / 60:.0f} min) -> " + ("met" if five < TARGET_5_EPOCHS_S else "NOT met"))
    if len(nprocs) > 1:
        for model in ("seqtransf", "camoe"):
            base = results.get(f"{model}/{nprocs[0]}p")
            for n in nprocs[1:]:
                other = results.get(f"{model}/{n}p")
                if base and other:
                    print(f"{model}: {n} processes / {nprocs[0]}: epoch time x {other['epoch_s'] / base['epoch_s']:.2f}")
    if args.json:
        models = {name: dict(r, of_matmul=r["gflops"] / matmul) for name, r in results.items()}
        write_json(args.json, {"machine": machine, "matmul_gflops": matmul, "threads": torch.get_num_threads(),
                               "shape": shape, "nproc": nprocs, "batch_size": FitConfig.batch_size, "loss": FitConfig.loss,
                               "models": models})
    return 0


if __name__ == "__main__":
    sys.exit(main())
