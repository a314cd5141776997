"""`vtr info`: what a cache holds, or what a dataset's annotations hold."""
from __future__ import annotations

from pathlib import Path

import click

from vtr.cli_common import fail
from vtr.cli_extract import reader_options


@click.command()
@click.argument("cache_path", type=click.Path(path_type=Path), required=False)
@click.option("--dataset", "dataset_name", help="Instead of a cache: a dataset's statistics from its annotations.")
@click.option("--annotations", type=click.Path(path_type=Path, exists=True),
              help="With --dataset: the annotations folder (or byo file). Default: found under --root.")
@click.option("--root", type=click.Path(path_type=Path),
              help="With --dataset: the dataset's folder; given, videos missing on disk are counted.")
@reader_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the summary as JSON here.")
def info(cache_path, dataset_name, annotations, root, json_path, **dataset_options):
    """What a cache holds (settings, videos and captions per split, failed videos), or, with --dataset,
    what a dataset's annotations hold (videos and captions per split, videos missing under --root).

    \b
    vtr info cache/msvd.h5
    vtr info --dataset msvd --annotations DIR [--root DIR] [--json stats.json]
    """
    from vtr.cache import CacheError, cache_summary

    if (cache_path is None) == (dataset_name is None):
        raise click.UsageError("give a cache file, or --dataset with --annotations and/or --root (not both)")
    if dataset_name is not None:
        _dataset_info(dataset_name, annotations, root, dataset_options, json_path)
        return
    try:
        s = cache_summary(cache_path)
    except CacheError as e:
        fail(e)
    st = s["settings"]
    click.echo(f"{cache_path}: dataset {st.get('dataset')}, CLIP {st.get('clip_model')}"
               + (" (random weights: not meaningful for real retrieval)" if st.get("clip_random") else ""))
    click.echo(f"  frames: {st.get('fps')}/s, max {st.get('max_frames')}, {st.get('resolution')}px, "
               f"{st.get('dim')}-d; frame array {s['frames_shape']}")
    for split, c in s["splits"].items():
        click.echo(f"  {split:>6}: {c['videos']} videos, {c['captions']} captions")
    if s["failed_videos"]:
        click.echo(f"  failed: {len(s['failed_videos'])} videos")
        for vid, reason in list(s["failed_videos"].items())[:10]:
            click.echo(f"    {vid}: {reason}")
    if s.get("synced"):
        _echo_synced(s["synced"])
    if s["unfinished_parts"]:
        click.echo(f"  {s['unfinished_parts']} part files from an unfinished run (read too; "
                   f"rerun `vtr extract` to fold them in)")
    if s["combined"]:
        _echo_combined(cache_path, s["combined"])
    if json_path:
        from vtr.eval.report import write_json

        write_json(json_path, s)


def _echo_synced(synced: dict) -> None:
    """When the cache was last brought in line with its annotations, and the files (SHA256) it followed."""
    files = synced.get("annotations", [])
    click.echo(f"  in line with its annotations since {synced.get('at')} ({len(files)} files):")
    for a in files:
        click.echo(f"    {a['path']}  sha256 {a.get('sha256') or '(unreadable: ' + a.get('error', '?') + ')'}")


def _echo_combined(cache_path, c: dict) -> None:
    from vtr.extract.shards import shards_dir

    n = c.get("n", len(c["shards"]))
    click.echo(f"  combined from {len(c['shards'])} of {n} shards in {shards_dir(cache_path)} (virtual datasets: "
               f"the embeddings stay in the shard files)")
    for name, why in c.get("left_out", {}).items():
        click.echo(f"    left out {name}: {why}")


def _dataset_info(name, annotations, root, options, json_path) -> None:
    """With --dataset: its statistics from the annotations; ``options``: the reader's own (--split-variant, ...)."""
    from vtr.extract.datasets import dataset_stats, load_dataset

    if annotations is None and root is None:
        raise click.UsageError("--dataset needs --annotations DIR, --root DIR, or both")
    try:
        # Without --root there is no videos folder to check: statistics of the annotations alone.
        ds = load_dataset(name, root or annotations, annotations=annotations, check_videos=root is not None,
                          **options)
    except (ValueError, FileNotFoundError) as e:
        fail(e)
    stats = dataset_stats(ds)
    stats["videos_checked"] = root is not None
    click.echo(f"{ds.name}: {stats['videos']} videos, {stats['captions']} captions; protocol: {ds.max_frames} "
               f"frames, {ds.max_words} words, evaluated split {ds.eval_split}")
    for split, c in stats["splits"].items():
        extra = f" ({c['sentences']} sentences joined)" if "sentences" in c else ""
        click.echo(f"  {split:>6}: {c['videos']} videos, {c['captions']} captions{extra}")
    if root is not None:
        click.echo(f"  missing: {stats['missing_videos']} videos named in the annotations are not under {root}"
                   + (f" (e.g. {', '.join(stats['missing_examples'][:3])})" if stats["missing_videos"] else ""))
    for note in stats["notes"]:
        click.echo(f"  note: {note}")
    if json_path:
        from vtr.eval.report import write_json

        write_json(json_path, stats)
