"""The methods comparison as a study (docs/methods.md): its claims, declared in
rst_lib/analysis/method_claims.py, pick exactly the cells of the shipped sweeps, 08 selects
them by the sweep's name, and the smoke comparison runs end to end with 08 rendering its
verdicts from the committed records alone."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rst_lib.analysis.claims import CLAIMS
from rst_lib.analysis.method_claims import CLAIM_FAMILIES, UNIFORM, claims_for_sweep
from rst_lib.analysis.verdicts import FAILS, HOLDS, INCONCLUSIVE, NON_INFERIORITY, SUPERIORITY
from rst_lib.config import RunConfig, load_params
from rst_lib.workbook.sweep_files import load_sweep

ROOT = Path(__file__).resolve().parents[1]
METHOD_SWEEPS = ["methods-cifar10-cpu", "methods-cifar10-gpu", "methods-smoke"]


def resolved(cell) -> dict:
    """A cell's parameters as its run resolves them: schema defaults, its stage's parameter
    file, the sweep's and the cell's settings."""
    return {**RunConfig().to_dict(), **load_params(ROOT / cell.params_file), **cell.params}


@pytest.mark.parametrize("name", METHOD_SWEEPS)
def test_each_arm_reads_exactly_one_cell_per_seed_of_the_shipped_sweep(name, tmp_path):
    sweep_file = ROOT / "params" / "sweeps" / f"{name}.yaml"
    family = claims_for_sweep(sweep_file)
    assert family is CLAIM_FAMILIES[name]
    sweep = load_sweep(sweep_file, output_root=tmp_path, validate=False)
    # the arms select the same cells from the runs' resolved parameters and from the sweep's
    # own settings (what 08 reads as the seeds the study declares)
    assert [resolved(c)[k] for c in sweep.cells for k in UNIFORM] == \
        [c.params[k] for c in sweep.cells for k in UNIFORM]
    records = [{"stage": c.stage, "seed": c.params["seed"], "params": resolved(c),
                "metrics": {"robust": 0.0}} for c in sweep.cells]
    seeds = {r["seed"] for r in records}
    used = set()
    for claim in family:
        for arm in (claim.a, claim.b):
            picked = [i for i, r in enumerate(records) if arm.matches(r)]
            assert sorted(records[i]["seed"] for i in picked) == sorted(seeds), (claim.key, arm.label)
            used |= set(picked)
    # every cell is read by some arm, except the GPU file's global-with-floor cell (shown only)
    unused = [records[i]["params"] for i in set(range(len(records))) - used]
    assert all(p["keep_min_fraction"] > 0 for p in unused), unused
    # the global arm is trained as biprop trains it: its ramp from 0.5 kept
    glob = [r["params"] for r in records if r["params"]["keep_scope"] == "global"]
    assert glob and all(p["keep_ratio_schedule"] == "biprop" and p["keep_ratio_steps"] >= 1 for p in glob)


def test_08_picks_the_family_by_the_sweeps_name():
    assert claims_for_sweep(ROOT / "params/sweeps/claims-smoke.yaml") is CLAIMS
    family = claims_for_sweep(ROOT / "params/sweeps/methods-cifar10-cpu.yaml")
    kinds = {c.key: (c.kind, c.margin, c.counted) for c in family}
    assert kinds == {"methods-global": (SUPERIORITY, 0.0, True), "methods-rbrn": (SUPERIORITY, 0.0, True),
                     "methods-erk": (SUPERIORITY, 0.0, True), "methods-iterand": (NON_INFERIORITY, 1.0, True)}
    shipped = load_params(ROOT / "params/08_paper_claims/methods-cpu.yaml")
    assert claims_for_sweep(ROOT / shipped["sweep"]) is family
    assert "study: studies/methods-cifar10-cpu" in (ROOT / "params/sweeps/methods-cifar10-cpu.yaml").read_text()


def test_methods_smoke_study_renders_its_verdicts_from_the_records(tmp_path, monkeypatch):
    """The shipped smoke comparison run as a committed study (10 tiny searches), then 08 from
    the run folders and again from the records alone (a fresh clone): the methods claims,
    each judged on the 2 paired seeds, the same verdicts both times."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, study = tmp_path / "outputs", tmp_path / "studies" / "methods-smoke"
    sweep = tmp_path / "methods-smoke.yaml"  # the shipped file, its records kept under tmp_path
    sweep.write_text((ROOT / "params/sweeps/methods-smoke.yaml").read_text().replace(
        "params/", f"{ROOT}/params/") + f"study: {study}\n")
    cli = [sys.executable, "-m", "rst_lib.workbook.cli"]
    subprocess.run(cli + ["sweep", str(sweep), "-o", str(out), "--jobs", "2", "--no-progress"],
                   cwd=ROOT, check=True)
    cells = load_sweep(sweep, output_root=out, validate=False).cells
    assert len(cells) == 10 and all(c.committed for c in cells)
    ramp = json.loads(next(c.record_dir for c in cells if c.params.get("keep_scope") == "global")
                      .joinpath("metrics.json").read_text())["history"]
    assert ramp[0]["keep_ratio"] > 0.45 and abs(ramp[1]["keep_ratio"] - 0.2) < 0.01
    assert all("layer_keep_ratio" in row for row in ramp)

    def claims_from(tag):
        run = tmp_path / f"claims-{tag}"
        subprocess.run(cli + ["run", "notebooks/08_paper_claims.ipynb", "-o", str(out), "-p",
                              f"sweep={sweep}", "-p", f"runs_root={out}", "--run-dir", str(run),
                              "--no-progress"], cwd=ROOT, check=True)
        return json.loads((run / "claims.json").read_text())

    first = claims_from("outputs")
    shutil.rmtree(out / "01_search")  # a fresh clone: no run folders, only the records
    fresh = claims_from("records")
    assert [c["key"] for c in fresh["claims"]] == [c.key for c in CLAIM_FAMILIES["methods-smoke"]]
    for a, b in zip(first["claims"], fresh["claims"]):
        assert (a["verdict"], a["a_values"], a["b_values"]) == (b["verdict"], b["a_values"], b["b_values"])
    for c in fresh["claims"]:
        assert c["pairs"] == 2 and c["verdict"] in (HOLDS, FAILS, INCONCLUSIVE), c
        assert all(str(study) in r for r in c["runs"])
