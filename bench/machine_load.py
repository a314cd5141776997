"""What the speed benchmarks share: the machine's load around a run, and saving the results.

Other work on the machine shares its cores and lowers every figure, so each benchmark records the
1-minute load average when it starts and when it ends, in its results and in its last lines.
"""
from __future__ import annotations

import os
from pathlib import Path

from vtr.eval.report import write_json


class LoadWatch:
    """The 1-minute load average at the start of a benchmark (on construction) and at its end (`finish`)."""

    def __init__(self):
        self.start = os.getloadavg()[0]

    def finish(self, res: dict, cores: int | None = None) -> str:
        """Record start and end in ``res["load_average_start_end"]``; return the line to print."""
        end = os.getloadavg()[0]
        res["load_average_start_end"] = [round(self.start, 2), round(end, 2)]
        return (f"load average (1 min) at start {self.start:.2f}, at end {end:.2f} on {cores or os.cpu_count()} "
                f"cores: other work on the machine lowers every figure")


def save(res: dict, path: Path | None) -> None:
    """Write ``res`` as JSON to ``path`` (nothing when no path was asked for)."""
    if path:
        write_json(path, res)
        print(f"wrote {path}")
