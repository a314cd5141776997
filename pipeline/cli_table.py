"""`vtr table`: the paper's table for one cache, ours beside the published rows, as Markdown, CSV and JSON."""
from __future__ import annotations

from pathlib import Path

import click

from vtr.cli_common import CACHE_DIR, RUNS_DIR, fail, log


@click.command(name="table")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Cache to evaluate on. Default: the one cache the runs under --runs were trained on.")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path, file_okay=False),
              help=f"Folder of run folders; every finished run on the cache is a row. Default: {RUNS_DIR}.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help=f"Where table.md, table.csv and table.json go. Default: {CACHE_DIR}/tables/<cache name>.")
@click.option("--no-zero-shot", is_flag=True, help="Leave out the zero-shot CLIP rows.")
@click.option("--dsl-memory", "dsl_memory_mib", type=click.FloatRange(min=0), default=1024, show_default=True,
              metavar="MIB", help="MiB of scores kept from DSL's first pass (as `vtr eval --dsl-memory`).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
def table(cache_path, runs_dir, out_dir, no_zero_shot, dsl_memory_mib, device):
    """Zero-shot CLIP and every finished run on a cache, raw, with QB-Norm and with DSL (transductive,
    starred), T2V and V2T R@1/5/10, MdR, MnR, with the published rows of the cache's benchmark beside them.

    \b
    vtr table --cache cache/msrvtt-9k.h5
    vtr table --runs cache/reproduce-msrvtt/runs --out tables/
    """
    from vtr.cache import CacheError
    from vtr.core.safe_load import LoadError
    from vtr.eval.table import build_table, caches_named, write_table

    runs_dir = runs_dir or RUNS_DIR
    if cache_path is None:
        named = caches_named(runs_dir)
        if len(named) != 1:
            raise click.UsageError(f"the runs under {runs_dir} name {len(named)} caches"
                                   + (f" ({', '.join(named)})" if named else "") + "; pass --cache")
        cache_path = Path(named[0])
        if not cache_path.is_file():
            fail(FileNotFoundError(f"{cache_path}: the cache the runs under {runs_dir} name is not there; "
                                   "pass --cache"))
    out_dir = out_dir or CACHE_DIR / "tables" / cache_path.stem
    try:
        result = build_table(cache_path, runs_dir, zero_shot=not no_zero_shot, device=device,
                             dsl_memory_mib=dsl_memory_mib, log=log)
    except (CacheError, LoadError, ValueError, RuntimeError, FileNotFoundError) as e:
        fail(e)
    if not any(r["kind"] == "ours" for r in result["rows"]):
        fail(ValueError(f"nothing to evaluate on {cache_path}: no finished run under {runs_dir} and "
                        "--no-zero-shot"))
    try:
        paths = write_table(result, out_dir)
    except OSError as e:
        fail(e, out_dir)
    click.echo(paths["markdown"].read_text(), nl=False)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
