"""The `vtr` command line: extract, fit, eval, info, demo.

Stages talk through files: `extract` writes a cache, `fit` reads it and writes a run folder, `eval`
reads both. Everything lands under ./cache by default.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vtr import __version__

CACHE_DIR = Path("cache")
RUNS_DIR = CACHE_DIR / "runs"


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _fail(e: Exception):
    raise click.ClickException(str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vtr")
def main():
    """Video-text retrieval with CAMoE and Dual Softmax Loss on frozen, cached CLIP features.

    \b
    vtr extract --dataset synthetic --clip random:tiny   # decode, encode, cache (incremental)
    vtr fit --cache cache/synthetic.h5                   # train a head on the cached features
    vtr eval                                             # evaluate the latest run
    vtr demo                                             # all three on built-in synthetic data
    """


# ----------------------------------------------------------------------------- extract


@main.command()
@click.option("--dataset", "dataset_name", required=True, help="Dataset to read (synthetic: built in, made on demand).")
@click.option("--root", type=click.Path(path_type=Path), help="The dataset's folder (videos and annotations). "
              "Default for synthetic: cache/synthetic.")
@click.option("--out", type=click.Path(path_type=Path), help="Cache file to write or update. Default: cache/<dataset>.h5.")
@click.option("--clip", "clip_spec", default="ViT-B/32", show_default=True,
              help="CLIP model: an OpenAI name (weights in --clip-cache), a checkpoint path, or random:tiny "
                   "(random weights for offline tests: not meaningful for real retrieval).")
@click.option("--clip-cache", type=click.Path(path_type=Path),
              help="Folder holding OpenAI's CLIP weight files. Default: $VTR_CLIP_CACHE or ~/.cache/clip.")
@click.option("--device", default="auto", show_default=True, help="auto (GPU in fp16 when there is one), cpu or cuda[:N].")
@click.option("--fps", default=1.0, show_default=True, help="Frames sampled per second before the uniform choice.")
@click.option("--max-frames", type=int, help="Frames kept per video, chosen uniformly. Default: the dataset's protocol (12).")
@click.option("--workers", type=int, help="Parallel ffmpeg decode workers. Default: one per core.")
@click.option("--batch-frames", default=256, show_default=True, help="Frames per CLIP image batch.")
@click.option("--flush-every", default=64, show_default=True,
              help="Videos per part file: at most this much work is lost when a run is killed.")
@click.option("--retry-failed", is_flag=True, help="Try videos that failed to decode in an earlier run again.")
@click.option("--n-videos", default=300, show_default=True, help="synthetic only: how many clips to make.")
@click.option("--seed", default=0, show_default=True, help="synthetic only: the seed the clips are made from.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def extract(dataset_name, root, out, clip_spec, clip_cache, device, fps, max_frames, workers, batch_frames,
            flush_every, retry_failed, n_videos, seed, quiet):
    """Decode videos with ffmpeg, encode frames and captions with frozen CLIP, write the HDF5 cache.

    Rerunning does only what is missing: videos and captions already in the cache are skipped, a run
    that was killed resumes, and a cache made with another model or frame setting is refused.
    """
    from vtr.cache import CacheError
    from vtr.extract.clip_encoder import ClipWeightsMissing, load_clip
    from vtr.extract.datasets import load_dataset
    from vtr.extract_stage import run_extract

    out = out or CACHE_DIR / f"{dataset_name}.h5"
    try:
        dataset = load_dataset(dataset_name, root, n_videos=n_videos, seed=seed, progress=not quiet)
        encoder = load_clip(clip_spec, device=device, download_root=clip_cache)
        stats = run_extract(dataset, encoder, out, fps=fps, max_frames=max_frames, workers=workers,
                            batch_frames=batch_frames, flush_every=flush_every, retry_failed=retry_failed,
                            progress=not quiet, log=_log)
    except (ClipWeightsMissing, CacheError, ValueError, FileNotFoundError, RuntimeError) as e:
        _fail(e)
    if stats.videos_decoded == 0 and stats.captions_encoded == 0 and stats.videos_failed == 0:
        click.echo(f"nothing to do: all {stats.videos_cached} videos and {stats.captions_cached} captions "
                   f"are already in {out}")
    else:
        click.echo(f"{out}: decoded {stats.videos_decoded} videos ({stats.videos_failed} failed, "
                   f"{stats.videos_cached} already cached), encoded {stats.frames_encoded} frames and "
                   f"{stats.captions_encoded} captions in {stats.seconds:.1f}s")


# ----------------------------------------------------------------------------- fit


@main.command()
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path, exists=True),
              help="The cache `vtr extract` wrote.")
@click.option("--run", "run_dir", type=click.Path(path_type=Path),
              help="Run folder. Default: cache/runs/<cache name>-<model>-<loss>. An existing run resumes.")
@click.option("--model", default="seqTransf", show_default=True, help="Head to train: seqTransf.")
@click.option("--loss", default="dsl", show_default=True, type=click.Choice(["dsl", "infonce"]),
              help="dsl: Dual Softmax Loss; infonce: symmetric cross-entropy.")
@click.option("--epochs", type=int, help="Epochs (each training video once). A larger value extends a finished run.")
@click.option("--batch-size", type=int, help="Videos per batch (each with one of its captions).")
@click.option("--lr", type=float, help="AdamW learning rate.")
@click.option("--dsl-temperature", type=float, help="Temperature of DSL's prior softmax in training (paper: 1000).")
@click.option("--seed", type=int, help="Seed for initialisation and sampling.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fit(cache_path, run_dir, model, loss, epochs, batch_size, lr, dsl_temperature, seed, device, quiet):
    """Train an alignment head on the cached features; writes config, checkpoints, log and curves."""
    from vtr.train.fit import FitConfig
    from vtr.train.fit import fit as fit_run

    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, dsl_temperature=dsl_temperature, seed=seed)
    cfg = FitConfig(model=model, loss=loss, device=device, **{k: v for k, v in overrides.items() if v is not None})
    run_dir = run_dir or RUNS_DIR / f"{cache_path.stem}-{model}-{loss}"
    try:
        fit_run(cache_path, run_dir, cfg, progress=not quiet, log=_log)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"run folder: {run_dir}")


# ----------------------------------------------------------------------------- eval


@main.command(name="eval")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Run folder to evaluate. Default: the latest under cache/runs.")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path, exists=True),
              help="Cache to evaluate on. Default: the run's own.")
@click.option("--zero-shot", is_flag=True, help="Evaluate zero-shot CLIP (meanP over frozen frames) on --cache; no run.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--dsl", is_flag=True, help="Dual Softmax at inference. Transductive: it uses all test queries at once.")
@click.option("--qbnorm", is_flag=True, help="QB-Norm (dynamic inverted softmax, training captions as the query bank).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the report as JSON here.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
def eval_(run_dir, cache_path, zero_shot, split, dsl, qbnorm, json_path, device):
    """Text-to-video and video-to-text R@1/5/10, MdR, MnR (tie-safe ranks, multi-caption protocol)."""
    from vtr.eval.report import format_table, write_json
    from vtr.eval_stage import evaluate_run, evaluate_zero_shot
    from vtr.train.runs import latest_run

    if dsl and qbnorm:
        raise click.UsageError("choose one of --dsl and --qbnorm")
    rescore = "dsl" if dsl else "qbnorm" if qbnorm else "none"
    try:
        if zero_shot:
            if not cache_path:
                raise click.UsageError("--zero-shot needs --cache")
            report = evaluate_zero_shot(cache_path, split=split, rescore=rescore, device=device)
        else:
            run_dir = run_dir or latest_run(RUNS_DIR)
            _log(f"evaluating {run_dir}")
            report = evaluate_run(run_dir, cache_path=cache_path, split=split, rescore=rescore, device=device)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        _fail(e)
    click.echo(format_table([report]))
    if json_path:
        write_json(json_path, report)


# ----------------------------------------------------------------------------- info


@main.command()
@click.argument("cache_path", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the summary as JSON here.")
def info(cache_path, json_path):
    """What a cache holds: settings, videos and captions per split, failed videos."""
    from vtr.cache import CacheError, cache_summary

    try:
        s = cache_summary(cache_path)
    except CacheError as e:
        _fail(e)
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
    if s["unfinished_parts"]:
        click.echo(f"  {s['unfinished_parts']} part files from an unfinished run (read too; "
                   f"rerun `vtr extract` to fold them in)")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(s, indent=2))


# ----------------------------------------------------------------------------- demo


@main.command()
@click.option("--out", type=click.Path(path_type=Path), help="Also write the table as DIR/demo.json.")
@click.option("--workdir", default=CACHE_DIR / "demo", show_default=True, type=click.Path(path_type=Path),
              help="Where the clips, the cache and the run go (reused: a rerun redoes nothing).")
@click.option("--n-videos", default=300, show_default=True, help="Synthetic clips to make.")
@click.option("--epochs", default=30, show_default=True, help="Training epochs.")
@click.option("--seed", default=0, show_default=True, help="Seed of the clips and of training.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out, workdir, n_videos, epochs, seed, device, quiet):
    """Synthetic extract -> fit -> eval end to end, offline, with a random CLIP; prints one table."""
    from vtr.demo import run_demo

    _, text = run_demo(workdir, out=out, n_videos=n_videos, epochs=epochs, seed=seed, device=device,
                       progress=not quiet, log=_log)
    click.echo(text)
    if out:
        click.echo(f"\nwrote {Path(out) / 'demo.json'}")


if __name__ == "__main__":
    sys.exit(main())
