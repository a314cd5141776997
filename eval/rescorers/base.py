"""The rescoring interface: what a method tells the tile engine, and the registry that lists the methods.

A method is a ``Rescorer`` subclass in its own module of this package, decorated with ``@register``. Its
class attributes name it (the report's ``"rescore"`` and the ``vtr eval --<name>`` flag) and say what it
needs; ``plan`` runs whatever it must learn before the ranking pass (DSL's normalisers, QB-Norm's bank
statistics) and returns the ``TileValues`` the ranks are counted on. Nothing outside this package lists the
methods: the CLI, ``vtr.eval.stage`` and ``chunked_ranks`` ask the registry.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from vtr.core.metrics import Blocks


class TileValues:
    """The values a tile's scores are ranked as, per direction; this base ranks the scores as scored (raw).

    For each tile, the engine calls ``begin`` once, then ranks ``t2v(...)`` within caption rows and
    ``v2t(...)`` within video columns. Each returns a tile of ``dtype``, written into ``out`` (a scratch tile)
    or returned as is; it must never write into ``s``. ``own`` is, on a diagonal tile, the column of each
    caption's own video (None elsewhere); ``buffers`` hands out reused scratch tiles (``tiles.Buffers``).
    Equal scores must get bit-equal values in any tile, or the tie rule breaks (docs/evaluation-ties.md).
    """

    dtype = torch.float32

    def begin(self, s, r, c, rows, cols, own, buffers) -> None:
        pass

    def t2v(self, s, rows, cols, out):
        return s

    v2t = t2v


def first_values(cnt_t: torch.Tensor, cnt_v: torch.Tensor):
    """The ranks counted on the plan's first (only) ``TileValues``."""
    return cnt_t[0], cnt_v[0]


@dataclass
class RankPlan:
    """What the ranking pass runs: the tile scorer it reads, the values it counts ranks on, and how one rank
    per query is chosen from the counts [len(values), M] and [len(values), N] (captions in sorted order)."""

    score: Callable
    values: list[TileValues] = field(default_factory=lambda: [TileValues()])
    checked: bool = False  # an earlier pass refused non-finite scores already: the ranking pass need not check
    choose: Callable = first_values


@dataclass
class RankJob:
    """One ranking: encoded captions sorted by video (``blocks.order``), in the caller's order, and videos."""

    head: object
    t: torch.Tensor  # [M, E, D] captions, in sorted order
    gate: torch.Tensor  # [M, E]
    v: torch.Tensor  # [N, E, D]
    blocks: Blocks
    chunk: int
    show: bool  # progress bars
    t_given: torch.Tensor  # captions in the caller's order (a bank pass needs no sorting)
    gate_given: torch.Tensor
    bank: tuple | None = None  # (t, gate, v) of a query bank, for methods that use one


class Rescorer:
    """One rescoring method. Subclasses set the class attributes and override ``plan`` (and ``notes``).

    Options reach every method as keywords (``dsl_memory_mib``, ``beta``, ``k``, ...); each takes those it
    knows and ignores the rest, so a caller need not know which method wants what.
    """

    name: ClassVar[str]  # the report's "rescore"; also the `vtr eval --<name>` flag
    label: ClassVar[str] = ""  # how tables name it ("raw", "DSL", "QB-Norm")
    flag_help: ClassVar[str | None] = None  # help of that flag; None: no flag (the default method)
    transductive: ClassVar[bool] = False  # a query's values depend on the other test queries
    uses_bank: ClassVar[bool] = False  # needs a query bank: bank=(t, gate, v)
    cosine: ClassVar[bool] = False  # scores on the cosine scale (logits / the head's scale)
    defer_scale: ClassVar[bool] = False  # tiles may leave the logit scale out (``TileScorer.alpha`` holds it)
    progress: ClassVar[str] = "ranks"  # the ranking pass's progress bar

    def __init__(self, **options):
        self.options = options

    def plan(self, job: RankJob, score) -> RankPlan:
        """Run what must come before the ranking pass; ``score`` is the job's ``TileScorer``."""
        return RankPlan(score)

    def notes(self, bank_split: str | None = None, bank=None) -> list[str]:
        """Lines for the report's "notes" (``bank``: the query bank's ``CacheTensors``, when one is used)."""
        return []


REGISTRY: dict[str, type[Rescorer]] = {}
DEFAULT = "none"


def register(cls: type[Rescorer]) -> type[Rescorer]:
    """Class decorator: list ``cls`` under ``cls.name``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two rescoring methods are named {cls.name!r}: {REGISTRY[cls.name]} and {cls}")
    REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """Every method's name: the default (raw scores) first, then the others in alphabetical order."""
    return tuple(sorted(REGISTRY, key=lambda n: (n != DEFAULT, n)))


def get(name: str) -> type[Rescorer]:
    """The method called ``name``; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"rescore must be one of {names()}, got {name!r}")
    return REGISTRY[name]


def flagged() -> list[type[Rescorer]]:
    """The methods a user picks with a flag (every one but the default), in ``names()`` order."""
    return [REGISTRY[n] for n in names() if REGISTRY[n].flag_help is not None]
