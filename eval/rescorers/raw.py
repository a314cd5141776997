"""Raw scores, ranked as the head gives them: the default, and the base ``TileValues``."""
from __future__ import annotations

from vtr.eval.rescorers.base import Rescorer, register


@register
class Raw(Rescorer):
    name = "none"
    label = "raw"
