"""Run extraction shards as Ray tasks on an existing cluster (or a local one), then combine them.

One task per shard, each running the same `vtr.extract.job.ExtractJob` that ``vtr extract --shard I/N``
runs, so a shard done by Ray and one done by a SLURM array job are the same file. A task gets the job
as plain values and loads the dataset and CLIP on its worker. Each task asks for ``num_cpus`` CPUs (its
decode workers) and one GPU when the cluster has GPUs. A task whose worker dies (a node lost, out of
memory) or that raises an unexpected error is retried up to ``max_retries`` times by Ray; a retry resumes
from the shard's part files, so it redoes little. Errors that a retry cannot fix (a cache with other
settings, a missing file, missing CLIP weights) fail the shard at once. The driver shows a bar over
shards as they finish; when all are done it combines them, and when some failed it names each one and
keeps the finished shards, so running the same command again does only what is left.

Ray is optional (``pip install 'vtr[ray]'``): it is imported only here, only when asked for.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

from tqdm import tqdm

from vtr.cache import CacheError
from vtr.core.omp import VARIABLE as OMP_VARIABLE
from vtr.extract.job import ExtractJob
from vtr.extract.shards import CombineReport, ShardError, combine_shards, shard_path

# Failures a retry cannot fix: report them at once instead of retrying.
_PERMANENT = (CacheError, ValueError, FileNotFoundError, PermissionError)


def import_ray():
    """The ray module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray, which is not installed: pip install 'vtr[ray]'") from None
    return ray


def _run_shard(job: ExtractJob, i: int, n: int) -> dict:
    """The task body: {"ok": stats} or {"error": message} for failures that retrying cannot fix."""
    from vtr.extract.clip_encoder import ClipWeightsMissing

    try:
        stats = job.for_shard(i, n).run(progress=False, log=lambda msg: None)
    except (*_PERMANENT, ClipWeightsMissing) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"ok": stats.as_dict()}


@dataclass
class RayResult:
    """Per-shard results of a Ray run, and the combined cache when every shard finished."""

    stats: dict[int, dict]  # shard index -> ExtractStats as a dict
    failed: dict[int, str]  # shard index -> error
    combined: CombineReport | None


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at ``address`` or start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise RuntimeError(f"could not {'reach Ray at ' + address if address else 'start a local Ray'}: {e}") from e
    return True


def run_on_ray(job: ExtractJob, n: int, *, address: str | None = None, cpus_per_shard: int = 1,
               local_cpus: int | None = None, max_retries: int = 3, progress: bool = True, combine: bool = True,
               log: Callable[[str], None] = print) -> RayResult:
    """Extract shards 0..n-1 of ``job`` as Ray tasks, then combine them into ``job.out``.

    ``address`` is a cluster's address (``auto``, ``ray://host:10001``, ...); None starts a local Ray
    with ``local_cpus`` CPUs (all when None), unless Ray is already initialised in this process, which is
    then used as it is. Raises ShardError naming every failed shard (finished shards are kept).
    """
    ray = import_ray()
    started = _connect(ray, address, local_cpus)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        # Each task's worker starts with extraction's OpenMP setting (vtr.core.omp), before it imports torch.
        env = {OMP_VARIABLE: os.environ.get(OMP_VARIABLE, "PASSIVE")}
        task = ray.remote(_run_shard).options(
            num_cpus=cpus_per_shard, num_gpus=1 if gpus else 0, max_retries=max_retries, retry_exceptions=True,
            runtime_env={"env_vars": env})
        where = f"Ray at {address}" if address else "a local Ray"
        log(f"{n} shards as Ray tasks on {where} ({ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
            f"{gpus:.0f} GPUs; {cpus_per_shard} CPU{'s' if cpus_per_shard > 1 else ''}"
            f"{' and 1 GPU' if gpus else ''} a task)")
        if job.settings.workers is None:  # decode with the CPUs the task asked for
            job = replace(job, settings=replace(job.settings, workers=cpus_per_shard))
        refs = {task.remote(job, i, n): i for i in range(n)}
        stats, failed = _gather(ray, refs, n, progress, log)
    finally:
        if started:
            ray.shutdown()
    if failed:
        listed = "\n  ".join(f"{shard_path(job.out, i, n).name} (shard {i}/{n}): {err}"
                              for i, err in sorted(failed.items()))
        raise ShardError(f"{len(failed)} of {n} shards failed:\n  {listed}\nThe other shards are done and kept; "
                         f"run the same command again to redo only what is missing.")
    report = combine_shards(job.out, n=n, log=log) if combine else None
    return RayResult(stats, failed, report)


def _gather(ray, refs: dict, n: int, progress: bool, log) -> tuple[dict, dict]:
    """Wait for the shard tasks as they finish, with a progress bar over shards."""
    stats, failed = {}, {}
    pending = list(refs)
    with tqdm(total=n, desc="shards", unit="shard", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = refs[ref]
                try:
                    result = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - retries used up (RayTaskError, worker or node lost)
                    result = {"error": _short(e)}
                if "error" in result:
                    failed[i] = result["error"]
                    log(f"shard {i}/{n} failed: {result['error']}")
                else:
                    stats[i] = result["ok"]
                bar.update(1)
    return stats, failed


def _short(e: Exception) -> str:
    """The last line of a Ray task error (the remote exception), not its whole traceback."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else e}"
