"""`vtr extract` and `vtr combine`: write the cache, on one machine, as shards, or on Ray."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from vtr.cli_common import CACHE_DIR, fail, log


def reader_options(f):
    """The options each dataset reader declares (vtr.extract.datasets), one flag each: a new dataset's
    options appear here without an edit. Unset (None), the reader's own default applies."""
    from vtr.extract.datasets import declared_options

    for name, (opt, owners) in reversed(declared_options().items()):
        kind = click.Choice(opt.choices) if opt.choices else (None if opt.type is bool else opt.type)
        f = click.option(opt.flag, name, type=kind, is_flag=opt.type is bool, default=None,
                         help=f"{', '.join(owners)} only: {opt.describe()}")(f)
    return f


def _read_config(ctx, param, path):
    """--config FILE: a TOML table of this command's options (``max-frames = 12`` or ``max_frames = 12``),
    used as their defaults; flags given on the command line win."""
    if path is None:
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise click.BadParameter(f"{path}: not valid TOML ({e})", ctx, param) from None
    except OSError as e:
        raise click.BadParameter(f"{path}: {e.strerror or e}", ctx, param) from None
    names = {o.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params if p is not param
             for o in p.opts if o.startswith("--")}
    unknown = sorted(k for k in table if k.replace("-", "_") not in names)
    if unknown:
        raise click.BadParameter(f"{path}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                 f"the keys are this command's long options ({', '.join(sorted(names))})", ctx, param)
    ctx.default_map = {**(ctx.default_map or {}), **{names[k.replace("-", "_")]: v for k, v in table.items()}}
    return path


@click.command()
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), is_eager=True, expose_value=False,
              callback=_read_config, help="A TOML file of these options (e.g. dataset = \"msvd\", max-frames = 12; "
              "paths are relative to the working folder), used as defaults: options given here win.")
@click.option("--dataset", "dataset_name", required=True,
              help="Dataset to read: msvd, msrvtt, didemo, activitynet, lsmdc, byo (your own CSV/JSONL), or "
                   "synthetic (built in, made on demand).")
@click.option("--root", type=click.Path(path_type=Path), help="The dataset's folder (videos and annotations). "
              "Default for synthetic: cache/synthetic.")
@click.option("--annotations", type=click.Path(path_type=Path, exists=True),
              help="Folder (or, for byo, file) holding the annotations. Default: found under --root.")
@click.option("--videos", type=click.Path(path_type=Path),
              help="Folder of the videos, relative to --root. Default: the dataset's usual one (e.g. YouTubeClips).")
@reader_options
@click.option("--out", type=click.Path(path_type=Path),
              help="Cache file to write or update. Default: cache/<dataset>.h5 (msrvtt: cache/msrvtt-<variant>.h5).")
@click.option("--clip", "clip_model", default="ViT-B/32", show_default=True,
              help="CLIP model: an OpenAI name (weights in --clip-cache), a checkpoint path, or random:tiny "
                   "(random weights for offline tests: not meaningful for real retrieval); an open_clip backbone "
                   "as open_clip:ARCH:PRETRAINED (a tag or a weights file) or random:open_clip:ARCH "
                   "(docs/backbones.md).")
@click.option("--clip-cache", type=click.Path(path_type=Path),
              help="Folder holding OpenAI's CLIP weight files; a missing one is downloaded there once and its "
                   "SHA256 checked, as clip.load does (open_clip weights: under open_clip/ there). "
                   "Default: $VTR_CLIP_CACHE or ~/.cache/clip.")
@click.option("--offline", is_flag=True,
              help="Never download CLIP weights: a missing file is an error naming the file to copy where "
                   "(also: VTR_OFFLINE=1).")
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when there is one), cpu or cuda[:N].")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
              help="CLIP's arithmetic. auto: fp16 on a GPU; bf16 on a CPU with bfloat16 instructions (AVX512-BF16 "
                   "or AMX), faster there, with embeddings close to fp32's (docs/how-it-works.md); on other x86 "
                   "CPUs int8 image tower if it passes a quality check on the first frames (docs/performance.md), "
                   "else fp32. fp32: exact fp32 features, slowest. fp16: GPU only. int8: x86 CPU with AVX2. Not a cache setting: a cache resumed in "
                   "another precision mixes rows (keep it fixed if that matters).")
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
def extract(quiet, shard_spec, ray_address, n_shards, max_retries, **options):
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
    from vtr.core.omp import let_idle_threads_sleep

    let_idle_threads_sleep()  # before torch is imported: decoders and CLIP's threads share the cores
    from vtr.cache import CacheError
    from vtr.core.safe_load import LoadError
    from vtr.extract.clip_encoder import ClipWeightsMissing
    from vtr.extract.shards import parse_shard

    if shard_spec and ray_address:
        raise click.UsageError("--shard runs one shard here; --ray runs all of them on Ray: choose one")
    if (ray_address is None) != (n_shards is None):
        raise click.UsageError("--ray and --shards N go together" if ray_address is None
                               else "--ray needs --shards N, the number of shards to split the dataset into")
    writing = None  # the cache file, once the run writes it: an OS error after that is about it
    try:
        job = job_from_options(options, shard=parse_shard(shard_spec) if shard_spec else None)
        dataset = job.load_dataset(progress=not quiet)
        # The dataset's name carries what changes its splits (msrvtt-9k vs msrvtt-full): one cache each.
        job = replace(job, out=str(job.out or CACHE_DIR / f"{dataset.name}.h5"))
        _report_dataset(dataset, options["root"], job.settings.max_frames, job.settings.max_words)
        if ray_address:
            _extract_on_ray(job, ray_address, n_shards, max_retries, quiet)
            return
        encoder = job.clip.load(progress=not quiet, log=log)
        writing = job.writes()
        stats = job.run(dataset=dataset, encoder=encoder, progress=not quiet, log=log)
    except (ClipWeightsMissing, LoadError, CacheError, ValueError, OSError, RuntimeError) as e:
        fail(e, writing, _extract_hint(e) if writing is not None else "")
    out = job.writes()
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
    if job.shard:
        click.echo(f"when all {job.shard[1]} shards are done: vtr combine {job.out}")


def job_from_options(options: dict, shard=None):
    """The `ExtractJob` that `vtr extract`'s options describe (the generic ones by name, the rest are the
    dataset reader's own). ``out`` stays None when not given: it is named after the dataset once read."""
    from vtr.extract.job import ClipChoice, DatasetSource, ExtractJob
    from vtr.extract.settings import ExtractSettings

    o = dict(options)

    def path(p):
        return None if p is None else str(p)

    name, root, annotations, videos = o.pop("dataset_name"), o.pop("root"), o.pop("annotations"), o.pop("videos")
    clip = ClipChoice(o.pop("clip_model"), weights_dir=path(o.pop("clip_cache")), device=o.pop("device"),
                      precision=o.pop("precision"), offline=o.pop("offline") or None)
    out = path(o.pop("out"))
    settings = ExtractSettings(**{k: o.pop(k) for k in ("fps", "max_frames", "max_words", "workers", "batch_frames",
                                                      "text_batch", "flush_every", "retry_failed", "keep_removed")})
    # What is left are the options the dataset readers declare (--split-variant, ...).
    dataset = DatasetSource(name, path(root), annotations=path(annotations), videos=path(videos), options=o)
    return ExtractJob(dataset, clip, settings, out, shard)


def _extract_on_ray(job, address, n, max_retries, quiet) -> None:
    """`vtr extract --ray`: the shards as Ray tasks, then the combined cache. Paths go to workers absolute."""
    from vtr.extract.ray_runner import run_on_ray
    from vtr.extract.shards import shards_dir

    shown, job = job.out, job.portable()  # the cache is named as the user named it
    result = run_on_ray(job, n, address=None if address == "local" else address,
                        cpus_per_shard=job.settings.workers or 1, max_retries=max_retries, progress=not quiet, log=log)
    done = result.stats.values()
    click.echo(f"{n} shards on Ray: decoded {sum(s['videos_decoded'] for s in done)} videos "
               f"({sum(s['videos_failed'] for s in done)} failed, {sum(s['videos_cached'] for s in done)} already "
               f"cached), encoded {sum(s['captions_encoded'] for s in done)} captions (CLIP in "
               f"{', '.join(sorted({s.get('precision') or '?' for s in done})) or job.clip.precision})")
    c = result.combined
    click.echo(f"{shown}: combined {len(c.combined)} shards ({c.videos} videos, {c.captions} captions) as virtual "
               f"datasets over {shards_dir(shown)}")


def _extract_hint(e: Exception) -> str:
    """What to do after the disk failed a run of `vtr extract` (rows written before are never lost)."""
    import errno

    from vtr.core.io_errors import NO_SPACE, NOT_ALLOWED, os_cause

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
        log(f"note: {note}")
    if dataset.missing_videos:
        shown = ", ".join(dataset.missing_videos[:5]) + (", ..." if len(dataset.missing_videos) > 5 else "")
        log(f"{len(dataset.missing_videos)} videos named in the annotations are missing under {root}; "
             f"skipped with their captions: {shown}")
    frames, words = max_frames or dataset.max_frames, max_words or dataset.max_words
    own = (f" (the dataset's protocol: {dataset.max_frames} frames, {dataset.max_words} words)"
           if (frames, words) != (dataset.max_frames, dataset.max_words) else "")
    log(f"{dataset.name}: {len(dataset.videos)} videos, {len(dataset.captions)} captions; protocol: "
         f"{frames} frames, {words} words, evaluated split {dataset.eval_split}{own}")


@click.command()
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
    from vtr.extract.shards import combine_shards, shards_dir

    try:
        r = combine_shards(out, n=n_shards, partial=partial, copy=copy, log=log)
    except CacheError as e:
        fail(e)
    how = "copied into a standalone cache" if copy else f"as virtual datasets over {shards_dir(out)}"
    click.echo(f"{out}: combined {len(r.combined)} of {r.n} shards ({r.videos} videos, {r.captions} captions) {how}")
    if r.left_out:
        click.echo(f"  partial, left out: {', '.join(r.left_out)}")
