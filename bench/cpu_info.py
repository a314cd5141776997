"""Which machine a benchmark ran on: CPU model, cores, the instruction sets that decide its speed, torch.

The same code runs at very different speeds on CPUs with and without AVX512, bfloat16 (AVX512-BF16, AMX)
and int8 dot-product (VNNI) instructions, so every bench/ script prints this header first and stores
`machine_info` in its JSON: a reader can then tell which published figures apply to their CPU.

    from cpu_info import machine_info, print_machine   # bench/cpu_info.py, beside the scripts
    print_machine(precision="fp32")                    # at the start of main()
    res["machine"] = machine_info(precision="fp32")    # in the results
"""
from __future__ import annotations

import os
import platform

# (label, /proc/cpuinfo flags; any one present counts), in the order printed.
INSTRUCTION_SETS = (
    ("AVX2", ("avx2",)),
    ("FMA", ("fma",)),
    ("AVX512F", ("avx512f",)),
    ("AVX512-BF16", ("avx512_bf16",)),
    ("AMX", ("amx_bf16", "amx_int8", "amx_tile")),
    ("AVX512-VNNI", ("avx512_vnni",)),
    ("AVX-VNNI", ("avx_vnni",)),
)


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", set()) where there is no such file."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def usable_cores() -> int:
    """Cores this process may run on (its affinity), else all the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info(precision: str | None = None) -> dict:
    """The machine as a dict for a benchmark's JSON: cpu, cores, usable cores, the instruction sets present
    (`INSTRUCTION_SETS` labels), torch's version and CPU capability, and ``precision`` when given."""
    model, flags = _cpuinfo()
    info = {
        "cpu": model or platform.processor() or platform.machine() or "unknown",
        "cores": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "instruction_sets": [label for label, names in INSTRUCTION_SETS if any(n in flags for n in names)],
        "cpuinfo_read": bool(flags),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        get_capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
        info["torch_cpu_capability"] = get_capability() if get_capability else "unknown"
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    if precision is not None:
        info["precision"] = precision
    return info


def machine_header(precision: str | None = None) -> str:
    """One line for a benchmark's start, e.g. ``machine: AMD EPYC, 2 cores (2 usable); AVX2, FMA; without
    AVX512F, AVX512-BF16, AMX, AVX512-VNNI, AVX-VNNI; torch 2.6.0 (CPU kernels: AVX2, 2 threads); precision fp32``."""
    info = machine_info(precision)
    present = info["instruction_sets"]
    absent = [label for label, _ in INSTRUCTION_SETS if label not in present]
    if info["cpuinfo_read"]:
        isa = f"{', '.join(present) or 'none of ' + ', '.join(absent)}"
        if present and absent:
            isa += f"; without {', '.join(absent)}"
    else:
        isa = "instruction sets unknown (no /proc/cpuinfo flags)"
    line = f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable); {isa}"
    if info.get("torch"):
        line += (f"; torch {info['torch']} (CPU kernels: {info['torch_cpu_capability']}, "
                 f"{info['torch_threads']} threads)")
    if precision is not None:
        line += f"; precision {precision}"
    return line


def print_machine(precision: str | None = None) -> dict:
    """Print `machine_header` and return `machine_info` (to store in the results)."""
    print(machine_header(precision), flush=True)
    return machine_info(precision)


if __name__ == "__main__":
    print_machine()
