"""Ablation of the CAMoE head on the synthetic dataset: does each part earn its place?

    python bench/ablate.py [--n-videos 600] [--epochs 30] [--json ablation.json]

Part 1 trains, on one cache and with one seed, the seqTransf baseline, CAMoE without the gate (uniform
expert weights) and CAMoE, each with InfoNCE and with DSL. Every model is evaluated with raw scores and
with DSL at inference (transductive), next to zero-shot CLIP.

Part 2 asks whether the matching expert does the work. For every test clip it scores the plain caption
("A red circle moves to the left on the grass") against three captions that differ only in the action,
only in the entity (shape and colour) or only in the scene. Reported:
- pairwise accuracy: how often the true caption outscores the changed one;
- for CAMoE, the same for each expert's own cosine, and the mean gate weight of each expert.

The CLIP is random:tiny, because no weights can be downloaded here. The numbers compare heads on
synthetic data and say nothing about real retrieval.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vtr.cache import read_cache
from vtr.eval.evaluate import evaluate
from vtr.eval.report import format_table, write_json
from vtr.extract.clip_loader import load_clip
from vtr.extract.datasets import load_dataset
from vtr.extract.synthetic import ACTIONS, COLORS, SCENES, SHAPES, canonical_caption
from vtr.extract.stage import encode_captions, run_extract
from vtr.train.fit import FitConfig, fit_tensors
from vtr.train.heads import MeanP, video_batch
from vtr.train.runs import load_run

from cpu_info import print_machine  # bench/cpu_info.py, beside this script

HEADS = [("seqTransf", "seqTransf", {}), ("camoe-nogate", "camoe", {"gate": False}), ("camoe", "camoe", {})]
SWAPS = ("action", "entity", "scene")


def counterfactuals(root: Path, test_ids: list[str], seed: int):
    """(true caption, {swap: changed caption}) for each test clip, from the clips' annotations."""
    ann = {}
    for line in (root / "annotations.jsonl").read_text().splitlines():
        a = json.loads(line)
        ann[a["video"]] = a
    rng = np.random.default_rng(seed)

    def other(options, current):
        return rng.choice([o for o in options if o != current])

    out = []
    for vid in test_ids:
        a = ann[vid]
        base = dict(shape=a["shape"], color=a["color"], action=a["action"], scene=a["scene"])
        swapped = {
            "action": dict(base, action=other(list(ACTIONS), a["action"])),
            "entity": dict(base, shape=other(list(SHAPES), a["shape"]), color=other(list(COLORS), a["color"])),
            "scene": dict(base, scene=other(list(SCENES), a["scene"])),
        }
        out.append((canonical_caption(**base), {k: canonical_caption(**v) for k, v in swapped.items()}))
    return out


@torch.no_grad()
def expert_scores(head, frames, mask, enc, rows):
    """For caption rows ``rows`` of ``enc`` against the videos at the same positions: the gated per-expert
    cosines [N, E] (the fused cosine is their sum), the plain per-expert cosines [N, E] and the gate [N, E]."""
    text = {"sentence": torch.tensor(enc.sentence[rows], dtype=torch.float32),
            "phrases": torch.tensor(enc.phrases[rows], dtype=torch.float32),
            "phrase_mask": torch.tensor(enc.phrase_mask[rows])}
    t, gate = head.encode_text(text)
    cos = (t * head.encode_video(frames, mask)).sum(-1)
    return cos * gate, cos, gate


def pct(hits: torch.Tensor) -> float:
    return round(100 * float(hits.float().mean()), 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("cache/ablate"), help="clips, cache and runs go here")
    ap.add_argument("--n-videos", type=int, default=600, help="synthetic clips")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs of every head")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clips, of training and of the swaps")
    ap.add_argument("--json", type=Path, help="write both tables as JSON here")
    args = ap.parse_args(argv)
    print_machine("fp32")  # the clips are encoded in fp32 on every CPU (below)
    torch.set_num_threads(torch.get_num_threads())

    root = args.workdir / "synthetic"
    dataset = load_dataset("synthetic", root, n_videos=args.n_videos, seed=args.seed, progress=True)
    encoder = load_clip("random:tiny", device="cpu", precision="fp32")  # the same table on every CPU
    cache = args.workdir / "synthetic-random-tiny.h5"
    run_extract(dataset, encoder, cache, log=lambda m: print(m, file=sys.stderr))
    data = read_cache(cache)

    reports = []
    for rescore in ("none", "dsl"):
        reports.append(dict(name="zero-shot" + ("+dsl" if rescore == "dsl" else ""),
                            **evaluate(MeanP(data.dim), data, rescore=rescore, cache_path=str(cache))))
    runs = {}
    for label, model, options in HEADS:
        for loss in ("infonce", "dsl"):
            name = f"{label}/{loss}"
            run_dir = args.workdir / "runs" / f"{label}-{loss}-n{args.n_videos}-e{args.epochs}-s{args.seed}"
            cfg = FitConfig(model=model, loss=loss, epochs=args.epochs, seed=args.seed, head_options=options)
            print(f"training {name}", file=sys.stderr)
            fit_tensors(data, run_dir, cfg, cache_path=str(cache), progress=False, log=lambda m: None)
            runs[name] = run_dir
            head = load_run(run_dir)[0]
            for rescore in ("none", "dsl"):
                reports.append(dict(name=name + (" +dsl" if rescore == "dsl" else ""),
                                    **evaluate(head, data, rescore=rescore, cache_path=str(cache))))
    print(format_table(reports))

    # Part 2: captions that differ in one stream only.
    test = data.select("test")
    cf = counterfactuals(root, test.video_ids, args.seed)
    texts = [t for true, swaps in cf for t in (true, *(swaps[k] for k in SWAPS))]
    enc = encode_captions(encoder, texts)
    frames, mask = video_batch(test, np.arange(len(test.video_ids)))
    true_rows = np.arange(0, len(texts), 4)
    rows_out = []
    for name in ("seqTransf/dsl", "camoe-nogate/dsl", "camoe/dsl"):
        head = load_run(runs[name])[0].eval()
        true, true_cos, gate = expert_scores(head, frames, mask, enc, true_rows)
        row = {"model": name}
        for j, swap in enumerate(SWAPS):
            changed, changed_cos, _ = expert_scores(head, frames, mask, enc, true_rows + 1 + j)
            row[f"{swap} acc"] = pct(true.sum(-1) > changed.sum(-1))
            if name.startswith("camoe") and len(head.experts) > 1:
                # Each expert alone: does its own cosine prefer the true caption? The matching expert should.
                row[f"{swap} experts"] = {e: pct(true_cos[:, k] > changed_cos[:, k]) for k, e in enumerate(head.experts)}
        if name.startswith("camoe") and len(head.experts) > 1:
            row["gate"] = {e: round(float(g), 2) for e, g in zip(head.experts, gate.mean(0))}
        rows_out.append(row)

    print("\nCaptions that differ in one stream only: pairwise accuracy (%), of the head and, for CAMoE, "
          "of each expert alone; and CAMoE's mean gate")
    for row in rows_out:
        accs = "  ".join(f"{s} {row[f'{s} acc']:5.1f}" for s in SWAPS)
        print(f"{row['model']:<18} {accs}")
        for s in SWAPS:
            if f"{s} experts" in row:
                print(f"{'':<18}   {s:>6} swap, by expert: " + ", ".join(f"{e} {v:.0f}" for e, v in row[f"{s} experts"].items()))
        if "gate" in row:
            print(f"{'':<18}   mean gate: " + ", ".join(f"{e} {v:.2f}" for e, v in row["gate"].items()))
    if args.json:
        write_json(args.json, {"retrieval": reports, "counterfactual": rows_out,
                               "settings": vars(args) | {"workdir": str(args.workdir), "json": str(args.json)}})


if __name__ == "__main__":
    main()
