"""CLIP's image tower alone in each precision this machine runs: frames per second, and the cosine to fp32.

    python bench/tower.py [--clip random:ViT-B/32] [--device cpu] [--batch 64] [--seconds 8] [--json tower.json]

Which precision pays depends on the CPU more than on anything vtr does (int8 needs AVX2, bfloat16 is
fast only with AVX512-BF16 or AMX), so this prints the machine first (``bench/cpu_info.py``), then, for
each precision: frames/s of ``encode_frames`` on random uint8 frames already resized (batches of
``--batch``, after one warm-up batch, for about ``--seconds``), its ratio to fp32 measured in the same run,
and the minimum and mean cosine of its embeddings to fp32's on one batch. On a CPU: fp32, bf16 (emulated,
and slow, without bfloat16 instructions) and int8 (where AVX2 and torch's x86 engine are present); on a
GPU: fp32 and fp16. It also prints what ``--precision auto`` resolves to here. Random weights: the cosines
are this architecture's rounding, not a trained model's (``auto`` checks the user's own model).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vtr.core.omp import let_idle_threads_sleep

let_idle_threads_sleep()  # as `vtr extract` does, before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cpu_info import print_machine  # noqa: E402  bench/cpu_info.py, beside this script
from vtr.core.device import resolve_device  # noqa: E402
from vtr.extract.clip_encoder import cpu_flags, resolve_precision  # noqa: E402
from vtr.extract.clip_loader import load_clip  # noqa: E402
from vtr.extract.precision import int8_available  # noqa: E402


def precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fp32", "fp16"]
    return ["fp32", "bf16"] + (["int8"] if int8_available(cpu_flags()) else [])


def frames_per_second(encoder, frames: np.ndarray, seconds: float) -> float:
    encoder.encode_frames(frames)  # warm-up: kernels, packed weights, pools
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        encoder.encode_frames(frames)  # returns on the CPU: a GPU's work is finished when it returns
        n += 1
    return n * len(frames) / (time.perf_counter() - t0)


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a, b = a.astype(np.float64), b.astype(np.float64)
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(c.min()), float(c.mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", default="random:ViT-B/32", help="CLIP to time (random weights: nothing to download).")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N].")
    ap.add_argument("--batch", type=int, default=64, help="Frames per call of the image tower.")
    ap.add_argument("--seconds", type=float, default=8.0, help="How long to time each precision.")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    res = {"machine": print_machine(precision="each of " + ", ".join(precisions(device))), "clip": args.clip,
           "device": str(device), "batch": args.batch, "auto": resolve_precision("auto", device), "rows": []}
    print(f"--precision auto here: {res['auto']}" + (" (int8 if its check on the first frames passes, else fp32)"
                                                   if res["auto"] == "auto" else ""))
    enc = load_clip(args.clip, device=str(device), precision="fp32", progress=False)
    frames = np.random.default_rng(0).integers(0, 256, (args.batch, enc.resolution, enc.resolution, 3), np.uint8)
    reference = enc.encode_frames(frames)
    base = None
    for precision in precisions(device):
        if precision != "fp32":
            enc = load_clip(args.clip, device=str(device), precision=precision, progress=False)
        fps = frames_per_second(enc, frames, args.seconds)
        base = base or fps
        low, mean = cosines(enc.encode_frames(frames), reference)
        res["rows"].append({"precision": precision, "frames_per_s": fps, "vs_fp32": fps / base,
                            "min_cosine": low, "mean_cosine": mean})
        print(f"{precision:>5}: {fps:7.1f} frames/s  {fps / base:4.2f} x fp32  cosine to fp32 min {low:.5f} "
              f"mean {mean:.5f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
