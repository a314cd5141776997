"""Extraction speed: vtr's parallel ffmpeg decode + batched CLIP against its limits and the naive approach.

    python bench/extract.py [--n-clips 40] [--n-hd 4] [--batch 256] [--workers N] [--workdir DIR]
                            [--quick] [--precision auto] [--quality-videos DIR] [--json extract_bench.json]

All figures are frames encoded by CLIP per second of wall time, with the same randomly initialised
ViT-B/32-shaped CLIP (``random:ViT-B/32``), the same batch size and the same frames per clip. vtr's
figures use its default precision (``--precision auto``: bf16 on a CPU with bfloat16 instructions, fp16
on a GPU, int8 on other x86 CPUs when it passes its quality check on the first frames, else fp32;
``--precision`` here changes it); b is also measured in fp32; the naive c runs stock
CLIP as ``clip.load`` gives it (fp32 on the CPU, fp16 on a GPU; OpenAI's code unchanged, where vtr's image
tower runs its MLPs fused, ``fuse_quick_gelu``), what users of the naive way run today:
- a, the limit: ``encode_image`` alone on frames already decoded and normalised, at the precision b used;
- d, decode only: vtr's ffmpeg decode (same workers, same window), no CLIP;
- bound: on a GPU, min(a, d) (decoding runs on the CPU beside it, so the slower of the two sets the
  pace); on the CPU, where decode and CLIP share the cores, 1 / (1/a + 1/d);
- b, vtr: ``run_extract`` end to end into a fresh cache, timed over the video part only (no captions
  are given, so no caption is parsed or encoded); b fp32: the same with ``--precision fp32``;
- c, naive: what CLIP4Clip's raw video extractor does, with PyAV: decode every frame in Python, take one
  frame a second, PIL bicubic resize + centre crop + ToTensor + Normalize per frame (CLIP's own
  transform), then the uniform choice of max_frames and CLIP in batches of the same size.
a, d and b run as ``vtr extract`` runs, with idle OpenMP threads sleeping (``vtr.core.omp``); c runs in a process
of its own with the environment the script was started with, as a user's script would.
- quality: the cosine of each frame's embedding at b's precision to its fp32 embedding (minimum and mean),
  over real videos (``--quality-videos``, default /work/shared/data/videos where it exists, else the
  benchmark's own), decoded as vtr decodes them; with random weights (``random:ViT-B/32``), so it is
  int8's error on this architecture, not on trained CLIP's weights (``auto`` checks the user's own model).
Targets: b >= 0.85 x bound, b >= 2 x c. The videos are made by this script with ffmpeg (testsrc2 with
temporal noise, H.264): ``--n-clips`` clips of 10-30 s at 640x360 plus ``--n-hd`` at 1280x720, 30 fps.
They are kept in ``--workdir`` (default: a temporary folder) and reused by later runs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vtr.core.omp import let_idle_threads_sleep, usable_cores

USER_ENV = dict(os.environ)  # for c, before vtr extract's OpenMP setting below
if "--naive-only" not in sys.argv:
    let_idle_threads_sleep()  # as `vtr extract` does, before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vtr.core.device import resolve_device  # noqa: E402
from vtr.extract.clip_encoder import CLIP_MEAN, CLIP_STD, build_random  # noqa: E402
from vtr.extract.clip_loader import load_clip
from vtr.extract.decode import uniform_indices  # noqa: E402
from vtr.extract.precision import describe_gate  # noqa: E402
from vtr.extract.stage import DecodeOptions, decode_window, decoded_in_order, run_extract  # noqa: E402
from vtr.cache.records import Dataset, VideoItem  # noqa: E402

from machine_load import LoadWatch, save  # noqa: E402  (bench/machine_load.py, beside this script)
from cpu_info import machine_info, print_machine  # noqa: E402  (bench/cpu_info.py)

TARGET_VS_BOUND, TARGET_VS_NAIVE = 0.85, 2.0
QUALITY_VIDEOS = Path("/work/shared/data/videos")  # real clips of the build machines (SOURCES.md there)


def cpu_seconds() -> float:
    """CPU time used so far by this process and its finished children (the ffmpeg processes).

    Other work on the machine stretches wall times but barely changes CPU time, so CPU seconds per frame
    say how much work each approach does even when the cores are shared.
    """
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# ------------------------------------------------------------------------------------------ the videos

def make_videos(folder: Path, n_clips: int, n_hd: int, seed: int = 0) -> list[Path]:
    """``n_clips`` 640x360 and ``n_hd`` 1280x720 H.264 clips of 10-30 s at 30 fps (existing files are kept).

    testsrc2 moves; temporal noise makes every frame differ, so the decoder does real work (about
    0.55 Mbit/s at 360p and 1.9 Mbit/s at 720p, like web video).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    specs = [("sd", i, "640x360", rng.randint(10, 30)) for i in range(n_clips)]
    specs += [("hd", i, "1280x720", rng.randint(10, 30)) for i in range(n_hd)]
    paths = []
    for kind, i, size, seconds in specs:
        path = folder / f"{kind}{i:03d}_{seconds}s.mp4"
        paths.append(path)
        if path.is_file():
            continue
        src = f"testsrc2=size={size}:rate=30,hue=h={(i * 53) % 360},noise=alls=6:allf=t"
        tmp = path.with_suffix(".tmp.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-t", str(seconds),
                        "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p", str(tmp)],
                       check=True)
        tmp.rename(path)
    return paths


# ------------------------------------------------------------------------------------------ a, d, b

def decode_only(paths, opt: DecodeOptions, workers: int, window: int):
    """d: vtr's decode with the extractor's workers and window, nothing else. Returns (fps, frames)."""
    items = [VideoItem(p.stem, p, "test") for p in paths]
    t = time.perf_counter()
    frames = []
    for item, f, _, error, _ in decoded_in_order(items, opt, workers, window):
        if f is None:
            raise RuntimeError(error)
        frames.append(f)
    seconds = time.perf_counter() - t
    n = sum(len(f) for f in frames)
    return n / seconds, frames


@torch.no_grad()
def clip_limit(encoder, frames: list[np.ndarray], batch: int, min_batches: int = 2) -> float:
    """a: ``encode_image`` alone on normalised tensors prepared beforehand, ``batch`` frames a call."""
    x = torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = x.to(encoder.device, encoder.dtype)
    while len(x) < min_batches * batch:  # too few frames decoded for two full batches: reuse them
        x = torch.cat([x, x])
    batches = [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)]
    encoder.encode_image(batches[0][:4])  # warm-up (allocations, kernels)
    t = time.perf_counter()
    for b in batches:
        encoder.encode_image(b)  # at the encoder's precision, as run_extract runs it
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return len(batches) * batch / (time.perf_counter() - t), len(batches) * batch + 4


def vtr_end_to_end(paths, encoder, out: Path, workers: int, batch: int, max_frames: int, nice: int):
    """b: ``run_extract`` into a fresh cache; frames per second of the video part's wall time."""
    ds = Dataset("bench", [VideoItem(p.stem, p, "test") for p in paths], [], max_frames=max_frames)
    stats = run_extract(ds, encoder, out, workers=workers, batch_frames=batch, progress=False,
                        log=lambda m: None, decode_nice=nice)
    if stats.videos_failed:
        raise RuntimeError(f"{stats.videos_failed} benchmark videos failed to decode")
    return stats.frames_encoded / stats.video_seconds, stats


@torch.no_grad()
def quality(paths, encoder, fp32, workers: int, max_frames: int, batch: int) -> dict:
    """Cosine of ``encoder``'s embeddings to ``fp32``'s, frame by frame, on ``paths`` decoded at 2 frames a
    second (``max_frames`` kept per video), encoded in batches of ``batch`` as run_extract batches them."""
    opt = DecodeOptions(encoder.resolution, 2.0, max_frames, threads=1, nice=0)
    _, frames = decode_only(paths, opt, workers, decode_window(workers, batch, max_frames))
    x = np.concatenate(frames)
    cos = []
    for i in range(0, len(x), batch):
        a, b = (torch.from_numpy(e.encode_frames(x[i:i + batch])).float() for e in (encoder, fp32))
        cos.append(torch.nn.functional.cosine_similarity(a, b, dim=-1))
    cos = torch.cat(cos)
    return {"videos": len(paths), "frames": len(cos), "min_cosine": round(float(cos.min()), 6),
            "mean_cosine": round(float(cos.mean()), 6)}


def media_files(folder: Path) -> list[Path]:
    """The video files of a folder (by extension), sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".mp4", ".avi", ".mkv", ".webm", ".mov"})


# ------------------------------------------------------------------------------------------ c (naive)

def naive_frames(path: Path, preprocess, fps: float = 1.0) -> torch.Tensor:
    """CLIP4Clip's raw-video way, with PyAV: every frame decoded in Python, one a second kept, each
    preprocessed on its own with CLIP's PIL transform. Returns [n, 3, R, R] for all the 1-fps frames."""
    import av

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        next_t = 0.0
        for frame in container.decode(stream):
            if frame.time is None or frame.time + 1e-6 < next_t:
                continue
            out.append(preprocess(frame.to_image()))
            next_t += 1.0 / fps
    return torch.stack(out)


def stock_clip(device: torch.device) -> torch.nn.Module:
    """The naive way's CLIP: OpenAI's code as ``clip.load`` gives it (fp16 weights on a GPU, fp32 on the
    CPU), with the weights of ``random:ViT-B/32``; none of vtr's changes (no fused MLPs, no autocast)."""
    model = build_random("ViT-B/32").to(device).eval()
    return model.half() if device.type == "cuda" else model.float()


@torch.no_grad()
def naive(paths, model, batch: int, max_frames: int) -> tuple[float, int]:
    """c: decode and preprocess per frame in this process, then CLIP in batches of ``batch``: the plain
    ``model.encode_image`` of stock CLIP (`stock_clip`), in its weights' dtype."""
    import clip as openai_clip

    device, dtype = model.visual.conv1.weight.device, model.visual.conv1.weight.dtype
    # Resize(bicubic), CenterCrop, ToTensor, Normalize
    preprocess = openai_clip.clip._transform(model.visual.input_resolution)
    pending, n = [], 0
    t = time.perf_counter()
    for path in paths:
        frames = naive_frames(path, preprocess)
        pending.append(frames[uniform_indices(len(frames), max_frames)])  # CLIP4Clip picks after preprocessing
        if sum(len(p) for p in pending) >= batch:
            x = torch.cat(pending)
            model.encode_image(x.to(device, dtype)).float().cpu()
            n += len(x)
            pending = []
    if pending:
        x = torch.cat(pending)
        model.encode_image(x.to(device, dtype)).float().cpu()
        n += len(x)
    return n / (time.perf_counter() - t), n


def require_pyav() -> None:
    """c needs PyAV, an optional extra: say which one, in one line, before minutes of other measurements."""
    import importlib.util

    if importlib.util.find_spec("av") is None:
        sys.exit("bench/extract.py: the naive baseline (c) needs PyAV, the 'bench' extra: "
                 ".venv/bin/python -m pip install -c constraints.txt -e '.[bench]' (or pass --skip-naive)")


def naive_in_own_process(paths, args) -> tuple[float, int, float]:
    """c in a fresh process with the user's environment: (frames/s, frames, CPU seconds per frame)."""
    cmd = [sys.executable, __file__, "--naive-only", "--batch", str(args.batch), "--max-frames", str(args.max_frames),
           "--device", args.device, *[str(p) for p in paths]]
    if args.torch_threads:
        cmd += ["--torch-threads", str(args.torch_threads)]
    out = subprocess.run(cmd, env=USER_ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the naive measurement failed:\n{out.stderr}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["fps"], r["frames"], r["cpu_per_frame"]


def naive_only(args) -> int:
    """The body of ``--naive-only``: c on the videos given, one JSON line on stdout."""
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    model = stock_clip(resolve_device(args.device))
    c0 = cpu_seconds()
    c, n = naive([Path(p) for p in args.videos], model, args.batch, args.max_frames)
    print(json.dumps({"fps": c, "frames": n, "cpu_per_frame": (cpu_seconds() - c0) / n}))
    return 0


# ------------------------------------------------------------------------------------------ report

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-clips", type=int, default=40, help="640x360 clips of 10-30 s")
    ap.add_argument("--n-hd", type=int, default=4, help="1280x720 clips of 10-30 s")
    ap.add_argument("--quick", action="store_true", help="a fast check (about 2 minutes on 2 quiet cores): 6 + 1 "
                    "clips, batch 32, 12 frames per real video for the quality figure")
    ap.add_argument("--batch", type=int, default=256, help="frames per CLIP batch, for a, b and c alike")
    ap.add_argument("--max-frames", type=int, default=12, help="frames kept per clip (CLIP4Clip's uniform choice)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: one per usable core)")
    ap.add_argument("--nice", type=int, default=0, help="ffmpeg niceness in b (vtr's default: 0)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch's threads for CLIP (default: torch's own, one per core)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                    help="vtr's CLIP precision for a and b (default: vtr's own default, auto)")
    ap.add_argument("--workdir", type=Path, help="keep the videos here (default: a temporary folder)")
    ap.add_argument("--skip-naive", action="store_true", help="do not measure c (it is the slowest part)")
    ap.add_argument("--quality-videos", type=Path, default=QUALITY_VIDEOS if QUALITY_VIDEOS.is_dir() else None,
                    help="real videos for the quality figure (default: /work/shared/data/videos where it exists, "
                         "else the benchmark's own)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)  # c alone, on the videos given
    ap.add_argument("videos", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.skip_naive:
        require_pyav()
    if args.naive_only:
        return naive_only(args)
    if args.quick:
        args.n_clips, args.n_hd, args.batch = min(args.n_clips, 6), min(args.n_hd, 1), min(args.batch, 32)

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="vtr-bench-extract-")
        args.workdir = Path(tmp.name)
    load = LoadWatch()
    t = time.perf_counter()
    paths = make_videos(args.workdir / "videos", args.n_clips, args.n_hd)
    print(f"{len(paths)} videos in {args.workdir / 'videos'} ({time.perf_counter() - t:.0f} s to make or find)")

    print_machine(f"{args.precision} asked (the precision used is printed with b)")
    encoder = load_clip("random:ViT-B/32", device=args.device, precision=args.precision)
    fp32 = load_clip("random:ViT-B/32", device=args.device, precision="fp32")
    stock_precision = "fp16" if fp32.device.type == "cuda" else "fp32"  # what stock_clip gives
    workers = args.workers or usable_cores()
    nice = args.nice
    print(f"{encoder.describe()}; torch threads {torch.get_num_threads()}; {workers} decode workers "
          f"(ffmpeg -threads 1, nice {nice}); batch {args.batch}; {args.max_frames} frames per clip")
    prec_c = f"stock CLIP, {stock_precision}"

    opt = DecodeOptions(encoder.resolution, 1.0, args.max_frames, threads=1, nice=0)
    cpu = {}
    c0 = cpu_seconds()
    d, frames = decode_only(paths, opt, workers, decode_window(workers, args.batch, args.max_frames))
    cpu["d"] = (cpu_seconds() - c0) / sum(len(f) for f in frames)
    print(f"d  decode only            {d:8.1f} frames/s  ({sum(len(f) for f in frames)} frames)")

    # b first: with --precision auto its first frames decide the precision (vtr.extract.precision), and
    # that check's cost is part of b, as it is of every `vtr extract` run.
    out = args.workdir / f"bench-{time.time_ns()}.h5"
    c0 = cpu_seconds()
    b, stats = vtr_end_to_end(paths, encoder, out, workers, args.batch, args.max_frames, nice)
    prec = encoder.precision
    print(f"b  vtr extract            {b:8.1f} frames/s  "
          f"({prec}; {stats.frames_encoded} frames in {stats.video_seconds:.1f} s)")
    if encoder.gate:
        print(f"   auto's check on b's first frames: {describe_gate(encoder.gate)} -> {prec}")
    cpu["b"] = (cpu_seconds() - c0) / stats.frames_encoded
    out.unlink(missing_ok=True)

    limit_encoder = fp32 if prec == "fp32" else load_clip("random:ViT-B/32", device=args.device, precision=prec)
    c0 = cpu_seconds()
    a, n_a = clip_limit(limit_encoder, frames, args.batch)
    cpu["a"] = (cpu_seconds() - c0) / n_a
    print(f"a  CLIP encode_image only {a:8.1f} frames/s  ({prec})")
    gpu = encoder.device.type == "cuda"
    bound = min(a, d) if gpu else 1.0 / (1.0 / a + 1.0 / d)
    why = "min(a, d): decode runs beside the GPU" if gpu else "1/(1/a+1/d): decode and CLIP share the cores"
    print(f"   bound                  {bound:8.1f} frames/s  ({why})")

    if prec == "fp32":  # b is already the fp32 figure
        b32, cpu["b_fp32"] = b, cpu["b"]
    else:
        out = args.workdir / f"bench-{time.time_ns()}-fp32.h5"
        c0 = cpu_seconds()
        b32, stats32 = vtr_end_to_end(paths, fp32, out, workers, args.batch, args.max_frames, nice)
        cpu["b_fp32"] = (cpu_seconds() - c0) / stats32.frames_encoded
        out.unlink(missing_ok=True)
    print(f"b  vtr extract, fp32      {b32:8.1f} frames/s  (fp32)")

    quality_paths = media_files(args.quality_videos) if args.quality_videos else paths
    q_where = str(args.quality_videos) if args.quality_videos else "the benchmark's own (synthetic) videos"
    if prec == "fp32":
        qual = {"videos": 0, "frames": 0, "min_cosine": 1.0, "mean_cosine": 1.0}
        print("quality: b ran in fp32, the reference itself")
    else:
        qual = quality(quality_paths, limit_encoder, fp32, workers, 12 if args.quick else 32, args.batch)
        print(f"quality: {prec} vs fp32 on {qual['frames']} frames of {qual['videos']} videos in {q_where}: "
              f"min cosine {qual['min_cosine']:.5f}, mean {qual['mean_cosine']:.5f} (random weights: see the doc)")
    c, n_naive, cpu["c"] = (float("nan"), 0, float("nan")) if args.skip_naive else naive_in_own_process(paths, args)
    if not args.skip_naive:
        print(f"c  naive (PyAV + PIL)     {c:8.1f} frames/s  ({prec_c}; {n_naive} frames)")

    vs = stats.video_seconds
    other = vs - stats.clip_seconds - stats.decode_wait_seconds - stats.write_seconds
    res = {
        "limit_fps": round(a, 2), "decode_fps": round(d, 2), "bound_fps": round(bound, 2), "vtr_fps": round(b, 2),
        "naive_fps": round(c, 2) if c == c else None, "vtr_fp32_fps": round(b32, 2),
        "precision": prec, "naive_precision": stock_precision,
        "vtr_vs_bound": round(b / bound, 3), "vtr_vs_naive": round(b / c, 3) if c == c else None,
        "vtr_fp32_vs_naive": round(b32 / c, 3) if c == c else None,
        "naive_vs_limit": round(c / a, 3) if c == c else None,
        "time_split_b": {"wall_s": round(vs, 2), "clip_s": round(stats.clip_seconds, 2),
                         "wait_decode_s": round(stats.decode_wait_seconds, 2),
                         "cache_write_s": round(stats.write_seconds, 2), "other_s": round(other, 2)},
        "videos": len(paths), "frames": stats.frames_encoded, "batch": args.batch, "max_frames": args.max_frames,
        "workers": workers, "nice": nice, "device": str(encoder.device), "torch_threads": torch.get_num_threads(),
        "cores": usable_cores(),
        "quality_vs_fp32": {**qual, "precision": prec, "where": q_where},
        "auto_check": encoder.gate, "machine": machine_info(prec),
        "cpu_ms_per_frame": {k: round(1000 * v, 1) for k, v in cpu.items() if v == v},
    }
    load_line = load.finish(res, usable_cores())

    print()
    print(f"{'figure':34s} {'frames/s':>9s}  CLIP precision")
    for name, key, p in [("a  limit: CLIP alone", "limit_fps", prec), ("d  decode only", "decode_fps", "-"),
                         ("   bound", "bound_fps", prec), ("b  vtr extract (default)", "vtr_fps", prec),
                         ("b  vtr extract, fp32", "vtr_fp32_fps", "fp32"), ("c  naive", "naive_fps", prec_c)]:
        v = res[key]
        print(f"{name:34s} {v if v is not None else float('nan'):9.1f}  {p}")
    print(f"b / bound = {res['vtr_vs_bound']:.2f} (target >= {TARGET_VS_BOUND}; a and b both in {prec})")
    if c == c:
        print(f"b / c     = {res['vtr_vs_naive']:.2f} (target >= {TARGET_VS_NAIVE}; b in {prec}, c in {prec_c}); "
              f"c / a = {res['naive_vs_limit']:.2f}: "
              f"b can be at most a, so b / c <= a / c = {a / c:.2f} on this machine")
        print(f"b fp32 / c = {res['vtr_fp32_vs_naive']:.2f} (b in fp32, c in {prec_c}: on the CPU, the pipeline's gain alone)")
    ts = res["time_split_b"]
    print(f"where b's {vs:.1f} s went (main thread): CLIP busy {ts['clip_s']:.1f} s ({ts['clip_s'] / vs:.0%}), "
          f"waiting for decode {ts['wait_decode_s']:.1f} s ({ts['wait_decode_s'] / vs:.0%}), "
          f"cache writes {ts['cache_write_s']:.1f} s, other {other:.1f} s")
    print(f"   CLIP alone would take {stats.frames_encoded / a:.1f} s for these frames: in b it ran at "
          f"{stats.frames_encoded / max(stats.clip_seconds, 1e-9):.1f} frames/s while busy")
    cm = res["cpu_ms_per_frame"]
    print("CPU time per frame (ms; robust to other work on the machine): "
          + ", ".join(f"{k} {v}" for k, v in cm.items())
          + f"; a + d = {cm['a'] + cm['d']:.1f}, so b does {(cm['a'] + cm['d']) / cm['b']:.2f} x the useful work per "
          f"CPU second" + (f"; c / b = {cm['c'] / cm['b']:.2f}" if "c" in cm else ""))
    print(f"quality of b's embeddings ({prec}) against fp32: min cosine {qual['min_cosine']:.5f}, mean "
          f"{qual['mean_cosine']:.5f} over {qual['frames']} frames of {q_where}")
    print(load_line)
    save(res, args.json)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
