"""Rescoring methods for ``vtr eval``: raw scores, DSL and QB-Norm, one module each.

Adding a method is adding one module here: a ``Rescorer`` subclass decorated with ``@register``
(``base.py`` says what it must provide). Every module of this package is imported below, so the method is
then listed by ``names()``, offered as a ``vtr eval`` flag and accepted by ``chunked_ranks``.
"""
from __future__ import annotations

import importlib
import pkgutil

from vtr.eval.rescorers.base import (DEFAULT, RankJob, RankPlan, Rescorer, TileValues, flagged, get, names,
                                     register)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DEFAULT", "RankJob", "RankPlan", "Rescorer", "TileValues", "flagged", "get", "names", "register"]
