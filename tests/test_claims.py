"""The claims of the two papers (rst_lib.analysis.claims, notebook 08) and the staged sweep
file that makes their runs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rst_lib.analysis.claims import (CLAIMS, FAILS, HOLDS, INCONCLUSIVE, RBRN_BASE, claims_table,
                                     collect_records, judge_claims, verdict)
from rst_lib.config import ConfigError
from rst_lib.workbook.sweeps import load_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_a_difference_inside_the_seed_spread_is_inconclusive():
    # means 1 point apart, seeds spread by ~4 points: no verdict either way
    assert verdict([0.31, 0.35, 0.27], [0.30, 0.26, 0.34])["verdict"] == INCONCLUSIVE
    assert verdict([0.30, 0.26, 0.34], [0.31, 0.35, 0.27])["verdict"] == INCONCLUSIVE
    # one seed: no spread to judge by, however large the difference
    assert verdict([0.9], [0.1])["verdict"] == INCONCLUSIVE


def test_a_clear_difference_holds_or_does_not_hold_by_its_sign():
    a, b = [0.40, 0.41, 0.39], [0.30, 0.31, 0.29]
    holds = verdict(a, b)
    assert holds["verdict"] == HOLDS and abs(holds["difference"] - 0.10) < 1e-9
    lo, hi = holds["difference_ci95"]
    assert 0 < lo < 0.10 < hi
    assert verdict(b, a)["verdict"] == FAILS
    assert verdict(b, a, predicts="a < b")["verdict"] == HOLDS


def test_difference_beyond_the_std_but_not_significant_is_inconclusive():
    # 2 seeds each: the difference exceeds both stds, but its 95 % interval (t, 1-2 dof) holds 0
    r = verdict([0.40, 0.30], [0.20, 0.36])
    assert r["difference"] > max(r["a"]["std"], r["b"]["std"]) or r["verdict"] == INCONCLUSIVE
    assert r["verdict"] == INCONCLUSIVE and r["difference_ci95"][0] < 0


def _fake_run(root: Path, stage: str, cell: str, notebook: str, seed: int, files: dict,
              params: dict | None = None, status: str = "finished") -> Path:
    d = root / notebook / "study" / stage / cell
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"notebook": f"/x/{notebook}.ipynb", "status": status,
                                            "params": {"seed": seed, **(params or {})},
                                            "extra": {"stage": stage}}))
    for name, content in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(json.dumps(content))
    return d


def _final(robust, clean=0.5):
    return {"final": {"clean_acc": clean, "pgd_acc": robust + 0.01, "robust_acc": robust}}


def test_records_from_run_folders_feed_the_claims(tmp_path):
    dirs = []
    for seed in (0, 1, 2):
        # tickets clearly above the dense nets; RBRN's last BN inside the seed spread
        dirs.append(_fake_run(tmp_path, "search", f"seed={seed}", "01_search", seed,
                              {"metrics.json": {**_final(0.30 + 0.01 * seed), "config": {"seed": seed}}}))
        dirs.append(_fake_run(tmp_path, "dense", f"seed={seed}", "01_search", seed,
                              {"metrics.json": {**_final(0.20 + 0.01 * seed), "config": {"seed": seed, "task": "dense"}}}))
        for cell, change in (("base", {}), ("nobn", {"end_with_bn": False})):
            robust = [0.25, 0.31, 0.28][seed] if cell == "base" else [0.29, 0.26, 0.30][seed]
            dirs.append(_fake_run(tmp_path, "rbrn", f"{cell}-seed={seed}", "01_search", seed,
                                  {"metrics.json": {**_final(robust), "config": {**RBRN_BASE, **change,
                                                                                "seed": seed}}}))
        dirs.append(_fake_run(tmp_path, "finetune", f"seed={seed}", "02_finetune", seed, {
            "ticket/metrics.json": {**_final(0.3), "config": {"seed": seed}},
            "finetune/metrics.json": _final(0.40 + 0.01 * seed),
            "finetune_reinit/metrics.json": _final(0.30 + 0.01 * seed)}))
    dirs.append(_fake_run(tmp_path, "search", "seed=3", "01_search", 3, {}, status="running"))
    records = collect_records(dirs)
    assert len(records) == 15  # 5 runs x 3 seeds; the unfinished run is left out
    results = {r["claim"].key: r for r in judge_claims(records)}
    assert results["rst-existence-dense"]["verdict"] == HOLDS
    assert results["rst-existence-dense"]["a_values"] == {0: 0.30, 1: 0.31, 2: 0.32}
    assert results["rbrn-last-bn"]["verdict"] == INCONCLUSIVE
    assert results["rst-property-inherit"]["verdict"] == HOLDS
    assert results["rst-application-transfer"]["verdict"] == INCONCLUSIVE  # no transfer runs
    assert "no run" in claims_table([results["rst-application-transfer"]])[0]["a"]
    assert len(results) == len(CLAIMS)


def test_staged_sweep_files(tmp_path):
    sweep = load_sweep(ROOT / "params/sweeps/claims-smoke.yaml", output_root=tmp_path)
    stages = {c.stage for c in sweep.cells}
    assert stages == {"search", "dense", "natural", "finetune", "transfer", "r2s", "rbrn"}
    assert all(c.run_dir.parent.name == c.stage for c in sweep.cells)
    assert {c.notebook.stem for c in sweep.cells if c.stage == "finetune"} == {"02_finetune"}
    assert len([c for c in sweep.cells if c.stage == "rbrn"]) == 8  # 4 settings x 2 seeds
    for name in ("claims-cifar10-cpu.yaml", "claims-cifar10-gpu.yaml"):  # every cell checks out
        full = load_sweep(ROOT / "params/sweeps" / name, output_root=tmp_path, validate=False)
        assert {c.stage for c in full.cells} == stages
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {stage: a, notebook: 01_search}\n  - {stage: a, notebook: 01_search}\n")
    with pytest.raises(ConfigError, match="own 'stage' name"):
        load_sweep(bad)
    bad.write_text("notebook: 01_search\nstages:\n  - {stage: a, notebook: 01_search}\n")
    with pytest.raises(ConfigError, match="belong to the stages"):
        load_sweep(bad)


@pytest.mark.slow  # ~22 tiny notebook runs and notebook 08: minutes on 2 cores
def test_claims_smoke_sweep_and_notebook_08_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two cells at once on a shared machine
    out = tmp_path / "outputs"
    cli = [sys.executable, "-m", "rst_lib.workbook.cli"]
    subprocess.run(cli + ["sweep", "params/sweeps/claims-smoke.yaml", "-o", str(out), "--jobs", "2",
                          "--no-progress"], cwd=ROOT, check=True)
    run = tmp_path / "claims-run"
    subprocess.run(cli + ["run", "notebooks/08_paper_claims.ipynb", "-o", str(out), "-p",
                          "sweep=params/sweeps/claims-smoke.yaml", "-p", f"runs_root={out}",
                          "--run-dir", str(run), "--no-progress"], cwd=ROOT, check=True)
    claims = json.loads((run / "claims.json").read_text())
    assert claims["finished"] == claims["cells"] == 20  # 6 stages x 2 seeds + rbrn 4 x 2
    assert [c["key"] for c in claims["claims"]] == [c.key for c in CLAIMS]
    for c in claims["claims"]:  # every claim was measured on 2 seeds per arm and judged
        assert len(c["a_values"]) == len(c["b_values"]) == 2, c["key"]
        assert c["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)
