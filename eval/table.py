"""`vtr table`: the paper-shaped table of one cache (zero-shot and every finished run, raw, QB-Norm and
DSL, both directions), with the published rows of its benchmark beside ours, as Markdown, CSV and JSON.

Our numbers are the reports of `vtr.eval.stage` (the same as `vtr eval --json`); the published ones come
from `vtr.eval.references`, each with its paper and how it was obtained.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from vtr.cache import read_cache
from vtr.core.files import atomic_write_text
from vtr.core.safe_load import LoadError
from vtr.eval import references, rescorers
from vtr.eval.report import METRICS, TRANSDUCTIVE_FOOTNOTE, UNDER_THE_TABLE, write_json
from vtr.eval.stage import evaluate_run, evaluate_zero_shot
from vtr.train.runs import BEST, CONFIG, cache_fingerprint, checkpoint_path, read_last, read_record

# The paper's order: raw scores, then the non-transductive re-scoring, then the transductive one.
LOSSES = {"infonce": "InfoNCE", "dsl": "DSL loss"}
HEADS = {"seqTransf": "seqTransf", "camoe": "CAMoE"}
DIRECTIONS = ("t2v", "v2t")
APPROX = "≈"
FROZEN_VS_FINE_TUNED = ("Published rows fine-tune CLIP end to end; ours keep CLIP frozen and train a small head "
                        "on cached features (zero-shot: nothing trained). Compare within a kind first.")
FILES = {"markdown": "table.md", "csv": "table.csv", "json": "table.json"}


def _same_file(a, b) -> bool:
    a, b = Path(a), Path(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def scan_runs(runs_dir) -> list[tuple[Path, dict | None, str]]:
    """Every run folder (one with config.json) under ``runs_dir``: (folder, its config or None, why not usable
    or "")."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for d in sorted(p for p in runs_dir.iterdir() if (p / CONFIG).is_file()):
        try:
            record = read_record(d)
        except (LoadError, OSError, ValueError) as e:
            found.append((d, None, f"config.json unreadable: {e}"))
            continue
        try:
            last = read_last(d)
        except (LoadError, OSError, ValueError) as e:
            found.append((d, record, f"last checkpoint unreadable: {e}"))
            continue
        done, asked = (last["epoch"] if last else 0), record["fit"].get("epochs")
        if last is None or checkpoint_path(d, BEST) is None:
            why = "not finished: no epoch completed yet"
        elif isinstance(asked, int) and done < asked:
            why = f"not finished: {done} of {asked} epochs"
        else:
            why = ""
        found.append((d, record, why))
    return found


def caches_named(runs_dir) -> list[str]:
    """The distinct caches the runs under ``runs_dir`` were trained on (as their configs name them)."""
    named: list[str] = []
    for _, record, _ in scan_runs(runs_dir):
        path = record["cache"]["path"] if record else None
        if path and not any(_same_file(path, p) for p in named):
            named.append(path)
    return named


def _trained_on(record: dict, cache_path, fingerprint: str | None) -> bool:
    """Whether the run of ``record`` was trained on the cache at ``cache_path``: the same file, or, where the
    file it names is gone (the cache was moved), a cache of the same ``fingerprint``."""
    named = record["cache"]["path"]
    if _same_file(named, cache_path):
        return True
    return fingerprint is not None and not Path(named).exists() and record["cache"].get("fingerprint") == fingerprint


def runs_on(cache_path, runs_dir, fingerprint: str | None = None) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """(finished runs trained on ``cache_path``, skipped runs on it with the reason), by folder name.
    ``fingerprint`` (`cache_fingerprint` of that cache) also finds the runs of a cache moved since."""
    finished, skipped = [], []
    for d, record, why in scan_runs(runs_dir):
        if record is None:
            skipped.append({"run": str(d), "why": why})
        elif _trained_on(record, cache_path, fingerprint):
            (skipped.append({"run": str(d), "why": why}) if why else finished.append((d, record)))
    return finished, skipped


def _clip_words(attrs: dict) -> str:
    return f"CLIP {attrs.get('clip_model', '?')}" + (" (random weights)" if attrs.get("clip_random") else "")


def _our_row(report: dict, method: str, how: str, clip: str, rescore: str, label: str, source: str) -> dict:
    return {"kind": "ours", "method": method, "how": how, "clip": clip, "rescore": rescore,
            "rescore_label": label, "transductive": bool(report.get("transductive")),
            "t2v": {m: report["t2v"][m] for m in METRICS}, "v2t": {m: report["v2t"][m] for m in METRICS},
            "approximate": [], "source": source, "split": report.get("split"), "n_texts": report.get("n_texts"),
            "n_videos": report.get("n_videos"), "notes": list(report.get("notes", []))}


def _reference_rows(dataset: str) -> list[dict]:
    rows = []
    for r in references.benchmark(dataset)["rows"]:
        label = rescorers.get(r["rescore"]).label
        rows.append({"kind": "published", "method": r["name"], "how": r["how"], "clip": r["clip"],
                     "rescore": r["rescore"], "rescore_label": label, "transductive": r["transductive"],
                     "t2v": dict(r["t2v"]), "v2t": dict(r["v2t"]), "approximate": list(r["approximate"]),
                     "source": references.citation(r["paper"]), "paper": r["paper"], "note": r["note"]})
    return rows


def build_table(cache_path, runs_dir, *, zero_shot: bool = True, device: str = "cpu",
                dsl_memory_mib: float | None = None, log=lambda s: None) -> dict:
    """Evaluate zero-shot CLIP and every finished run on ``cache_path`` raw, with QB-Norm and with DSL; return
    the table (the JSON that `write_table` writes): published rows of the cache's benchmark, then ours."""
    data = read_cache(cache_path)
    attrs = data.attrs
    dataset = attrs.get("dataset", "?")
    clip = _clip_words(attrs)
    runs, skipped = runs_on(cache_path, runs_dir, cache_fingerprint(data))
    notes = []
    # Every registered method: raw first, then the inductive ones, the transductive ones last.
    methods = sorted((rescorers.get(n) for n in rescorers.names()),
                     key=lambda m: (m.name != rescorers.DEFAULT, m.transductive, m.name))
    if not (data.text_split == "train").any():
        for m in [m for m in methods if m.uses_bank]:  # their query bank is the training captions and videos
            methods.remove(m)
            notes.append(f"{m.label} left out: the cache has no training captions for its query bank")
    rescores = [(m.name, m.label, m.transductive) for m in methods]

    sources = [("zero-shot meanP", f"ours: frozen {clip}, nothing trained", None)] if zero_shot else []
    for d, record in runs:
        fit = record["fit"]
        if record["cache"].get("fingerprint") != cache_fingerprint(data):
            notes.append(f"{d.name} was trained on an earlier state of this cache (its settings or row counts "
                         "changed since); its rows evaluate it on the cache as it is now")
        method = f"{HEADS.get(fit['model'], fit['model'])} · {LOSSES.get(fit['loss'], fit['loss'])}"
        sources.append((method, f"ours: frozen {clip}, {method} head trained {fit['epochs']} epochs", d))
    rows = _reference_rows(dataset)
    jobs = [(s, r) for s in sources for r in rescores]
    for i, ((method, how, run), (rescore, label, transductive)) in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {method}, {label}" + (" (transductive)" if transductive else ""))
        common = {"rescore": rescore, "device": device, "data": data}
        if dsl_memory_mib is not None:  # else the eval stage's own default
            common["dsl_memory_mib"] = dsl_memory_mib
        report = (evaluate_zero_shot(cache_path, **common) if run is None
                  else evaluate_run(run, cache_path=cache_path, **common))
        rows.append(_our_row(report, method, how, attrs.get("clip_model"), rescore, label,
                             str(run) if run else str(cache_path)))
    ours = [r for r in rows if r["kind"] == "ours"]
    bench = references.benchmark(dataset)
    if not bench["rows"]:
        notes.append(f"no published figures recorded for {dataset} in vtr.eval.references")
    return {"cache": str(cache_path), "dataset": dataset, "benchmark": bench["name"], "clip": attrs.get("clip_model"),
            "clip_random": bool(attrs.get("clip_random")), "runs_dir": str(runs_dir),
            "split": ours[0]["split"] if ours else None, "n_texts": ours[0]["n_texts"] if ours else None,
            "n_videos": ours[0]["n_videos"] if ours else None, "metrics": list(METRICS), "rows": rows,
            "skipped_runs": skipped, "notes": notes, "frozen_vs_fine_tuned": FROZEN_VS_FINE_TUNED}


# ----------------------------------------------------------------------------- formats


def _cell(row: dict, direction: str, metric: str) -> str:
    """A Markdown cell: one decimal, ≈ for an approximate figure, empty where none is recorded."""
    x = row[direction][metric]
    if x is None:
        return ""
    return (APPROX if f"{direction}.{metric}" in row["approximate"] else "") + f"{x:.1f}"


def _csv_number(x) -> str:
    return "" if x is None else repr(float(x))  # full precision: the JSON's value, read back exactly


def metric_columns() -> list[str]:
    return [f"{d.upper()} {m}" for d in DIRECTIONS for m in METRICS]


def to_markdown(table: dict) -> str:
    """The table as Markdown: a title naming the benchmark and cache, one row per method and rescoring,
    sources and notes below."""
    refs = {}  # paper -> footnote number, in order of appearance
    lines = [f"## {table['benchmark']}", "",
             f"Cache `{table['cache']}` (dataset {table['dataset']}, CLIP {table['clip']}"
             + (", random weights: not meaningful for real retrieval" if table["clip_random"] else "")
             + f"); ours evaluated on split {table['split']}: {table['n_texts']} captions, "
             f"{table['n_videos']} videos.", ""]
    header = ["Method", "Obtained", "Rescore"] + metric_columns() + ["Source"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 10 + ["---"]) + "|"]
    for row in table["rows"]:
        if row["kind"] == "published":
            n = refs.setdefault(row["paper"], len(refs) + 1)
            source = f"[{n}]"
        else:
            source = f"`{Path(row['source']).name}`"
        rescore = row["rescore_label"] + (" *" if row["transductive"] else "")
        cells = [row["method"], row["how"], rescore] + [_cell(row, d, m) for d in DIRECTIONS for m in METRICS]
        lines.append("| " + " | ".join(cells + [source]) + " |")
    below = []  # each its own paragraph
    if any(r["transductive"] for r in table["rows"]):
        below.append("\\" + TRANSDUCTIVE_FOOTNOTE + ".")
    if any(r["kind"] == "published" for r in table["rows"]):
        below.append(f"{APPROX}: approximate published figure. Empty cell: no published figure recorded "
                     "(vtr.eval.references leaves a figure out rather than guess it).")
    below.append(table["frozen_vs_fine_tuned"])
    for paper, n in refs.items():
        below.append(f"[{n}] {references.citation(paper)}")
    seen = set()
    for note in table["notes"] + [n for r in table["rows"] for n in r.get("notes", [])]:
        if (note in table["notes"] or note.startswith(UNDER_THE_TABLE)) and note not in seen:
            seen.add(note)
            below.append(f"Note: {note}")
    for s in table["skipped_runs"]:
        below.append(f"Skipped run `{s['run']}`: {s['why']}")
    return "\n".join(lines) + "\n\n" + "\n\n".join(below) + "\n"


def to_csv(table: dict) -> str:
    """One line per row; numbers at full precision, empty where no figure is recorded."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "method", "obtained", "clip", "rescore", "transductive"] + metric_columns()
               + ["approximate", "source"])
    for row in table["rows"]:
        w.writerow([row["kind"], row["method"], row["how"], row["clip"], row["rescore"], int(row["transductive"])]
                   + [_csv_number(row[d][m]) for d in DIRECTIONS for m in METRICS]
                   + [" ".join(row["approximate"]), row["source"]])
    return buf.getvalue()


def write_table(table: dict, out_dir) -> dict[str, Path]:
    """table.md, table.csv and table.json in ``out_dir`` (each written atomically); returns their paths."""
    out_dir = Path(out_dir)
    paths = {k: out_dir / name for k, name in FILES.items()}
    atomic_write_text(paths["markdown"], to_markdown(table))
    atomic_write_text(paths["csv"], to_csv(table))
    write_json(paths["json"], table)
    return paths
