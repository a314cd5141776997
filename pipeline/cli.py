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


def _fail(e: Exception, writing=None, hint: str = ""):
    """Stop with one line: the error's own message, or, for a failure of the disk or the file system, the
    path and the cause (vtr.io_errors) followed by ``hint``; ``writing``: what the command was making."""
    from vtr.io_errors import describe

    line = describe(e, writing) if isinstance(e, OSError) or type(e) is RuntimeError else None
    raise click.ClickException(line + hint if line else str(e)) from None


class _Main(click.Group):
    """`vtr`: a failure of the disk or the file system that no command caught (a report or a run folder
    that cannot be written) ends in one line naming the path and the cause, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (OSError, RuntimeError) as e:
            import errno

            from vtr.io_errors import describe

            if isinstance(e, OSError) and e.errno == errno.EPIPE:  # output piped to `head`: click's own case
                raise
            line = describe(e) if isinstance(e, OSError) or type(e) is RuntimeError else None
            if line is None:
                raise
            raise click.ClickException(line) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.option("--dataset", "dataset_name", required=True,
              help="Dataset to read: msvd, msrvtt, didemo, activitynet, lsmdc, byo (your own CSV/JSONL), or "
                   "synthetic (built in, made on demand).")
@click.option("--root", type=click.Path(path_type=Path), help="The dataset's folder (videos and annotations). "
              "Default for synthetic: cache/synthetic.")
@click.option("--annotations", type=click.Path(path_type=Path, exists=True),
              help="Folder (or, for byo, file) holding the annotations. Default: found under --root.")
@click.option("--videos", type=click.Path(path_type=Path),
              help="Folder of the videos, relative to --root. Default: the dataset's usual one (e.g. YouTubeClips).")
@click.option("--split-variant", type=click.Choice(["9k", "7k", "full"]),
              help="msrvtt only: 9k (default; 1k-A test), 7k (1k-A test) or full (official 6513/497/2990).")
@click.option("--use-lists", is_flag=True, default=None,
              help="didemo only: keep only the videos named in {train,val,test}_list.txt (CLIP4Clip's choice).")
@click.option("--default-split", type=click.Choice(["train", "val", "test"]),
              help="byo only: the split of rows that name none. Default: test.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Cache file to write or update. Default: cache/<dataset>.h5 (msrvtt: cache/msrvtt-<variant>.h5).")
@click.option("--clip", "clip_spec", default="ViT-B/32", show_default=True,
              help="CLIP model: an OpenAI name (weights in --clip-cache), a checkpoint path, or random:tiny "
                   "(random weights for offline tests: not meaningful for real retrieval).")
@click.option("--clip-cache", type=click.Path(path_type=Path),
              help="Folder holding OpenAI's CLIP weight files; a missing one is downloaded there once and its "
                   "SHA256 checked, as clip.load does. Default: $VTR_CLIP_CACHE or ~/.cache/clip.")
@click.option("--offline", is_flag=True,
              help="Never download CLIP weights: a missing file is an error naming the file to copy where "
                   "(also: VTR_OFFLINE=1).")
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when there is one), cpu or cuda[:N].")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="CLIP's arithmetic. auto: fp16 on a GPU; bf16 on a CPU with bfloat16 instructions (AVX512-BF16 "
                   "or AMX), about 2x faster for frames and 1.5x for captions there, embeddings within cosine "
                   "0.9999 of fp32's; else fp32. fp32: exact fp32 features, slowest. fp16: GPU only. Not a cache "
                   "setting: a cache resumed in another precision mixes rows (keep it fixed if that matters).")
@click.option("--fps", default=1.0, show_default=True, help="Frames sampled per second before the uniform choice.")
@click.option("--max-frames", type=int, help="Frames kept per video, chosen uniformly. Default: the dataset's protocol "
              "(12; 64 for didemo and activitynet).")
@click.option("--max-words", type=int, help="Caption length in CLIP tokens, start and end included (CLIP4Clip's max_words). "
              "Default: the dataset's protocol (32; 64 for paragraph datasets).")
@click.option("--workers", type=int, help="Parallel ffmpeg decode workers. Default: one per core; with --ray, "
              "also the CPUs each shard task asks for (default there: 1).")
@click.option("--batch-frames", default=256, show_default=True, help="Frames per CLIP image batch.")
@click.option("--text-batch", default=256, show_default=True, help="Captions (and phrases) per CLIP text batch.")
@click.option("--flush-every", default=64, show_default=True,
              help="Videos per part file: at most this much work is lost when a run is killed.")
@click.option("--retry-failed", is_flag=True, help="Try videos that failed to decode in an earlier run again.")
@click.option("--keep-removed", is_flag=True,
              help="Keep cached videos and captions that are no longer in the annotations (default: removed "
                   "from the cache, with a count), e.g. when extracting a subset into a cache of the whole.")
@click.option("--n-videos", default=300, show_default=True, help="synthetic only: how many clips to make.")
@click.option("--seed", default=0, show_default=True, help="synthetic only: the seed the clips are made from.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--shard", "shard_spec", metavar="I/N",
              help="Extract only shard I of N (I = 0..N-1; a video's shard is a stable hash of its id) into "
                   "<out>.shards/shard-III-of-NNN.h5. Run all N anywhere (a SLURM array, xargs -P), then "
                   "`vtr combine <out>`.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]",
              help="Run the --shards N shards as Ray tasks (one per shard; a GPU each when the cluster has "
                   "GPUs), then combine them into --out. ADDRESS: a cluster (auto, ray://host:10001); none: a "
                   "local Ray. Needs `pip install 'vtr[ray]'`.")
@click.option("--shards", "n_shards", type=click.IntRange(min=1),
              help="With --ray: how many shards to split the dataset into. Keep it fixed across reruns: "
                   "shard caches are per N.")
@click.option("--max-retries", default=3, show_default=True,
              help="With --ray: times Ray reruns a shard whose task died or raised (a rerun resumes).")
def extract(dataset_name, root, annotations, videos, split_variant, use_lists, default_split, out, clip_spec,
            clip_cache, device, precision, fps, max_frames, max_words, workers, batch_frames, text_batch,
            flush_every, retry_failed, keep_removed, n_videos, seed, quiet, shard_spec, ray_address, n_shards,
            max_retries, offline):
    """Decode videos with ffmpeg, encode frames and captions with frozen CLIP, write the HDF5 cache.

    Rerunning does only what is missing or changed, so the cache follows the annotations: new videos
    and captions are added, a video whose file changed is decoded again and a caption whose text changed
    encoded again, changed splits are updated, and rows no longer in the annotations removed
    (docs/cache.md). A run that was killed resumes; a cache made with another model, frame setting or
    dataset setting (the synthetic --seed) is refused.

    \b
    Past one machine:
    vtr extract --dataset msvd --root R --shard 3/16    # one shard -> cache/msvd.shards/
    vtr combine cache/msvd.h5                           # all 16 shards -> cache/msvd.h5, no copy
    vtr extract --dataset msvd --root R --ray --shards 16   # both, on Ray
    """
    from vtr.omp import let_idle_threads_sleep

    let_idle_threads_sleep()  # before torch is imported: decoders and CLIP's threads share the cores
    from vtr.cache import CacheError
    from vtr.extract.clip_encoder import ClipWeightsMissing, load_clip
    from vtr.extract.datasets import load_dataset
    from vtr.safe_load import LoadError
    from vtr.extract_stage import run_extract
    from vtr.shards import extract_shard, parse_shard, shard_path

    if shard_spec and ray_address:
        raise click.UsageError("--shard runs one shard here; --ray runs all of them on Ray: choose one")
    if (ray_address is None) != (n_shards is None):
        raise click.UsageError("--ray and --shards N go together" if ray_address is None
                               else "--ray needs --shards N, the number of shards to split the dataset into")
    options = dict(fps=fps, max_frames=max_frames, max_words=max_words, workers=workers, batch_frames=batch_frames,
                   text_batch=text_batch, flush_every=flush_every, retry_failed=retry_failed,
                   keep_removed=keep_removed)
    writing = None  # the cache file, once the run writes it: an OS error after that is about it
    try:
        shard = parse_shard(shard_spec) if shard_spec else None
        dataset = load_dataset(dataset_name, root, n_videos=n_videos, seed=seed, progress=not quiet,
                               annotations=annotations, videos=videos, split_variant=split_variant,
                               use_lists=use_lists, default_split=default_split)
        # The dataset's name carries what changes its splits (msrvtt-9k vs msrvtt-full): one cache each.
        out = out or CACHE_DIR / f"{dataset.name}.h5"
        _report_dataset(dataset, root, max_frames, max_words)
        if ray_address:
            dataset_options = dict(annotations=annotations, videos=videos, split_variant=split_variant,
                                   use_lists=use_lists, default_split=default_split, n_videos=n_videos, seed=seed)
            _extract_on_ray(dataset_name, root, dataset_options, clip_spec, clip_cache, device, precision, out,
                            options, ray_address, n_shards, max_retries, quiet, offline or None)
            return
        encoder = load_clip(clip_spec, device=device, download_root=clip_cache, precision=precision,
                            offline=offline or None, progress=not quiet, log=_log)
        writing = shard_path(out, *shard) if shard else out
        if shard:
            stats = extract_shard(dataset, encoder, out, *shard, progress=not quiet, log=_log, **options)
        else:
            stats = run_extract(dataset, encoder, out, progress=not quiet, log=_log, **options)
    except (ClipWeightsMissing, LoadError, CacheError, ValueError, OSError, RuntimeError) as e:
        _fail(e, writing, _extract_hint(e) if writing is not None else "")
    if shard:
        out_shown, out = out, shard_path(out, *shard)
    _fail_if_no_video_usable(stats, out)
    changes = stats.sync_changes()
    if changes:
        click.echo(f"{out}: brought in line with the annotations: " + ", ".join(
            f"{n} {k.replace('_', ' ')}" for k, n in changes.items()))
    if stats.videos_decoded == 0 and stats.captions_encoded == 0 and stats.videos_failed == 0 and not changes:
        done = stats.videos_cached - stats.videos_failed_before
        click.echo(f"nothing to do: {'all ' if done == stats.videos else ''}{done} videos and "
                   f"{stats.captions_cached} captions are already in {out}" + _failed_before(stats, out))
    else:
        click.echo(f"{out}: decoded {stats.videos_decoded} videos ({stats.videos_failed} failed, "
                   f"{stats.videos_cached} already cached), encoded {stats.frames_encoded} frames and "
                   f"{stats.captions_encoded} captions in {stats.seconds:.1f}s (CLIP in {stats.precision})"
                   + _failed_before(stats, out))
    if shard:
        click.echo(f"when all {shard[1]} shards are done: vtr combine {out_shown}")


def _extract_on_ray(name, root, dataset_options, clip_spec, clip_cache, device, precision, out, options, address,
                    n, max_retries, quiet, offline=None) -> None:
    """`vtr extract --ray`: the shards as Ray tasks, then the combined cache. Paths go to workers absolute."""
    from vtr.extract.datasets import DEFAULT_ROOTS
    from vtr.ray_runner import run_on_ray
    from vtr.shards import ShardJob, shards_dir

    def absolute(p):
        return None if p is None else str(Path(p).resolve())

    root = root if root is not None else DEFAULT_ROOTS.get(name)
    dataset_options = dict(dataset_options, annotations=absolute(dataset_options["annotations"]))
    clip = absolute(clip_spec) if Path(clip_spec).expanduser().is_file() else clip_spec
    job = ShardJob(dataset=name, root=absolute(root), out=absolute(out), clip=clip, clip_cache=absolute(clip_cache),
                   device=device, precision=precision, offline=offline, dataset_options=dataset_options,
                   extract_options={k: v for k, v in options.items() if v is not None})
    result = run_on_ray(job, n, address=None if address == "local" else address,
                        cpus_per_shard=options["workers"] or 1, max_retries=max_retries, progress=not quiet, log=_log)
    done = result.stats.values()
    click.echo(f"{n} shards on Ray: decoded {sum(s['videos_decoded'] for s in done)} videos "
               f"({sum(s['videos_failed'] for s in done)} failed, {sum(s['videos_cached'] for s in done)} already "
               f"cached), encoded {sum(s['captions_encoded'] for s in done)} captions (CLIP in "
               f"{', '.join(sorted({s.get('precision') or '?' for s in done})) or precision})")
    c = result.combined
    click.echo(f"{out}: combined {len(c.combined)} shards ({c.videos} videos, {c.captions} captions) as virtual "
               f"datasets over {shards_dir(out)}")


def _extract_hint(e: Exception) -> str:
    """What to do after the disk failed a run of `vtr extract` (rows written before are never lost)."""
    import errno

    from vtr.io_errors import NO_SPACE, NOT_ALLOWED, os_cause

    cause = os_cause(e)
    if cause is not None and cause.errno == errno.EFBIG:
        return "; the rows written before it are kept: rerun where files may be that large to resume"
    if cause is not None and cause.errno in NO_SPACE:
        return "; the rows written before it are kept: free space and rerun to resume"
    if cause is not None and cause.errno in NOT_ALLOWED:
        return "; choose a folder you may write with --out"
    return ""


def _failed_before(stats, out) -> str:
    n = stats.videos_failed_before
    return (f"; {n} video{'s' if n > 1 else ''} failed in an earlier run (`vtr info {out}` says why; "
            f"--retry-failed tries them again)") if n else ""


def _fail_if_no_video_usable(stats, out) -> None:
    """A run is failed when every video it tried failed, or when the cache holds none of the dataset's
    videos usable (all failed before): exit 1 with one line. Some failures among good videos are not."""
    usable = stats.videos_decoded + stats.videos_cached - stats.videos_failed_before
    if stats.videos_failed and not stats.videos_decoded:
        others = f" ({usable} cached before are fine)" if usable else ""
        raise click.ClickException(f"all {stats.videos_failed} videos {'tried ' if usable else ''}failed to "
                                   f"decode{others}; the reasons are in {out}: vtr info {out}")
    if stats.videos and not usable:
        raise click.ClickException(f"none of the {stats.videos} videos is usable: {stats.videos_failed_before} "
                                   f"videos failed to decode in an earlier run (`vtr info {out}` says why; "
                                   f"--retry-failed tries them again)")


def _report_dataset(dataset, root, max_frames=None, max_words=None) -> None:
    """Say what was read, and which videos the annotations name but the disk lacks (they are skipped), and
    the frames and words the run uses (the dataset's protocol unless --max-frames/--max-words say)."""
    for note in dataset.notes:
        _log(f"note: {note}")
    if dataset.missing_videos:
        shown = ", ".join(dataset.missing_videos[:5]) + (", ..." if len(dataset.missing_videos) > 5 else "")
        _log(f"{len(dataset.missing_videos)} videos named in the annotations are missing under {root}; "
             f"skipped with their captions: {shown}")
    frames, words = max_frames or dataset.max_frames, max_words or dataset.max_words
    own = (f" (the dataset's protocol: {dataset.max_frames} frames, {dataset.max_words} words)"
           if (frames, words) != (dataset.max_frames, dataset.max_words) else "")
    _log(f"{dataset.name}: {len(dataset.videos)} videos, {len(dataset.captions)} captions; protocol: "
         f"{frames} frames, {words} words, evaluated split {dataset.eval_split}{own}")


# ----------------------------------------------------------------------------- fit


@main.command()
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path, exists=True),
              help="The cache `vtr extract` wrote.")
@click.option("--run", "--run-dir", "run_dir", type=click.Path(path_type=Path),
              help="Run folder. Default: cache/runs/<cache name>-<model>-<loss>. An existing run resumes. "
                   "Under torchrun spell it --run-dir (torchrun takes --run for its own --run-path).")
@click.option("--model", default="seqTransf", show_default=True,
              help="Head to train: seqTransf (CLIP4Clip's baseline) or camoe (the mixture of experts).")
@click.option("--loss", default="dsl", show_default=True, type=click.Choice(["dsl", "infonce"]),
              help="dsl: Dual Softmax Loss; infonce: symmetric cross-entropy.")
@click.option("--epochs", type=int, help="Epochs (each training video once). A larger value extends a finished run.")
@click.option("--batch-size", type=int, help="Videos per batch (each with one of its captions).")
@click.option("--lr", type=float, help="AdamW learning rate.")
@click.option("--dsl-temperature", type=float, help="Temperature of DSL's prior softmax in training (paper: 1000).")
@click.option("--seed", type=int, help="Seed for initialisation and sampling.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Train data-parallel in N processes on this machine (DistributedDataParallel: gloo on CPU, "
                   "one GPU each with NCCL). The loss still sees the whole --batch-size batch. Under "
                   "`torchrun --nproc_per_node N -m vtr fit ...` leave it at 1.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fit(cache_path, run_dir, model, loss, epochs, batch_size, lr, dsl_temperature, seed, device, nproc, quiet):
    """Train an alignment head on the cached features; writes config, checkpoints, log and curves.

    \b
    vtr fit --cache cache/msrvtt-9k.h5 --model camoe
    vtr fit --cache cache/msrvtt-9k.h5 --model camoe --nproc 2          # 2 local processes
    torchrun --nproc_per_node 4 -m vtr fit --cache cache/msrvtt-9k.h5   # 4 GPUs, or several nodes
    """
    import os

    from vtr.safe_load import LoadError
    from vtr.train.distributed import WorkerError, env_world_size
    from vtr.train.fit import FitConfig, fit_processes

    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, dsl_temperature=dsl_temperature, seed=seed)
    cfg = FitConfig(model=model, loss=loss, device=device, **{k: v for k, v in overrides.items() if v is not None})
    run_dir = run_dir or RUNS_DIR / f"{cache_path.stem}-{model}-{loss}"
    try:
        main_rank = env_world_size() == 1 or os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 reports
        if nproc > 1 and env_world_size() > 1:
            raise click.UsageError("--nproc starts its own processes; under torchrun (WORLD_SIZE is set) leave it at 1")
        fit_processes(cache_path, run_dir, cfg, nproc, progress=not quiet and main_rank, log=_log)
    except (LoadError, ValueError, RuntimeError, FileNotFoundError, WorkerError) as e:
        _fail(e)
    if main_rank:
        click.echo(f"run folder: {run_dir}")


# ----------------------------------------------------------------------------- eval


@main.command(name="eval")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Run folder to evaluate. Default: the latest under cache/runs.")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path, exists=True),
              help="Cache to evaluate on. Default: the run's own.")
@click.option("--zero-shot", is_flag=True, help="Evaluate zero-shot CLIP (meanP over frozen frames) on --cache; no run.")
@click.option("--split", help="Split to evaluate. Default: test, or val when the cache has no test captions.")
@click.option("--dsl", is_flag=True, help="Dual Softmax at inference. Transductive: it uses all test queries at once.")
@click.option("--qbnorm", is_flag=True, help="QB-Norm (dynamic inverted softmax, training captions as the query bank).")
@click.option("--dsl-memory", "dsl_memory_mib", type=click.FloatRange(min=0), default=1024, show_default=True,
              metavar="MIB", help="With --dsl: MiB of scores kept from DSL's first pass so the second need not "
              "recompute them (the whole matrix if it fits: 10k x 10k takes 381 MiB). 0: recompute all, least memory.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the report as JSON here.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
def eval_(run_dir, cache_path, zero_shot, split, dsl, qbnorm, dsl_memory_mib, json_path, device):
    """Text-to-video and video-to-text R@1/5/10, MdR, MnR (tie-safe ranks, multi-caption protocol)."""
    from vtr.eval.report import format_table, write_json
    from vtr.eval_stage import evaluate_run, evaluate_zero_shot
    from vtr.safe_load import LoadError
    from vtr.train.runs import latest_run

    if dsl and qbnorm:
        raise click.UsageError("choose one of --dsl and --qbnorm")
    rescore = "dsl" if dsl else "qbnorm" if qbnorm else "none"
    try:
        if zero_shot:
            if not cache_path:
                raise click.UsageError("--zero-shot needs --cache")
            report = evaluate_zero_shot(cache_path, split=split, rescore=rescore, device=device,
                                        dsl_memory_mib=dsl_memory_mib)
        else:
            run_dir = run_dir or latest_run(RUNS_DIR)
            _log(f"evaluating {run_dir}")
            report = evaluate_run(run_dir, cache_path=cache_path, split=split, rescore=rescore, device=device,
                                  dsl_memory_mib=dsl_memory_mib)
    except (LoadError, ValueError, RuntimeError, FileNotFoundError) as e:
        _fail(e)
    click.echo(format_table([report]))
    if json_path:
        try:
            write_json(json_path, report)
        except OSError as e:
            _fail(e, json_path)


# ----------------------------------------------------------------------------- info


@main.command()
@click.argument("cache_path", type=click.Path(path_type=Path), required=False)
@click.option("--dataset", "dataset_name", help="Instead of a cache: a dataset's statistics from its annotations.")
@click.option("--annotations", type=click.Path(path_type=Path, exists=True),
              help="With --dataset: the annotations folder (or byo file). Default: found under --root.")
@click.option("--root", type=click.Path(path_type=Path),
              help="With --dataset: the dataset's folder; given, videos missing on disk are counted.")
@click.option("--split-variant", type=click.Choice(["9k", "7k", "full"]), help="msrvtt only (default 9k).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the summary as JSON here.")
def info(cache_path, dataset_name, annotations, root, split_variant, json_path):
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
        _dataset_info(dataset_name, annotations, root, split_variant, json_path)
        return
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
    from vtr.shards import shards_dir

    n = c.get("n", len(c["shards"]))
    click.echo(f"  combined from {len(c['shards'])} of {n} shards in {shards_dir(cache_path)} (virtual datasets: "
               f"the embeddings stay in the shard files)")
    for name, why in c.get("left_out", {}).items():
        click.echo(f"    left out {name}: {why}")


# ----------------------------------------------------------------------------- combine


@main.command()
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--shards", "n_shards", type=click.IntRange(min=1),
              help="Which splitting to combine when OUT.shards holds shards of several N. Default: the one there.")
@click.option("--partial", is_flag=True,
              help="Combine the shards that are ready even when others are missing or unfinished; those left "
                   "out are listed, and recorded in OUT (vtr info shows them).")
@click.option("--copy", is_flag=True,
              help="Copy the rows into a standalone cache instead of referring to the shard files (needs the "
                   "disk space of all shards; OUT then no longer needs OUT.shards).")
def combine(out, n_shards, partial, copy):
    """Make the cache OUT from the shard caches in OUT's .shards folder, without copying them.

    \b
    vtr extract --dataset msvd --root R --shard I/16   # for I = 0..15, anywhere
    vtr combine cache/msvd.h5                          # reads cache/msvd.shards/shard-*-of-016.h5

    OUT is a small HDF5 file of virtual datasets over the shard files (relative paths: move the folder
    as a whole). fit, eval and info read it like any cache. Shards that are missing, unfinished (part
    files left by a killed run), made with other settings, or holding another shard's videos are refused
    by name. Rerun this after re-extracting a shard: reading OUT refuses shards changed since combining.
    """
    from vtr.cache import CacheError
    from vtr.shards import combine_shards, shards_dir

    try:
        r = combine_shards(out, n=n_shards, partial=partial, copy=copy, log=_log)
    except CacheError as e:
        _fail(e)
    how = "copied into a standalone cache" if copy else f"as virtual datasets over {shards_dir(out)}"
    click.echo(f"{out}: combined {len(r.combined)} of {r.n} shards ({r.videos} videos, {r.captions} captions) {how}")
    if r.left_out:
        click.echo(f"  partial, left out: {', '.join(r.left_out)}")


def _dataset_info(name, annotations, root, split_variant, json_path) -> None:
    from vtr.extract.datasets import dataset_stats, load_dataset

    if annotations is None and root is None:
        raise click.UsageError("--dataset needs --annotations DIR, --root DIR, or both")
    try:
        # Without --root there is no videos folder to check: statistics of the annotations alone.
        ds = load_dataset(name, root or annotations, annotations=annotations, check_videos=root is not None,
                          split_variant=split_variant)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
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


# ----------------------------------------------------------------------------- parse


def _read_caption_lines(path: Path) -> list[str]:
    """One caption a line (UTF-8, blank lines skipped); '-' reads stdin."""
    stream = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    captions = []
    with stream:
        for n, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise click.ClickException(f"{path}:{n}: not UTF-8 ({e.reason})") from None
            if line:
                captions.append(line)
    return captions


@main.command(name="parse")
@click.argument("caption", required=False)
@click.option("--jsonl", "jsonl_path", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Parse a file with one caption a line ('-': stdin; blank lines skipped) and write one JSON "
                   "object a line: caption, action, entity, scene and their *_lemmas.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="With --jsonl: write the JSON lines to this file instead of stdout.")
@click.option("--workers", type=int, help="With --jsonl: parser processes. Default: one per core, used only "
                                          "when each gets at least 2,000 captions.")
@click.option("--batch-size", default=512, show_default=True, help="Captions per nlp.pipe batch.")
@click.option("--tree", is_flag=True, help="Also show the dependency parse (JSON: a 'tree' field).")
@click.option("--quiet", is_flag=True, help="No progress bar on stderr.")
def parse_cmd(caption, jsonl_path, out, workers, batch_size, tree, quiet):
    """Split captions into action, entity and scene phrases with spaCy (the CAMoE text streams).

    \b
    vtr parse "a man is slicing a tomato in the kitchen"
    vtr parse --jsonl captions.txt --out parses.jsonl

    Actions are content verbs with particles, objects and directions; entities are the participants'
    noun phrases; scenes are where it happens. The lemmas are the heads. Rules: vtr/extract/parse.py.
    """
    from vtr.extract.parse import PARSER_VERSION, STREAMS, parse_captions

    if (caption is None) == (jsonl_path is None):
        raise click.UsageError("give a CAPTION or --jsonl FILE (one of the two)")
    if out and not jsonl_path:
        raise click.UsageError("--out goes with --jsonl")
    try:
        if caption is not None:
            p = parse_captions([caption], batch_size=batch_size)[0]
            click.echo(f"caption  {caption}")
            for s in STREAMS:
                pairs = list(zip(getattr(p, s), getattr(p, f"{s}_lemmas")))
                lines = [f"{phrase}  [{lemma}]" for phrase, lemma in pairs] or ["(none)"]
                for i, line in enumerate(lines):
                    click.echo(f"{s if i == 0 else '':<8} {line}")
            if tree:
                click.echo("parse    (index, text, lemma, tag, dep, head)")
                click.echo("\n".join("         " + row for row in p.tree.splitlines()))
            return
        if not (str(jsonl_path) == "-" or jsonl_path.is_file()):
            raise click.ClickException(f"{jsonl_path}: no such file")
        captions = _read_caption_lines(jsonl_path)
        parses = parse_captions(captions, batch_size=batch_size, n_process=workers, progress=not quiet)
    except RuntimeError as e:  # the spaCy model is missing
        _fail(e)
    sink = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        for text, p in zip(captions, parses):
            sink.write(json.dumps(p.to_dict(text, tree=tree), ensure_ascii=False) + "\n")
    finally:
        if out:
            sink.close()
    if out:
        _log(f"wrote {len(parses)} parses to {out} (parser rules v{PARSER_VERSION})")


# vtr index, vtr search (and the commands built on them) live in their own module
from vtr.cli_search import register as _register_search  # noqa: E402

_register_search(main)


if __name__ == "__main__":
    sys.exit(main())
