"""How many cores this process may use, and OpenMP's wait policy for extraction.

The wait policy is chosen before torch loads its OpenMP runtime.

Extraction runs ffmpeg decoders beside CLIP's torch threads on the same cores. By default an idle OpenMP
thread spins for a while before it sleeps, and while the decoders hold a core that spinning is CPU taken
from them. With ``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep at once: `vtr extract` used 7% less CPU per
frame (bench/extract.py on 2 cores, 110.5 ms against 119.6 in a default run of the same code). Training
is the other way round, 16% slower per CAMoE epoch (bench/fit.py at 3,000 videos), so only extraction
sets it.

The runtime reads the variable once, when torch is imported; this module imports nothing heavy.
"""
from __future__ import annotations

import os
import sys

VARIABLE = "OMP_WAIT_POLICY"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else all of them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def let_idle_threads_sleep() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy. True when it takes effect: it was
    set (here or by the user) to PASSIVE before torch was imported."""
    if "torch" not in sys.modules:
        os.environ.setdefault(VARIABLE, "PASSIVE")
    return "torch" not in sys.modules and os.environ[VARIABLE].upper() == "PASSIVE"
