"""Data-parallel training over several processes (one per GPU, or a few on a CPU machine).

How a global batch is split. Every rank draws the same ``epoch_batches`` (same seed, same epoch), and rank
r encodes only its contiguous slice of each global batch (``np.array_split`` sizes, so a last batch that
does not divide by the world size still works). The embeddings of all slices are then gathered, in rank
order, into the embeddings of the whole global batch, and every rank computes the contrastive loss on the
full [B, B] logits: DSL and InfoNCE see the same negatives as one process with batch B.

Why the result equals one process. Let L be the loss of the global batch, x_r rank r's slice of the
embeddings and theta the head's parameters. ``gather_rows`` is an autograd function: its forward puts
every rank's slice in its slot; its backward sends rank r's encoder the gradient of slot r only (the other
slots belong to the other ranks' graphs), after summing the gradient over the ranks (all_reduce). Every
rank computes the same L, so rank r receives N * dL/dx_r. DistributedDataParallel then averages the parameter gradients over the N ranks:

    (1/N) * sum_r N * dL/dx_r * dx_r/dtheta = sum_r dL/dx_r * dx_r/dtheta = dL/dtheta

which is the one-process gradient, with no loss scaling. Parameters used after the gather (a learned logit
scale in ``pair_loss``) get the full dL/dphi on every rank, and the average of N equal values is dL/dphi
again. (The other common recipe, a gather without a backward and the loss multiplied by N, gets the
encoder right but multiplies the gradient of such post-gather parameters by N.)

Launching. ``torchrun --nproc_per_node N -m vtr fit ...`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; ``vtr fit --nproc N`` (``launch``) starts N local processes through torch's
own launcher (``elastic_launch``, what torchrun runs). ``init_from_env`` reads the variables: gloo on CPU,
NCCL on CUDA (device cuda:LOCAL_RANK).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vtr.core.omp import usable_cores

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a data-parallel job (world_size 1: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: object = None  # process group of the embedding gathers (apart from DDP's own gradient reduction)
    owns_group: bool = False  # True when init_from_env started the default group (and shutdown ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def env_world_size() -> int:
    """WORLD_SIZE as torchrun (or ``launch``) set it; 1 outside a distributed launch."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"WORLD_SIZE={value!r} is not an integer") from None


def init_from_env(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the job described by torchrun's environment variables; returns (Dist, this rank's device).

    Without WORLD_SIZE (or with WORLD_SIZE=1) nothing is initialised. On CUDA each rank takes the GPU
    ``cuda:LOCAL_RANK`` and the backend is NCCL; on CPU it is gloo.
    """
    world = env_world_size()
    if world <= 1:
        return Dist(), device
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun or "
                           "`vtr fit --nproc N`")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    # A group of its own for the embedding gathers, so their collectives never interleave with DDP's
    # bucketed gradient all-reduces on the default group.
    group = dist.new_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, group, owns), device


def shutdown(d: Dist) -> None:
    """Leave the job: destroy the process groups ``init_from_env`` made."""
    if not d.active:
        return
    dist.destroy_process_group(d.group)
    if d.owns_group:
        dist.destroy_process_group()


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Rows of a global batch of ``n`` each rank encodes: contiguous, the first ``n % world_size`` one more."""
    return [len(part) for part in np.array_split(np.arange(n), world_size)]


def local_rows(rows: np.ndarray, d: Dist) -> np.ndarray:
    """This rank's slice of a global batch's rows.

    A rank whose slice is empty (a last batch smaller than the world size) gets the batch's first row
    as a stand-in: it still runs forward and backward, as DDP requires of every rank, but ``gather_rows``
    drops the row, so it adds nothing to the loss and a zero gradient.
    """
    sizes = shard_sizes(len(rows), d.world_size)
    start = sum(sizes[: d.rank])
    mine = rows[start : start + sizes[d.rank]]
    return mine if len(mine) else rows[:1]


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 with slot sizes ``sizes``; backward sums the gradient over ranks (module doc)."""

    @staticmethod
    def forward(ctx, x, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        width = max(sizes)
        padded = x.new_zeros((width, *x.shape[1:]))  # all_gather needs one shape on every rank
        padded[: len(x)] = x
        slots = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(slots, padded.contiguous(), group=group)
        return torch.cat([slot[:n] for slot, n in zip(slots, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        mine = grad[start : start + ctx.sizes[ctx.rank]]
        return mine, None, None, None


def gather_rows(x: torch.Tensor, sizes: list[int], d: Dist) -> torch.Tensor:
    """The global batch's rows of ``x`` from every rank, in rank order, differentiable into the local slice.

    ``x`` holds this rank's ``sizes[rank]`` rows (or one stand-in row when that is 0, see ``local_rows``).
    With one process it is returned as is.
    """
    if not d.active:
        return x
    return _GatherRows.apply(x[: sizes[d.rank]], list(sizes), d.rank, d.group)


class PairLoss(nn.Module):
    """The batch loss as one module call: encode the local pairs, gather the global batch, ``pair_loss``.

    DistributedDataParallel syncs gradients for what runs inside its ``forward``, so the whole loss is
    computed there (wrapping ``head.encode_*`` and calling ``pair_loss`` outside would leave parameters
    used after the gather out of DDP's bookkeeping). The head stays reachable as ``.head`` for validation
    and checkpoints, whose state dict keys are unchanged.
    """

    def __init__(self, head, loss_fn, d: Dist | None = None):
        super().__init__()
        self.head, self.loss_fn, self.dist = head, loss_fn, d or Dist()

    def forward(self, frames, mask, text, sizes):
        t, gate = self.head.encode_text(text)
        v = self.head.encode_video(frames, mask)
        t, gate, v = (gather_rows(x, sizes, self.dist) for x in (t, gate, v))
        return self.head.pair_loss(t, gate, v, self.loss_fn)


def _worker(nproc: int, fn, args) -> None:
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of each process taking them all
        torch.set_num_threads(max(1, usable_cores() // nproc))
    fn(*args)


@contextlib.contextmanager
def _quiet_launcher():
    """Silence torch's launcher logs while it runs: a failure reaches the user as one `WorkerError` line."""
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def launch(fn, nproc: int, *args) -> None:
    """Run ``fn(*args)`` in ``nproc`` new processes on this machine, as ``torchrun --standalone`` would.

    torch's elastic launcher starts them (spawned; RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and a free
    MASTER_PORT set) and stops the others when one fails. ``fn`` must be importable (a module-level function).
    Unless OMP_NUM_THREADS is set, each process takes an equal share of the cores. A failure raises a
    ``WorkerError`` naming the first process that failed and its error.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    try:
        # The launcher's per-process error files go to a folder of ours, removed when the job ends.
        with tempfile.TemporaryDirectory(prefix="vtr-launch-") as logs, _quiet_launcher():
            config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"vtr-{uuid.uuid4().hex}",
                                  rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                                  max_restarts=0, monitor_interval=0.1, start_method="spawn",
                                  logs_specs=DefaultLogsSpecs(log_dir=logs))
            elastic_launch(config, _worker)(nproc, fn, args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        raise WorkerError(f"process {rank} of {nproc} failed: "
                          f"{message or f'exit code {failure.exitcode}'}") from e


class WorkerError(RuntimeError):
    """A process started by ``launch`` failed."""
