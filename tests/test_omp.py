"""Extraction lets idle OpenMP threads sleep, unless the user chose, and only before torch is loaded."""
import os
import subprocess
import sys

PROBE = ("import sys; from vtr.core.omp import let_idle_threads_sleep as f; {before}"
         "print(f(), __import__('os').environ.get('OMP_WAIT_POLICY'))")


def run(before: str = "", **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=environ, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_passive_is_set_before_torch_loads():
    assert run() == "True PASSIVE"


def test_the_users_choice_is_kept():
    assert run(OMP_WAIT_POLICY="ACTIVE") == "False ACTIVE"
    assert run(OMP_WAIT_POLICY="passive") == "True passive"


def test_too_late_once_torch_is_loaded():
    assert run(before="import torch; ") == "False None"
