"""One short check of extraction on a GPU: `random:ViT-B/32` in fp16, frames copied from pinned memory,
on generated clips; its embeddings against the CPU's fp32 ones (min and mean cosine), and its frames per
second against the image tower alone (synthetic input already on the GPU: the bound extraction can reach).
The captions are encoded by the text tower directly, not parsed: spaCy's parse is CPU work, the same on
every machine, and a GPU machine's image need not carry spaCy. Last, a seqTransf head is fitted on the GPU
on those features for a few epochs, and its test metrics, raw and with DSL, evaluated on the GPU and on
the CPU: they should be the same.

    python scripts/gpu_check.py                      # a machine with a CUDA GPU; a few minutes at most
    python scripts/gpu_check.py --device cpu --clip random:tiny --videos 12 --seconds 2   # dry run, CPU only

Without a CUDA GPU (and without --device cpu) it exits 1 with one line and measures nothing. The dry run
goes through the same steps on the CPU, in fp32, and labels every line DRY RUN: its numbers are no GPU's.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tower_bound(encoder, batch: int, seconds: float) -> float:
    """Frames per second of the image tower alone: normalised random input already on the device, in the
    encoder's dtype, batch after batch for about ``seconds`` (after a warm-up)."""
    r = encoder.resolution
    x = torch.randn(batch, 3, r, r, device=encoder.device).to(encoder.dtype)
    for _ in range(2):
        encoder.encode_image(x)
    _sync(encoder.device)
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        encoder.encode_image(x)
        n += 1
    _sync(encoder.device)
    return n * batch / (time.perf_counter() - t0)


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(min, mean) cosine between matching rows of two float arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(c.min()), float(c.mean())


def fit_and_eval(data, work: Path, device: str, epochs: int) -> tuple[dict, dict, dict, float]:
    """A seqTransf head fitted on ``device`` for ``epochs`` (its log), then its test metrics evaluated on
    ``device`` and on the CPU, raw and with DSL: (log, metrics on the device, metrics on the CPU, seconds)."""
    from vtr.eval.evaluate import evaluate
    from vtr.train.fit import FitConfig, fit_tensors
    from vtr.train.runs import load_run

    t = time.perf_counter()
    run = fit_tensors(data, work / f"run-{device.replace(':', '-')}", FitConfig(
        model="seqTransf", epochs=epochs, batch_size=32, device=device), progress=False, log=lambda s: None)
    seconds = time.perf_counter() - t
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    head = load_run(run)[0]
    on = {}
    for where in (device, "cpu"):
        on[where] = {r: {d: evaluate(head, data, split="test", rescore=r, device=where)[d] for d in ("t2v", "v2t")}
                     for r in ("none", "dsl")}
    return log, on[device], on["cpu"], seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda[:N] (the check), or cpu (a dry run of its steps).")
    ap.add_argument("--clip", default="random:ViT-B/32", help="CLIP to load (random weights: nothing to download).")
    ap.add_argument("--videos", type=int, default=48, help="Synthetic clips to generate and extract on the device.")
    ap.add_argument("--reference-videos", type=int, default=48,
                    help="How many of them (the first) the CPU extracts again in fp32 for the cosines.")
    ap.add_argument("--seconds", type=float, default=12.0, help="Length of each clip (1 frame sampled per second).")
    ap.add_argument("--batch", type=int, default=256, help="Frames per batch, in extraction and in the bound.")
    ap.add_argument("--bound-seconds", type=float, default=10.0, help="How long to time the image tower alone.")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs of the seqTransf head fitted on the device.")
    ap.add_argument("--workdir", type=Path, help="Where the clips and the two caches go. Default: a temporary folder.")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args(argv)

    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "nothing was measured (--device cpu runs a dry run of the steps)", file=sys.stderr)
        return 1
    from vtr.cache import read_cache
    from vtr.extract import stage
    from vtr.extract.caption_encoding import encode_sorted
    from vtr.extract.clip_loader import load_clip
    from vtr.extract.synthetic import generate, read_synthetic

    # Captions are parsed by spaCy on the CPU, the same on every machine, and GPU images need not carry
    # spaCy: the check extracts the videos alone and encodes the captions with the text tower directly.
    stage._parser_setting = lambda: "not parsed (scripts/gpu_check.py)"
    tag = "" if on_gpu else "DRY RUN on cpu (no GPU measured): "
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        generate(work / "clips", n_videos=args.videos, seed=0, seconds=args.seconds, progress=False)
        ds = read_synthetic(work / "clips")
        print(f"{tag}{len(ds.videos)} synthetic clips of {args.seconds:g} s in {time.perf_counter() - t0:.1f} s")
        videos = replace(ds, captions=[])
        ref_videos = replace(videos, videos=ds.videos[:args.reference_videos])
        ref_ids = {v.id for v in ref_videos.videos}
        texts = [c.text for c in ds.captions]  # every caption: the fit below needs them all
        in_ref = np.array([c.video_id in ref_ids for c in ds.captions])  # those the CPU encodes again

        # The GPU run: fp16, frames sent as uint8 from pinned memory (ClipEncoder.encode_frames on CUDA).
        enc = load_clip(args.clip, device=args.device, precision="fp16" if on_gpu else "fp32")
        enc.encode_frames(np.zeros((8, enc.resolution, enc.resolution, 3), np.uint8))  # warm-up: kernels, pools
        encode_sorted(enc, texts[:8], 8)
        _sync(enc.device)
        fast = stage.run_extract(videos, enc, work / "device.h5", progress=False, log=lambda s: None,
                                 batch_frames=args.batch)
        name = torch.cuda.get_device_name(enc.device) if on_gpu else "cpu"
        print(f"{tag}{enc.describe()} [{name}]")
        extract_fps = fast.frames_encoded / fast.video_seconds
        where = (f"image tower busy {fast.clip_seconds:.2f} s, "
                 f"waiting for decoded videos {fast.decode_wait_seconds:.2f} s")
        print(f"{tag}extraction: {fast.frames_encoded} frames of {fast.videos_decoded} videos in "
              f"{fast.video_seconds:.2f} s = {extract_fps:.0f} frames/s (decode, copy, image tower, cache rows); "
              + where)
        bound = tower_bound(enc, args.batch, args.bound_seconds)
        print(f"{tag}image tower alone (random input on the device, batch {args.batch}): {bound:.0f} frames/s; "
              f"extraction reaches {100 * extract_fps / bound:.0f}% of it")
        t = time.perf_counter()
        text_dev = encode_sorted(enc, texts, 256)
        _sync(enc.device)
        text_rate = len(texts) / (time.perf_counter() - t)

        cpu = load_clip(args.clip, device="cpu", precision="fp32")
        ref = stage.run_extract(ref_videos, cpu, work / "cpu.h5", progress=False, log=lambda s: None,
                                batch_frames=args.batch)
        a, b = read_cache(work / "device.h5"), read_cache(work / "cpu.h5")
        row_of = {vid: i for i, vid in enumerate(a.video_ids)}
        rows = [row_of[v] for v in b.video_ids]
        valid = a.frame_mask[rows].astype(bool)
        assert (valid == b.frame_mask.astype(bool)).all(), "the two runs sampled different frames"
        frames = cosines(a.frames[rows][valid], b.frames[valid])
        ref_texts = [t for t, keep in zip(texts, in_ref) if keep]
        captions = cosines(text_dev[in_ref], encode_sorted(cpu, ref_texts, 256))
        print(f"{tag}{enc.precision} on {args.device} vs fp32 on cpu ({ref.frames_encoded} frames of "
              f"{len(b.video_ids)} videos, {len(ref_texts)} captions): frames cosine min {frames[0]:.6f} "
              f"mean {frames[1]:.6f}; captions cosine min {captions[0]:.6f} mean {captions[1]:.6f}; "
              f"text tower {text_rate:.0f} captions/s on {args.device}")
        # fit and eval on the device: a head on the device cache, its captions' embeddings from the device
        data = replace(a, text_ids=[c.id for c in ds.captions], captions=texts,
                       text_split=np.array([c.split for c in ds.captions], object),
                       text_video=np.array([row_of[c.video_id] for c in ds.captions]), text_emb=text_dev,
                       phrase_emb=None, phrase_mask=None)
        log, on_device, on_cpu, fit_s = fit_and_eval(data, work, args.device, args.epochs)
        losses = [e["train_loss"] for e in log]
        same = on_device == on_cpu
        print(f"{tag}fit seqTransf {args.epochs} epochs on {args.device} in {fit_s:.1f} s, train loss "
              + " -> ".join(f"{x:.4f}" for x in losses) + f"; its test metrics evaluated on {args.device} and on cpu "
              f"(raw and DSL, both directions): {'the same' if same else 'DIFFERENT'}"
              + ("" if same else f" ({args.device}: {on_device}; cpu: {on_cpu})"))
        if args.json:
            result = {"dry_run": not on_gpu, "device": name, "clip": args.clip, "precision": enc.precision,
                      "torch": torch.__version__, "frames": fast.frames_encoded, "extraction_fps": extract_fps,
                      "tower_bound_fps": bound, "captions_per_s": text_rate, "reference_frames": ref.frames_encoded,
                      "frames_cosine": {"min": frames[0], "mean": frames[1]},
                      "captions_cosine": {"min": captions[0], "mean": captions[1]},
                      "fit": {"epochs": args.epochs, "seconds": fit_s, "train_loss": losses},
                      "eval_same_on_device_and_cpu": same, "eval_on_device": on_device, "eval_on_cpu": on_cpu}
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
