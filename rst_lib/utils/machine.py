"""What the machine is, as far as speed goes: the CPU's model and its vector/matrix ISA flags,
torch's CPU capability, whether oneDNN reports native bf16, and the ISA cap a user may have
set (``ONEDNN_MAX_CPU_ISA``). Used by the precision choice (its cache key) and by
``bench/matmul.py`` (the yardstick quoted beside every timing in the docs).

torch is imported inside the functions: reading the facts from /proc costs nothing and the
CLI's light commands may call :func:`cpu_model` without paying torch's import.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

# the flags that decide which kernels fp32 and bf16 get (x86: AVX2/FMA, AVX-512, its bf16
# instructions, AMX tiles; ARM: bf16 and SVE)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve")


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    for line in _cpuinfo_lines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU's flags among :data:`ISA_FLAGS` (from /proc/cpuinfo; empty where there is none)."""
    for line in _cpuinfo_lines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def onednn_isa_cap() -> str | None:
    """``ONEDNN_MAX_CPU_ISA`` (or oneDNN's older ``DNNL_MAX_CPU_ISA``) if set."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def mkldnn_bf16_native() -> bool:
    """oneDNN's own answer to "does this CPU run bf16 (natively)?" under the ISA cap in force.

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` is torch's only query for it (a private op
    name of torch's, not of this project)."""
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_facts() -> dict:
    """The CPU facts one line of a benchmark or a cache key needs."""
    import torch
    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16": mkldnn_bf16_native(),
        "onednn_max_cpu_isa": onednn_isa_cap(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def describe_cpu(facts: dict) -> str:
    """One line: ``AMD EPYC; avx2 fma avx512f avx512_bf16; torch AVX512; mkldnn bf16 yes; ...``."""
    flags = " ".join(facts["flags"]) or "no AVX2/AVX-512/AMX flags"
    cap = facts.get("onednn_max_cpu_isa")
    return (f"{facts['cpu']}; {flags}; torch {facts['torch_capability']}; "
            f"mkldnn bf16 {'yes' if facts['mkldnn_bf16'] else 'no'}; "
            f"ONEDNN_MAX_CPU_ISA={cap or 'unset'}; {facts['threads']} threads; torch {facts['torch']}")
