"""Where torch work runs: ``auto`` picks the GPU when there is one, so CPU-only machines run everything."""
from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu`` / ``cuda[:N]`` as given. Asking for CUDA on a machine
    without it is a RuntimeError that says so (never a silent fall back to the CPU)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: no CUDA device on this machine (use cpu or auto)")
    return torch.device(device)
