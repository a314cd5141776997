"""Caption parsing speed: all 80,827 MSVD captions, once, against spaCy's default pipeline.

    python bench/parse.py [--workers N] [--sample 5000] [--limit N] [--json parse_bench.json]

Measured in one run:
- baseline: ``spacy.load(model)`` with every component (NER too), one process, ``nlp.pipe`` over a
  sample of the captions (the first ``--sample``), Docs only, no phrase rules;
- ours, one process, on the same sample: the pruned pipeline plus the phrase rules and verb repair;
- ours on every caption (each distinct text parsed once) with ``--workers`` processes (default: one
  per core): the figure that counts (target: under 90 s on 2 cores).
Model loading is timed apart from parsing. Captions come from the S2VT text files (``vidN<TAB>caption``).
Accuracy on hand-labelled captions is bench/parse_gold.py's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vtr.extract import parse as P
from vtr.core.omp import usable_cores

from machine_load import LoadWatch, save  # bench/machine_load.py, beside this script
from cpu_info import print_machine  # bench/cpu_info.py

MSVD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations" / "msvd"
TARGET_SECONDS = 90.0


def read_msvd(folder: Path) -> list[str]:
    """Every caption of sents_{train,val,test}_lc_nopunc.txt, in file order."""
    captions = []
    for split in ("train", "val", "test"):
        path = folder / f"sents_{split}_lc_nopunc.txt"
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                vid, sep, text = line.rstrip("\n").partition("\t")
                if not sep:
                    raise ValueError(f"{path}:{n}: expected 'vidN<TAB>caption'")
                captions.append(text)
    return captions


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--msvd", type=Path, default=MSVD_DIR, help="folder with sents_*_lc_nopunc.txt")
    ap.add_argument("--workers", type=int, default=None, help="processes for the full run (default: cores)")
    ap.add_argument("--sample", type=int, default=5000, help="captions for the baseline comparison")
    ap.add_argument("--limit", type=int, default=None, help="parse only the first N captions (quick check)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    print_machine()  # spaCy parsing: no CLIP, no precision

    import spacy

    load = LoadWatch()
    captions = read_msvd(args.msvd)[: args.limit]
    sample = captions[: args.sample]
    n_words = sum(len(c.split()) for c in captions)
    print(f"{len(captions)} MSVD captions ({n_words} words); sample {len(sample)}; model {P.MODEL_NAME}")

    t = time.perf_counter()
    full = spacy.load(P.MODEL_NAME)
    load_full = time.perf_counter() - t
    t = time.perf_counter()
    for _ in full.pipe(sample, batch_size=args.batch_size):
        pass
    base_s = time.perf_counter() - t
    del full

    t = time.perf_counter()
    P.load_nlp()
    load_ours = time.perf_counter() - t
    t = time.perf_counter()
    P.parse_captions(sample, batch_size=args.batch_size, n_process=1)
    ours1_s = time.perf_counter() - t

    workers = args.workers or usable_cores()
    t = time.perf_counter()
    parses = P.parse_captions(captions, batch_size=args.batch_size, n_process=workers, progress=True)
    all_s = time.perf_counter() - t
    assert len(parses) == len(captions)

    res = {
        "captions": len(captions), "distinct": len(set(" ".join(c.split()) for c in captions)),
        "words": n_words, "sample": len(sample), "workers": workers,
        "model": P.MODEL_NAME, "parser_version": P.PARSER_VERSION,
        "components_baseline": ",".join(spacy.load(P.MODEL_NAME).pipe_names),
        "components_ours": ",".join(P.load_nlp().pipe_names),
        "load_seconds_baseline": round(load_full, 2), "load_seconds_ours": round(load_ours, 2),
        "baseline_caps_per_s": round(len(sample) / base_s, 1),
        "ours_1proc_caps_per_s": round(len(sample) / ours1_s, 1),
        "all_seconds": round(all_s, 2), "all_caps_per_s": round(len(captions) / all_s, 1),
        "with_action": sum(bool(p.action) for p in parses) / len(parses),
        "with_entity": sum(bool(p.entity) for p in parses) / len(parses),
        "with_scene": sum(bool(p.scene) for p in parses) / len(parses),
    }
    res["ratio_1proc_vs_baseline"] = round(res["ours_1proc_caps_per_s"] / res["baseline_caps_per_s"], 2)
    res["ratio_all_vs_baseline"] = round(res["all_caps_per_s"] / res["baseline_caps_per_s"], 2)
    res["under_target"] = all_s < TARGET_SECONDS
    load_line = load.finish(res)

    print(f"baseline (all components, 1 process, {len(sample)} captions): {res['baseline_caps_per_s']:.0f} captions/s")
    print(f"ours (1 process, same sample, rules included):      {res['ours_1proc_caps_per_s']:.0f} captions/s "
          f"(x{res['ratio_1proc_vs_baseline']})")
    print(f"ours ({workers} processes, all {len(captions)} captions):          {res['all_caps_per_s']:.0f} captions/s, "
          f"{all_s:.1f} s (x{res['ratio_all_vs_baseline']} baseline; target < {TARGET_SECONDS:.0f} s: "
          f"{'met' if res['under_target'] else 'MISSED'})")
    print(f"captions with an action {res['with_action']:.1%}, entity {res['with_entity']:.1%}, "
          f"scene {res['with_scene']:.1%}")
    print(load_line)
    save(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
