"""Caption speed on MSVD: spaCy parsing, and CLIP text encoding of sentences plus phrases, vtr vs plain.

    python bench/text.py [--n 2000] [--batch 256] [--annotations DIR] [--json text_bench.json]

With the randomly initialised ViT-B/32-shaped CLIP (``random:ViT-B/32``, same text tower as ViT-B/32):
- parse: every MSVD caption (80,827) with vtr's parser (``parse_captions``, one process per core), timed
  on its own; it also gives the phrase counts of the whole dataset for the projection below;
- plain: the loop people write: ``clip.tokenize`` to the 77-token context, ``encode_text`` batch after
  batch in caption order, the sentence and then each of its phrases (as parsed) every time they occur;
- vtr: ``encode_captions`` on the same captions and parses (parse time excluded): the context cut to
  each batch's real token length, texts sorted by length, each distinct phrase (and sentence) encoded once.
Both run on the same seeded random sample of ``--n`` captions (sentences cut to MSVD's 32 tokens in
both, so the embeddings must agree; the largest difference is printed). Captions/s counts a caption
with all its phrases. The whole of MSVD is projected from the sample's rates and the dataset's real
counts: plain = texts to encode / plain texts per second; vtr = sentences it encodes (each distinct
caption of a 16-batch chunk once, as ``vtr extract`` does) x vtr's seconds per sentence + distinct
phrases x vtr's seconds per distinct phrase. Target: vtr >= 5 x plain on the whole of MSVD.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vtr.extract import parse as P
from vtr.core.omp import usable_cores
from vtr.extract.clip_loader import load_clip
from vtr.extract.datasets import load_dataset
from vtr.extract.stage import encode_captions, encode_sorted

from machine_load import LoadWatch, save  # bench/machine_load.py, beside this script
from cpu_info import print_machine  # bench/cpu_info.py

ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations" / "msvd"
TARGET = 5.0


def phrases_of(parse) -> list[list[str]]:
    return [list(parse.action), list(parse.entity), list(parse.scene)]


@torch.no_grad()
def plain_loop(encoder, texts: list[str], parses, batch: int, max_words: int):
    """Sentences and every phrase occurrence at the full 77-token context, in caption order, no reuse.

    Returns (seconds, texts encoded, sentence embeddings [N, D], stream means [N, 3, D]).
    """
    rows, owner = [], []  # (text, max tokens), and (caption, stream) or None for a sentence
    for i, (text, parse) in enumerate(zip(texts, parses)):
        rows.append((text, max_words))
        owner.append((i, -1))
        for k, stream in enumerate(phrases_of(parse)):
            for p in stream:
                rows.append((p, 77))
                owner.append((i, k))
    emb = np.zeros((len(rows), encoder.dim), np.float32)
    t = time.perf_counter()
    for b in range(0, len(rows), batch):
        part = rows[b:b + batch]
        tokens = torch.cat([encoder.tokenize([s], m) for s, m in part])  # padded to 77 tokens
        emb[b:b + len(part)] = encoder.model.encode_text(tokens.to(encoder.device)).float().cpu().numpy()
    seconds = time.perf_counter() - t
    sentence = np.zeros((len(texts), encoder.dim), np.float32)
    sums = np.zeros((len(texts), 3, encoder.dim), np.float32)
    counts = np.zeros((len(texts), 3, 1), np.float32)
    for e, (i, k) in zip(emb, owner):
        if k < 0:
            sentence[i] = e
        else:
            sums[i, k] += e
            counts[i, k] += 1
    return seconds, len(rows), sentence, sums / np.maximum(counts, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--annotations", type=Path, default=ANNOTATIONS, help="MSVD annotation folder")
    ap.add_argument("--n", type=int, default=2000, help="captions in the timed sample")
    ap.add_argument("--batch", type=int, default=256, help="texts per CLIP batch (both ways)")
    ap.add_argument("--seed", type=int, default=0, help="for the sample")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    print_machine("fp32 (CLIP's text tower runs in fp32 at every --precision)")

    load = LoadWatch()
    ds = load_dataset("msvd", args.annotations, annotations=args.annotations, check_videos=False)
    captions = [c.text for c in ds.captions]
    max_words = ds.max_words
    print(f"MSVD: {len(captions)} captions; sentences cut to {max_words} tokens (its protocol)")

    P.load_nlp()
    t = time.perf_counter()
    parses = P.parse_captions(captions, n_process=usable_cores(), progress=True)
    parse_s = time.perf_counter() - t
    occurrences = sum(len(s) for p in parses for s in phrases_of(p))
    distinct = len({x for p in parses for s in phrases_of(p) for x in s})
    print(f"parse: {len(captions) / parse_s:.0f} captions/s ({parse_s:.1f} s, {usable_cores()} processes); "
          f"{occurrences} phrases, {distinct} distinct")

    encoder = load_clip("random:ViT-B/32", device=args.device)
    print(f"{encoder.describe()}; torch threads {torch.get_num_threads()}")
    pick = sorted(random.Random(args.seed).sample(range(len(captions)), min(args.n, len(captions))))
    texts, sparses = [captions[i] for i in pick], [parses[i] for i in pick]
    encoder.encode_texts(["warm up"])

    t = time.perf_counter()
    enc = encode_captions(encoder, texts, args.batch, max_words=max_words, parses=sparses)
    vtr_s = time.perf_counter() - t
    plain_s, plain_texts, plain_sent, plain_phr = plain_loop(encoder, texts, sparses, args.batch, max_words)

    # vtr's parts, for the projection: distinct sentences, and distinct phrases.
    sample_distinct = sorted({x for p in sparses for s in phrases_of(p) for x in s})
    sample_sentences = list(dict.fromkeys(texts))
    t = time.perf_counter()
    encode_sorted(encoder, sample_sentences, args.batch, max_tokens=max_words)
    sent_s = time.perf_counter() - t
    t = time.perf_counter()
    encode_sorted(encoder, sample_distinct, args.batch)
    phr_s = time.perf_counter() - t

    diff_sent = float(np.abs(enc.sentence.astype(np.float32) - plain_sent).max())
    diff_phr = float(np.abs((enc.phrases.astype(np.float32) - plain_phr)[enc.phrase_mask]).max())
    n = len(texts)
    all_plain_s = (len(captions) + occurrences) / (plain_texts / plain_s)
    # run_extract encodes captions in chunks of 16 batches, each distinct sentence of a chunk once
    chunk = 16 * args.batch
    sentences_all = sum(len(set(captions[i:i + chunk])) for i in range(0, len(captions), chunk))
    all_vtr_s = (sentences_all * sent_s / len(sample_sentences)
                 + distinct * phr_s / max(1, len(sample_distinct)))
    res = {
        "captions_all": len(captions), "sentences_encoded_all": sentences_all, "phrases_all": occurrences,
        "distinct_phrases_all": distinct,
        "parse_seconds_all": round(parse_s, 2), "parse_caps_per_s": round(len(captions) / parse_s, 1),
        "parse_processes": usable_cores(),
        "sample": n, "sample_texts_plain": plain_texts, "sample_distinct_phrases": len(sample_distinct),
        "plain_seconds": round(plain_s, 2), "plain_caps_per_s": round(n / plain_s, 2),
        "vtr_seconds": round(vtr_s, 2), "vtr_caps_per_s": round(n / vtr_s, 2),
        "ratio_sample": round(plain_s / vtr_s, 2),
        "projected_all_plain_s": round(all_plain_s, 1), "projected_all_vtr_s": round(all_vtr_s, 1),
        "ratio_all_projected": round(all_plain_s / all_vtr_s, 2),
        "max_abs_diff_sentence": diff_sent, "max_abs_diff_phrase": diff_phr,
        "batch": args.batch, "device": str(encoder.device), "torch_threads": torch.get_num_threads(),
    }
    load_line = load.finish(res)

    print()
    if n < 4 * args.batch:
        print(f"note: a sample under 4 batches ({4 * args.batch} captions) leaves vtr's length-sorted batches "
              f"short, so its figures here are pessimistic; the default --n 2000 is meant for measuring")
    print(f"sample of {n} captions ({plain_texts - n} phrase occurrences, {len(sample_distinct)} distinct):")
    print(f"  plain 77-token loop:  {res['plain_caps_per_s']:8.1f} captions/s ({plain_s:.1f} s)")
    print(f"  vtr encode_captions:  {res['vtr_caps_per_s']:8.1f} captions/s ({vtr_s:.1f} s)  "
          f"x{res['ratio_sample']} on the sample")
    print(f"  largest difference from the 77-token embeddings: sentence {diff_sent:.2e}, phrase stream "
          f"{diff_phr:.2e} (vtr stores float16)")
    met = "met" if res["ratio_all_projected"] >= TARGET else "MISSED"
    print(f"all {len(captions)} MSVD captions (projected): plain {all_plain_s / 3600:.2f} h, "
          f"vtr {all_vtr_s / 60:.1f} min, x{res['ratio_all_projected']} (target >= {TARGET}: {met})")
    print(f"  parsing them: {res['parse_caps_per_s']:.0f} captions/s, {parse_s:.0f} s (not in either figure above)")
    print(load_line)
    save(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
