"""The machine facts (rst_lib.utils.machine) and the yardstick that quotes them (bench/matmul.py)."""
import json
import subprocess
import sys
from pathlib import Path

from rst_lib.utils import machine

ROOT = Path(__file__).resolve().parents[1]

EPYC = """processor	: 0
model name	: AMD EPYC 9R14
flags		: fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni
"""
LAPTOP = """processor	: 0
model name	: Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz
flags		: fpu sse2 avx avx2 fma
"""


def test_flags_and_model_read_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(machine, "_cpuinfo_lines", lambda: EPYC.splitlines())
    assert machine.cpu_model() == "AMD EPYC 9R14"
    assert machine.cpu_flags() == ["avx2", "fma", "avx512f", "avx512_bf16"]
    monkeypatch.setattr(machine, "_cpuinfo_lines", lambda: LAPTOP.splitlines())
    assert machine.cpu_flags() == ["avx2", "fma"]
    monkeypatch.setattr(machine, "_cpuinfo_lines", lambda: [])
    assert machine.cpu_flags() == [] and machine.cpu_model()


def test_isa_cap_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert machine.onednn_isa_cap() is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine.onednn_isa_cap() == "AVX2"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in machine.describe_cpu(machine.cpu_facts())


def test_yardstick_prints_gflops_and_isa_in_one_line():
    """bench/matmul.py as a user runs it (a small matrix: the figure itself is not asserted)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "matmul.py"), "--size", "128",
                          "--reps", "2", "--warmup", "1"], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    facts = machine.cpu_facts()
    assert "GFLOPS" in lines[0] and facts["cpu"] in lines[0]
    assert f"torch {facts['torch_capability']}" in lines[0] and "mkldnn bf16" in lines[0]
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "matmul.py"), "--size", "128",
                          "--reps", "2", "--json"], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout)
    assert m["gflops"] > 0 and m["flags"] == facts["flags"] and m["reps"] == 2
