"""precision: auto (rst_lib.engine.auto_precision): bf16 only where the CPU runs it natively
AND a measurement of the network's step shows it faster; the choice recorded and shown.

The unit tests inject oneDNN's answer and the measurement (never real timing); the
end-to-end tests at the bottom run the real measurement in a subprocess, with and without
oneDNN capped to the ISA of CPUs without native bf16.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rst_lib import RunConfig, create_model, train
from rst_lib.config import load_params
from rst_lib.engine import auto_precision as ap
from rst_lib.engine.precision import autocast_context
from rst_lib.workbook.report import precision_item
from tiny import TINY

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SHAPE = (1, 12, 12)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache, no verdict remembered, no warning printed yet; measurements counted."""
    monkeypatch.setenv(ap.CACHE_ENV, str(tmp_path / "precision.json"))
    monkeypatch.setattr(ap, "_MEMO", {})
    monkeypatch.setattr("rst_lib.errors._WARNED", set())
    monkeypatch.setattr(ap, "_SLOW_WARNED", set())
    calls = []

    def inject(native: bool, fp32_ms: float, bf16_ms: float):
        monkeypatch.setattr(ap, "mkldnn_bf16_native", lambda: native)

        def measured(model, input_shape, device, batch):
            calls.append((tuple(input_shape), batch))
            return fp32_ms, bf16_ms
        monkeypatch.setattr(ap, "measure_step", measured)
        return calls
    return inject


def _net(tiny_model):
    return tiny_model()


def test_unsupported_bf16_resolves_to_fp32_without_measuring(fresh, tiny_model):
    calls = fresh(native=False, fp32_ms=1.0, bf16_ms=0.1)  # even a "fast" measurement is unused
    chosen, verdict = ap.resolve_precision("auto", CPU, tiny_model(), SHAPE)
    assert chosen == "fp32" and not verdict.fast and "no native bf16" in verdict.reason
    assert calls == []


def test_bf16_measured_slower_resolves_to_fp32(fresh, tiny_model):
    calls = fresh(native=True, fp32_ms=1.0, bf16_ms=10.0)  # oneDNN says yes, but emulates
    chosen, verdict = ap.resolve_precision("auto", CPU, tiny_model(), SHAPE, batch=16)
    assert chosen == "fp32" and verdict.speedup == 0.1
    assert "0.10x as fast" in verdict.reason and calls == [(SHAPE, 16)]


def test_bf16_measured_faster_resolves_to_bf16(fresh, tiny_model):
    fresh(native=True, fp32_ms=2.5, bf16_ms=1.0)
    chosen, verdict = ap.resolve_precision("auto", CPU, tiny_model(), SHAPE)
    assert chosen == "bf16" and verdict.fast and verdict.speedup == 2.5


def test_bf16_only_when_clearly_faster(fresh, tiny_model):
    fresh(native=True, fp32_ms=1.15, bf16_ms=1.0)  # faster, but under the declared 1.2x
    assert ap.resolve_precision("auto", CPU, tiny_model(), SHAPE)[0] == "fp32"
    assert ap.BF16_MIN_SPEEDUP == 1.2


def test_explicit_precisions_are_kept_and_fp32_measures_nothing(fresh, tiny_model):
    calls = fresh(native=True, fp32_ms=1.0, bf16_ms=10.0)
    assert ap.resolve_precision("fp32", CPU, tiny_model(), SHAPE) == ("fp32", None)
    assert ap.resolve_precision("fp16", CPU, tiny_model(), SHAPE) == ("fp16", None)
    assert calls == []
    with pytest.raises(ValueError, match="unresolved"):
        autocast_context("auto", CPU)


def test_explicit_bf16_on_a_slow_cpu_runs_and_warns_once_with_the_factor(fresh, tiny_model, capsys):
    fresh(native=False, fp32_ms=1.0, bf16_ms=10.46)
    cfg = RunConfig.from_dict({**TINY, "precision": "bf16", "autoattack_precision": "bf16"})
    for _ in range(3):  # a run, its control and its evaluation resolve it again
        resolved, record = ap.resolve_run_precisions(cfg, tiny_model(), SHAPE, CPU)
        assert (resolved.precision, resolved.autoattack_precision) == ("bf16", "bf16")
    resolved_aa = ap.resolve_for_model("bf16", tiny_model(), torch.zeros(1, *SHAPE), CPU, 250)
    assert resolved_aa == "bf16"  # an evaluation entry point given bf16 again: no new line
    err = [line for line in capsys.readouterr().err.splitlines() if "bf16" in line]
    assert len(err) == 1, err
    assert err[0].startswith("warning: precision=bf16, autoattack_precision=bf16 on a CPU where")
    assert "0.10x as fast as fp32" in err[0] and "10.5 vs 1.0 ms" in err[0]
    assert "auto would choose fp32" in err[0]


def test_explicit_bf16_where_it_is_fast_does_not_warn(fresh, tiny_model, capsys):
    fresh(native=True, fp32_ms=3.0, bf16_ms=1.0)
    cfg = RunConfig.from_dict({**TINY, "precision": "bf16"})
    ap.resolve_run_precisions(cfg, tiny_model(), SHAPE, CPU)
    assert "bf16" not in capsys.readouterr().err


def test_the_cache_is_read_and_keyed_by_machine_and_network(fresh, tiny_model, monkeypatch):
    calls = fresh(native=True, fp32_ms=2.0, bf16_ms=1.0)
    net = tiny_model()
    ap.resolve_precision("auto", CPU, net, SHAPE)
    assert len(calls) == 1
    key = json.loads(next(iter(json.loads(ap.cache_path().read_text()))))
    facts = ap.cpu_facts()
    assert key == {"cpu": facts["cpu"], "flags": facts["flags"], "onednn_max_cpu_isa":
                   facts["onednn_max_cpu_isa"], "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "batch": 32,
                   "network": ap.network_signature(net, SHAPE)}
    monkeypatch.setattr(ap, "_MEMO", {})  # a new process: the file answers, nothing is timed
    verdict = ap.bf16_verdict(CPU, tiny_model(seed=5, keep_ratio=0.5), SHAPE, 32)
    assert len(calls) == 1 and verdict.cached and verdict.fast  # seed, keep ratio: same key
    # what the cost depends on changes the key: a new measurement each
    monkeypatch.setattr(ap, "_MEMO", {})
    ap.bf16_verdict(CPU, tiny_model(name="conv4"), SHAPE, 32)              # another network
    ap.bf16_verdict(CPU, net, (1, 16, 16), 32)                             # another input
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")                # oneDNN capped
    ap.bf16_verdict(CPU, net, SHAPE, 32)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)                                      # other threads
    try:
        ap.bf16_verdict(CPU, net, SHAPE, 32)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 5
    assert len(json.loads(ap.cache_path().read_text())) == 5


def test_an_injected_cache_entry_decides(fresh, tiny_model):
    calls = fresh(native=True, fp32_ms=1.0, bf16_ms=1.0)
    net = tiny_model()
    ap.cache_path().write_text(json.dumps({ap.cache_key(net, SHAPE, 32): {"fp32_ms": 4.0,
                                                                          "bf16_ms": 1.0}}))
    chosen, verdict = ap.resolve_precision("auto", CPU, net, SHAPE)
    assert chosen == "bf16" and verdict.cached and verdict.speedup == 4.0 and calls == []


@pytest.mark.parametrize("fp32_ms,bf16_ms,expected", [(1.0, 10.0, "fp32"), (3.0, 1.0, "bf16")])
def test_a_run_records_its_choice(fresh, data, tmp_path, fp32_ms, bf16_ms, expected):
    """train() with the defaults (auto): the config every consumer sees is concrete, and
    metrics.json and the report's header say what was chosen and why."""
    calls = fresh(native=True, fp32_ms=fp32_ms, bf16_ms=bf16_ms)
    defaults = {k: v for k, v in TINY.items() if not k.endswith("precision")}  # tiny.py pins fp32
    cfg = RunConfig.from_dict(defaults)
    assert (cfg.precision, cfg.autoattack_precision, cfg.eval_precision) == ("auto", "auto", "fp32")
    result = train(cfg, tmp_path / "run", progress=False, data=data)
    assert len(calls) == 1 and calls[0] == ((1, 28, 28), 32)
    assert (result.config.precision, result.config.autoattack_precision) == (expected, expected)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["precision"] == expected
    rec = metrics["precision"]
    assert rec["requested"]["precision"] == "auto" and rec["chosen"]["precision"] == expected
    assert (rec["fp32_ms"], rec["bf16_ms"], rec["threshold"]) == (fp32_ms, bf16_ms, 1.2)
    assert f"training {expected}, AutoAttack search {expected} (auto: measured" in rec["summary"]
    assert precision_item(metrics) == f"precision: {rec['summary']}"


def test_shipped_files_leave_precision_to_auto():
    """Every shipped parameter file says auto or leaves it to the default, except the paper
    presets, which pin fp32 as the papers' code ran (the file says so on the line)."""
    for path in sorted((ROOT / "params").rglob("*.yaml")):
        text = path.read_text()
        params = load_params(path)
        for name in ("precision", "autoattack_precision"):
            value = params.get(name, "auto")
            if path.parent.name == "presets":
                assert value == "fp32" and "#" in next(
                    line for line in text.splitlines() if line.startswith(f"{name}:")), path
            else:
                assert value == "auto", (path, name, value)


# ---------------------------------------------------------------- end to end, real timing

PROBE = """
import json, sys, torch
from rst_lib import create_model
from rst_lib.engine import auto_precision as ap
net = create_model("conv4", 10, 1, image_size=28, width=0.5, keep_ratio=0.1)  # the quickstart's
print(json.dumps({"mkldnn_bf16": ap.mkldnn_bf16_native(), "results": {
    want: (lambda c, v: {"chosen": c, "reason": v.reason, "speedup": v.speedup})(
        *ap.resolve_precision(want, torch.device("cpu"), net, (1, 28, 28)))
    for want in ("auto", "bf16")}}))
"""


def _probe(tmp_path, isa: str | None) -> dict:
    env = {**os.environ, ap.CACHE_ENV: str(tmp_path / f"cache-{isa}.json"),
           "PYTHONPATH": str(ROOT)}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(isa or "native", json.dumps(result))  # what this machine resolved (pytest -s shows it)
    return result


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="the ISA caps below reproduce slow bf16 on a CPU with native bf16; "
                           "this CPU has none, so auto is fp32 by oneDNN's answer (tested above)")
def test_real_measurement_under_isa_caps(tmp_path):
    """On this CPU (avx512_bf16): capped to AVX2, oneDNN reports no bf16 and auto is fp32;
    capped to AVX512_CORE (Skylake's ISA: oneDNN still says bf16, but emulates it), the
    measurement finds bf16 slower and auto is fp32. Uncapped: printed (bf16 expected)."""
    avx2 = _probe(tmp_path, "AVX2")
    assert not avx2["mkldnn_bf16"] and avx2["results"]["auto"]["chosen"] == "fp32"
    # an explicit bf16 under the cap: its measured factor is shown, not asserted (torch's own
    # AVX-512 kernels are not capped by oneDNN's variable: seen 0.10x and 1.93x on this CPU)
    print("AVX2 cap, explicit bf16:", avx2["results"]["bf16"]["speedup"])
    core = _probe(tmp_path, "AVX512_CORE")
    assert core["mkldnn_bf16"], "oneDNN reports bf16 under AVX512_CORE: the flag alone misleads"
    assert core["results"]["auto"]["chosen"] == "fp32", core
    native = _probe(tmp_path, None)
    assert native["results"]["auto"]["chosen"] in ("bf16", "fp32")


def test_run_check_and_model_name_the_choice_and_why(fresh):
    """What the issue checks first: `run 00_quickstart --check -p params/quickstart.yaml` on a
    CPU without native bf16 names fp32 and why; `model` says the same."""
    from rst_lib.engine.tasks import describe_model
    from rst_lib.workbook.cli import model_text
    from rst_lib.workbook.run_check import check_notebook_run
    calls = fresh(native=False, fp32_ms=1.0, bf16_ms=10.0)
    check = check_notebook_run(ROOT / "notebooks" / "00_quickstart.ipynb",
                               ROOT / "params" / "quickstart.yaml", ["device=cpu"])
    line = next(l for l in check.lines if l.startswith("precision:"))
    assert line == ("precision: training fp32, AutoAttack search fp32 (auto: oneDNN reports no "
                    "native bf16 on this CPU (emulated bf16 is several times slower than fp32))")
    assert calls == []
    fresh(native=True, fp32_ms=3.0, bf16_ms=1.0)  # a CPU with native, faster bf16: measured
    params = load_params(ROOT / "params" / "quickstart.yaml", ["device=cpu"])
    text = model_text(describe_model(RunConfig.from_dict(params, strict=False)))
    assert text.splitlines()[-1].startswith(
        "precision on this machine: training bf16, AutoAttack search bf16 (auto: measured bf16 "
        "3.00x as fast as fp32")
