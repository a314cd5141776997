"""`vtr index` and `vtr search`: from a cache and a run (or zero-shot CLIP) to ranked videos for a sentence."""
from __future__ import annotations

import json
from pathlib import Path

import click

from vtr.cli_common import CACHE_DIR, fail, log

INDEX_DIR = CACHE_DIR / "index"


@click.command(name="index")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Run folder whose head encodes the videos (its best checkpoint). Default: the latest under "
                   "cache/runs, unless --zero-shot.")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path, exists=True),
              help="Cache whose videos to index. Default: the run's own.")
@click.option("--zero-shot", is_flag=True, help="Index with zero-shot CLIP (meanP over the frozen frames); needs --cache.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Index folder to write or update. Default: cache/index/<run name> (zero-shot: "
                   "cache/index/<cache name>-zero-shot).")
@click.option("--split", help="Index only this split's videos (e.g. test, to compare with `vtr eval`). Default: all.")
@click.option("--factory", default="Flat", show_default=True,
              help="FAISS index factory string. Flat: exact inner product (and QB-Norm). HNSW32, IVF1024,PQ64, ...: "
                   "approximate, for large collections; its recall@10 against exact is measured and stored.")
@click.option("--search-params", default="", metavar="PARAMS",
              help="FAISS search parameters of an approximate index, e.g. efSearch=128 (HNSW) or nprobe=32 (IVF).")
@click.option("--bank-split", default="train", show_default=True,
              help="Split whose captions are QB-Norm's query bank.")
@click.option("--video-root", type=click.Path(path_type=Path, file_okay=False),
              help="The folder the videos live under (what `vtr serve` may serve). Default: their common folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def index_cmd(run_dir, cache_path, zero_shot, out, split, factory, search_params, bank_split, video_root, quiet):
    """Build a search index of a cache's videos; rerun after the cache grew to add only the new ones.

    \b
    vtr index --run cache/runs/synthetic-camoe-dsl          # exact, all videos of the run's cache
    vtr index --zero-shot --cache cache/synthetic.h5         # zero-shot CLIP
    vtr index --run R --factory HNSW32 --out cache/index/big # approximate (recall@10 measured)
    """
    from vtr.cache import CacheError
    from vtr.search.build import build_index
    from vtr.train.runs import latest_run, read_record

    try:
        if zero_shot:
            if cache_path is None:
                raise click.UsageError("--zero-shot needs --cache")
            if run_dir is not None:
                raise click.UsageError("--zero-shot and --run exclude each other")
        else:
            run_dir = run_dir or latest_run(Path("cache") / "runs")
            cache_path = cache_path or Path(read_record(run_dir)["cache"]["path"])
        name = f"{Path(cache_path).stem}-zero-shot" if zero_shot else Path(run_dir).name
        out = out or INDEX_DIR / (name + (f"-{split}" if split else ""))
        build_index(cache_path, out, None if zero_shot else run_dir, zero_shot, factory, not quiet, split=split,
                    bank_split=bank_split, video_root=video_root, search_params=search_params, log=log)
    except (CacheError, ValueError, RuntimeError, FileNotFoundError) as e:
        fail(e)
    click.echo(f"index folder: {out}")


@click.command(name="search")
@click.argument("query")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Index folder `vtr index` wrote.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="How many videos to show.")
@click.option("--qbnorm", is_flag=True, help="QB-Norm (dynamic inverted softmax against the index's query bank of "
              "training captions), as `vtr eval --qbnorm`, one query at a time. Exact indexes only.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON instead of a table.")
@click.option("--clip-cache", type=click.Path(path_type=Path),
              help="Folder holding OpenAI's CLIP weight files. Default: $VTR_CLIP_CACHE or ~/.cache/clip.")
def search_cmd(query, index_dir, k, qbnorm, as_json, clip_cache):
    """The videos that match a sentence, best first: id, score, file and the moment (seconds) that matches best.

    \b
    vtr search "a man slicing a tomato" --index cache/index/synthetic-camoe-dsl -k 5
    vtr search "a red circle on the grass" --index DIR --qbnorm --json

    DSL at inference is not available here: it normalises each video over all test queries at once.
    """
    from vtr.extract.clip_encoder import ClipWeightsMissing
    from vtr.search.index import SearchIndex

    try:
        index = SearchIndex.open(index_dir, clip_cache=clip_cache)
        hits = index.search(query, k=k, qbnorm=qbnorm)
    except (ClipWeightsMissing, ValueError, RuntimeError, FileNotFoundError) as e:
        fail(e)
    if as_json:
        click.echo(json.dumps({"query": query, "qbnorm": qbnorm, "index": index.info,
                               "hits": [h.to_dict() for h in hits]}, indent=1))
        return
    _table(query, hits, index, qbnorm)


def _table(query, hits, index, qbnorm) -> None:
    from rich.console import Console
    from rich.table import Table

    score = "score (QB-Norm)" if qbnorm else "score"
    table = Table(title=f"{query!r}: {len(hits)} of {index.info['n_videos']} videos", title_justify="left")
    for col, justify in (("rank", "right"), ("id", "left"), (score, "right"), ("file", "left"),
                         ("moment (s)", "right")):
        table.add_column(col, justify=justify)
    if index.experts:
        table.add_column("gate", justify="left")
    for h in hits:
        row = [str(h.rank), h.video_id, f"{h.score:.4f}", h.path, "-" if h.moment is None else f"{h.moment:.1f}"]
        if index.experts:
            row.append(" ".join(f"{e} {w:.2f}" for e, w in (h.gate or {}).items()))
        table.add_row(*row)
    Console(soft_wrap=True).print(table)
    if index.info.get("clip_random"):
        click.echo("CLIP weights are random: these results are not meaningful for real retrieval", err=True)


@click.command(name="serve")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Index folder `vtr index` wrote.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. 127.0.0.1: only this machine can connect. 0.0.0.0 (or this machine's "
                   "network address) lets anyone who can reach it search the index and download every indexed "
                   "video, with no password and no encryption: only on a network you trust, or behind a proxy "
                   "that authenticates.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port to listen on (0: any free port; the address is printed).")
@click.option("--video-root", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="The folder the videos are in, when not the one the index records (the dataset moved, or the "
                   "index came from another machine). Only files inside it are ever served.")
@click.option("--clip-cache", type=click.Path(path_type=Path),
              help="Folder holding OpenAI's CLIP weight files. Default: $VTR_CLIP_CACHE or ~/.cache/clip.")
def serve_cmd(index_dir, host, port, video_root, clip_cache):
    """A search page and a JSON API over an index, on http://127.0.0.1:8080/ by default.

    The page takes a sentence and shows the best-matching videos: a thumbnail at the moment that matches,
    a player that starts there, the score, the video's captions and, for CAMoE, the gate's weights. The
    API: GET /api/search?q=...&k=10&qbnorm=0, /api/info, /thumb/ID?t=SECONDS, /video/ID (range requests),
    /openapi.json. Thumbnails are cached in the index folder, under thumbs/.

    \b
    vtr index --run cache/runs/synthetic-camoe-dsl
    vtr serve --index cache/index/synthetic-camoe-dsl    # then open http://127.0.0.1:8080/
    """
    from vtr.extract.clip_encoder import ClipWeightsMissing
    from vtr.search.serve import serve

    try:
        serve(index_dir, host=host, port=port, video_root=video_root, clip_cache=clip_cache, log=log)
    except (ClipWeightsMissing, ValueError, RuntimeError, FileNotFoundError) as e:
        fail(e)


def register(main: click.Group) -> None:
    """Add the search commands to the `vtr` group."""
    for command in (index_cmd, search_cmd, serve_cmd):
        main.add_command(command)
