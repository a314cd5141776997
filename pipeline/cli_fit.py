"""`vtr fit`: train a head on a cache, in one process, N local processes, or under torchrun."""
from __future__ import annotations

import json
from pathlib import Path

import click

from vtr.cli_common import RUNS_DIR, fail, log


def _head_options(ctx, param, values) -> dict:
    """``KEY=VALUE`` pairs as a dict; a VALUE that reads as JSON (4, 0.1, false) is that, else the text."""
    options = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx, param)
        try:
            options[key.strip()] = json.loads(text)
        except ValueError:
            options[key.strip()] = text
    return options


@click.command()
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
@click.option("--weight-decay", type=float, help="AdamW weight decay, on weight matrices only (default 0.01).")
@click.option("--warmup-epochs", type=float,
              help="Epochs of linear learning-rate warmup (fractions allowed; default 1).")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]),
              help="Learning rate after warmup: constant (a finished run can be extended), or cosine decay to 0 "
                   "at --epochs (default constant).")
@click.option("--dsl-temperature", type=float, help="Temperature of DSL's prior softmax in training (paper: 1000).")
@click.option("--seed", type=int, help="Seed for initialisation and sampling.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--threads", "num_threads", type=click.IntRange(min=0),
              help="torch CPU threads per process (0: torch's default, all physical cores). May change on resume.")
@click.option("--head-option", "head_options", multiple=True, callback=_head_options, metavar="KEY=VALUE",
              help="An option of the head's constructor, repeatable: e.g. layers=4, dropout=0.2, "
                   "learn_scale=true, and for camoe experts=global,action, gate=false, missing=mask, "
                   "expert_loss_weight=0.")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Train data-parallel in N processes on this machine (DistributedDataParallel: gloo on CPU, "
                   "one GPU each with NCCL). The loss still sees the whole --batch-size batch. On a CPU, N processes of "
                   "cores/N threads can be faster than one (`bench/fit.py --nproc 1,2` measures it); dropout is then "
                   "drawn per process, so results match one process only up to that. Under "
                   "`torchrun --nproc_per_node N -m vtr fit ...` leave it at 1.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fit(cache_path, run_dir, model, loss, epochs, batch_size, lr, weight_decay, warmup_epochs, schedule,
        dsl_temperature, seed, device, num_threads, head_options, nproc, quiet):
    """Train an alignment head on the cached features; writes config, checkpoints, log and curves.

    \b
    vtr fit --cache cache/msrvtt-9k.h5 --model camoe
    vtr fit --cache cache/msrvtt-9k.h5 --model camoe --nproc 2          # 2 local processes
    torchrun --nproc_per_node 4 -m vtr fit --cache cache/msrvtt-9k.h5   # 4 GPUs, or several nodes
    """
    import os

    from vtr.core.safe_load import LoadError
    from vtr.train.distributed import WorkerError, env_world_size
    from vtr.train.fit import FitConfig, fit_processes

    # Options left out keep FitConfig's defaults, so config.json (and resuming) depends on the values alone.
    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                     warmup_epochs=warmup_epochs, schedule=schedule, dsl_temperature=dsl_temperature, seed=seed,
                     num_threads=num_threads)
    cfg = FitConfig(model=model, loss=loss, device=device, head_options=head_options,
                    **{k: v for k, v in overrides.items() if v is not None})
    run_dir = run_dir or RUNS_DIR / f"{cache_path.stem}-{model}-{loss}"
    try:
        main_rank = env_world_size() == 1 or os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 reports
        if nproc > 1 and env_world_size() > 1:
            raise click.UsageError("--nproc starts its own processes; under torchrun (WORLD_SIZE is set) leave it at 1")
        fit_processes(cache_path, run_dir, cfg, nproc, progress=not quiet and main_rank, log=log)
    except (LoadError, ValueError, RuntimeError, FileNotFoundError, WorkerError) as e:
        fail(e)
    if main_rank:
        click.echo(f"run folder: {run_dir}")
