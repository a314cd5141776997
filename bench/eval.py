"""Benchmark: time and peak memory of chunked evaluation (raw, DSL, QB-Norm) against the bare matrix product.

    python bench/eval.py                          # 1k, 10k and 100k texts x videos (100k takes many minutes)
    python bench/eval.py --sizes 1000,10000 --json bench-eval.json

For each size n: n captions and n videos (one caption per video, so V2T caption groups are the captions),
512-d random L2-normalised embeddings, scored as zero-shot CLIP (meanP: one expert, so the matrix product is
the core cost). Modes: ``raw`` ranks raw logits, ``dsl`` inference-time Dual Softmax (two passes over the
tiles; pass 2 reuses the tiles kept from pass 1 within vtr's default budget of 1 GiB, so up to about 16k x 16k
it scores the matrix once), ``dsl_streamed`` the same with no tiles kept (every tile scored in both passes,
which is what sizes beyond the budget do), ``qbnorm`` QB-Norm with a query bank of n captions (T2V) and n
videos (V2T), the size of the test set,
so it scores two bank matrices of the same size besides the test one. ``matmul`` is the baseline: one pass
of text x video products over the same tiles and nothing else (no ranking).

It first prints the machine (``bench/cpu_info.py``: CPU model, the instruction sets that decide its speed,
torch's CPU kernels) and the precision of the scores (float32 products, DSL's normalisers in float64), and
stores them in the JSON as ``machine``: figures from CPUs of another kind do not apply.

Every run happens in a fresh subprocess, so runs cannot share memory or warm caches; its peak memory is the
``ru_maxrss`` of that whole process (Python, torch and the embeddings included, not only the ranking).
Seconds cover the ranking alone, not the making of the random embeddings: the best of ``--repeat`` runs in that
process (this 2-core machine is noisy; the best run is the one least disturbed). Ratios are seconds divided by
the matmul seconds of the same size, measured in the same invocation.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("raw", "dsl", "dsl_streamed", "qbnorm")
PRECISION = "fp32 (scores and products in float32; DSL's and QB-Norm's normalisers in float64)"
RESCORE = {"raw": "none", "dsl": "dsl", "dsl_streamed": "dsl", "qbnorm": "qbnorm"}
DIM = 512


def _embeddings(n: int, seed: int):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 1, DIM, generator=g), dim=-1)


def worker(size: int, mode: str, chunk: int, threads: int | None = None, repeat: int = 1) -> dict:
    """One measurement in this process: returns the best seconds of ``repeat`` runs and the peak memory."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    from vtr.eval.evaluate import DSL_MEMORY_MIB, TileScorer, chunked_ranks
    from vtr.core.metrics import plan_blocks
    from vtr.train.heads import MeanP

    head = MeanP(DIM)
    t, v = _embeddings(size, 1), _embeddings(size, 2)
    gate = torch.ones(size, 1)
    text_video = np.arange(size)
    bank = (_embeddings(size, 3), torch.ones(size, 1), _embeddings(size, 4)) if mode == "qbnorm" else None
    extra, times = {}, []
    for _ in range(repeat):
        start = time.perf_counter()
        if mode == "matmul":
            blocks = plan_blocks(text_video, size, chunk)
            score = TileScorer(head, t, gate, v)
            with torch.no_grad():
                for r in range(len(blocks)):
                    for c in range(len(blocks)):
                        score(blocks.texts(r), blocks.videos(c))
            extra["tiles"] = len(blocks) ** 2
        else:
            budget = 0 if mode == "dsl_streamed" else DSL_MEMORY_MIB
            t2v, v2t = chunked_ranks(head, t, gate, v, text_video, rescore=RESCORE[mode], bank=bank, chunk=chunk,
                                     dsl_memory_mib=budget)
            extra["t2v_r1"] = float((t2v == 1).mean() * 100)  # random embeddings: chance level, a sanity check
            extra["v2t_r1"] = float((v2t == 1).mean() * 100)
        times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"seconds": min(times), "all_seconds": times, "peak_mib": peak_mib, "threads": torch.get_num_threads(),
            **extra}


def run_isolated(size: int, mode: str, chunk: int, threads: int | None = None, repeat: int = 1) -> dict:
    """``worker`` in a fresh Python process (so peak memory is this run's alone)."""
    cmd = [sys.executable, __file__, "--worker", mode, "--sizes", str(size), "--chunk", str(chunk),
           "--repeat", str(repeat)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_table(runs: list[dict]) -> str:
    header = ["texts", "videos", "mode", "seconds", "matmul s", "x matmul", "peak MiB"]
    rows = [[f"{r['texts']:,}", f"{r['videos']:,}", r["mode"], f"{r['seconds']:.2f}", f"{r['matmul_seconds']:.2f}",
             f"{r['seconds'] / r['matmul_seconds']:.2f}", f"{r['peak_mib']:.0f}"] for r in runs]
    widths = [max(len(x[i]) for x in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="Comma-separated numbers of texts (= videos) to measure (default: %(default)s).")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="Comma-separated modes among %s (default: %%(default)s)." % ", ".join(MODES))
    parser.add_argument("--chunk", type=int, default=None,
                        help="Tile edge (captions and videos per tile). Default: vtr's evaluation default.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: torch's own choice, one per core).")
    parser.add_argument("--repeat", type=int, default=None,
                        help="Timed runs per measurement, the best one reported (default: 3 below 100k, else 1).")
    parser.add_argument("--json", metavar="PATH", help="Also write the runs as JSON: {\"runs\": [...]}.")
    parser.add_argument("--worker", choices=MODES + ("matmul",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from vtr.core.metrics import DEFAULT_TILE

    chunk = args.chunk or DEFAULT_TILE
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.worker:
        print(json.dumps(worker(sizes[0], args.worker, chunk, args.threads, args.repeat or 1)))
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose among {', '.join(MODES)}")

    from cpu_info import print_machine  # bench/cpu_info.py, beside this script

    machine = print_machine(precision=PRECISION)
    runs = []
    for size in sizes:
        repeat = args.repeat or (3 if size < 100_000 else 1)
        base = run_isolated(size, "matmul", chunk, args.threads, repeat)
        print(f"{size:,} x {size:,}: matmul {base['seconds']:.2f} s, peak {base['peak_mib']:.0f} MiB", file=sys.stderr)
        for mode in modes:
            r = run_isolated(size, mode, chunk, args.threads, repeat)
            runs.append({"texts": size, "videos": size, "mode": mode, "seconds": r["seconds"],
                         "matmul_seconds": base["seconds"], "peak_mib": r["peak_mib"],
                         "matmul_peak_mib": base["peak_mib"], "chunk": chunk, "threads": r["threads"],
                         "repeat": repeat, "all_seconds": r["all_seconds"], "matmul_all_seconds": base["all_seconds"],
                         "t2v_r1": r["t2v_r1"], "v2t_r1": r["v2t_r1"]})
            print(f"  {mode}: {r['seconds']:.2f} s ({r['seconds'] / base['seconds']:.2f} x matmul), "
                  f"peak {r['peak_mib']:.0f} MiB", file=sys.stderr)
    print(format_table(runs))
    print("peak MiB: ru_maxrss of the whole run's process (Python, torch, embeddings and ranking), one fresh "
          "process per run")
    if args.json:
        from vtr.core.files import atomic_write_text

        atomic_write_text(args.json, json.dumps({"machine": machine, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
