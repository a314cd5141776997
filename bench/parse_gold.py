"""Caption parser accuracy: precision and recall of the head lemmas on hand-labelled real captions.

    python bench/parse_gold.py --gold tests/fixtures/parse_gold.jsonl [-v]

The gold file has one JSON object a line: the caption, its action/entity/scene_lemmas and optionally
its source and split (dev: used while writing the rules; heldout: labelled before the parser saw them).
Tables per split and in all with the lexicon scene rule, then in all with the bare preposition rule
(vtr.extract.parse_rules); -v lists every caption the parser gets wrong. bench/parse.py measures speed.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from vtr.extract.parse import STREAMS, Parse, parse_captions


def read_gold(path: str | Path) -> list[dict]:
    """The gold file: one JSON object a line with caption and action/entity/scene_lemmas (source optional)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from None
            missing = [k for k in ("caption", *(f"{s}_lemmas" for s in STREAMS)) if k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: missing {', '.join(missing)}")
            rows.append(row)
    return rows


def score(gold: list[dict], parses: list[Parse]) -> dict[str, dict[str, float]]:
    """Micro-averaged precision and recall per stream of the predicted lemma sets against the gold sets."""
    result = {}
    for s in STREAMS:
        tp = n_pred = n_gold = 0
        for row, p in zip(gold, parses):
            pred, want = set(getattr(p, f"{s}_lemmas")), {w.lower() for w in row[f"{s}_lemmas"]}
            tp += len(pred & want)
            n_pred += len(pred)
            n_gold += len(want)
        result[s] = {"precision": tp / n_pred if n_pred else 1.0, "recall": tp / n_gold if n_gold else 1.0,
                     "tp": tp, "predicted": n_pred, "gold": n_gold}
    return result


def format_scores(scores: dict[str, dict[str, float]], title: str = "") -> str:
    """A text table: precision, recall and counts per stream."""
    lines = [title] if title else []
    lines.append(f"{'stream':<8} {'precision':>9} {'recall':>7} {'tp':>5} {'pred':>5} {'gold':>5}")
    for s, r in scores.items():
        lines.append(f"{s:<8} {r['precision']:>9.3f} {r['recall']:>7.3f} "
                     f"{r['tp']:>5} {r['predicted']:>5} {r['gold']:>5}")
    return "\n".join(lines)


def gold_report(path: str | Path, verbose: bool = False) -> str:
    """Precision/recall tables on a gold file: per ``split`` field (e.g. dev, heldout) and in all with the
    lexicon scene rule, then in all with the bare preposition rule; with verbose, every mismatch."""
    gold = read_gold(path)
    parses = {rule: parse_captions([r["caption"] for r in gold], scene_rule=rule)
              for rule in ("lexicon", "preposition")}
    parts = []
    splits = sorted({r.get("split", "") for r in gold} - {""})
    for split in splits + ["all"]:
        pairs = [(r, p) for r, p in zip(gold, parses["lexicon"]) if split in ("all", r.get("split"))]
        rows, ps = [r for r, _ in pairs], [p for _, p in pairs]
        parts.append(format_scores(score(rows, ps), f"{path}: {split} ({len(rows)} captions), scene_rule=lexicon"))
    parts.append(format_scores(score(gold, parses["preposition"]),
                               f"{path}: all ({len(gold)} captions), scene_rule=preposition"))
    if verbose:
        for row, p in zip(gold, parses["lexicon"]):
            for s in STREAMS:
                pred, want = set(getattr(p, f"{s}_lemmas")), set(row[f"{s}_lemmas"])
                if pred != want:
                    parts.append(f"  {s:<6} want {sorted(want)} got {sorted(pred)}: {row['caption'].strip()[:90]}")
    return "\n\n".join(parts)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gold", required=True, help="JSON-lines gold file (caption + *_lemmas)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every caption the parser gets wrong")
    args = ap.parse_args(argv)
    print(gold_report(args.gold, verbose=args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
