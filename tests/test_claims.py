"""The claims of the two papers (rst_lib.analysis.claims, notebook 08): the verdict rule tested
on thousands of synthetic studies with a known truth, the records of run folders, the claims'
arms and the staged sweep files that make their runs."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rst_lib.analysis.claims import CLAIMS, RBRN_BASE, Arm, Claim, claims_table, collect_records, judge_claims
from rst_lib.analysis.verdicts import (ALPHA, EQUIVALENCE, FAILS, HOLDS, INCONCLUSIVE, NON_INFERIORITY,
                                       SUPERIORITY, detectable_effect, evaluation_floor, holm,
                                       paired_test, verdict)
from rst_lib.config import ConfigError
from rst_lib.workbook.sweeps import load_sweep

ROOT = Path(__file__).resolve().parents[1]
STUDIES = 20_000   # synthetic studies per scenario: the Monte-Carlo SE of a 2.5 % rate is 0.11 %


def tolerance(rate):  # four Monte-Carlo standard errors of a rate over STUDIES studies
    return 4 * math.sqrt(rate * (1 - rate) / STUDIES)


def simulate(effect, n, *, paired=True, images=1000, base=0.35, seed_sd=0.05, arm_sd=0.01,
             studies=STUDIES, rng=None):
    """Per-seed accuracies of two arms in ``studies`` synthetic studies of ``n`` seeds: a seed's
    random network moves both arms alike (paired) or each arm on its own (unpaired), each run
    adds its own training noise, and each accuracy is counted on ``images`` test images.
    Returns the per-seed differences a - b and the true SD of one difference."""
    rng = rng or np.random.default_rng(0)
    net_a = rng.normal(0, seed_sd, (studies, n))
    net_b = net_a if paired else rng.normal(0, seed_sd, (studies, n))
    pa = np.clip(base + effect + net_a + rng.normal(0, arm_sd, (studies, n)), 0, 1)
    pb = np.clip(base + net_b + rng.normal(0, arm_sd, (studies, n)), 0, 1)
    a, b = rng.binomial(images, pa) / images, rng.binomial(images, pb) / images
    return a - b


def run(kind, margin, d, images=1000):
    return paired_test(d, evaluation_floor(d, images), kind, margin)


# --------------------------------------------------------------- null: "holds" at most at α

@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("kind,margin,truth", [
    (SUPERIORITY, 0.0, 0.0),        # no effect
    (SUPERIORITY, 0.02, 0.02),      # "notably": the effect is exactly the margin
    (NON_INFERIORITY, 0.02, -0.02),  # the deficit is exactly the margin
    (EQUIVALENCE, 0.02, 0.02),      # the difference is exactly the margin (either side)
    (EQUIVALENCE, 0.02, -0.02),
])
def test_under_the_null_holds_at_most_at_the_nominal_rate(kind, margin, truth, n, paired):
    d = simulate(truth, n, paired=paired, rng=np.random.default_rng(n))
    rate = run(kind, margin, d)["holds"].mean()
    assert rate <= ALPHA[kind] + tolerance(ALPHA[kind]), (kind, n, paired, rate)


@pytest.mark.parametrize("kind,margin,truth", [
    (SUPERIORITY, 0.0, 0.0), (NON_INFERIORITY, 0.02, -0.02), (EQUIVALENCE, 0.02, 0.0)])
def test_does_not_hold_is_as_rare_when_the_claim_is_true(kind, margin, truth):
    # the claim true (at its boundary): "does not hold" at most at the nominal rate too
    d = simulate(truth if kind != EQUIVALENCE else 0.0, 5, rng=np.random.default_rng(7))
    rate = run(kind, margin, d)["fails"].mean()
    assert rate <= ALPHA[kind] + tolerance(ALPHA[kind])


def test_a_null_rule_that_ignores_the_t_quantile_is_caught():
    # the same simulation catches a broken rule: a normal (z) interval at 3 seeds is too narrow
    d = simulate(0.0, 3, rng=np.random.default_rng(1))
    mean, se = d.mean(1), d.std(1, ddof=1) / math.sqrt(3)
    assert (mean - 1.96 * se > 0).mean() > ALPHA[SUPERIORITY] + tolerance(ALPHA[SUPERIORITY])


# --------------------------------------------------------------- power: the stated effect is found

@pytest.mark.parametrize("n", [3, 5, 10])
def test_superiority_finds_an_effect_at_the_power_the_t_distribution_predicts(n):
    rng = np.random.default_rng(10 + n)
    sd = simulate(0.0, 2, studies=200_000, rng=rng).std()  # the true SD of one difference
    se = sd / math.sqrt(n)
    for effect in (0.01, 0.02, 0.04):
        d = simulate(effect, n, rng=rng)
        power = run(SUPERIORITY, 0.0, d)["holds"].mean()
        expected = stats.nct.sf(stats.t.ppf(0.975, n - 1), n - 1, effect / se)
        assert abs(power - expected) < 0.02 + tolerance(expected), (n, effect, power, expected)


@pytest.mark.parametrize("kind,margin", [(SUPERIORITY, 0.0), (SUPERIORITY, 0.01),
                                         (NON_INFERIORITY, 0.02), (EQUIVALENCE, None)])
def test_the_reported_detectable_effect_is_found_at_about_80_percent(kind, margin):
    n, rng = 5, np.random.default_rng(3)
    sd = simulate(0.0, 2, studies=200_000, rng=rng).std()
    se = sd / math.sqrt(n)
    size = float(detectable_effect(se, n - 1, kind, margin or 0.0))
    if kind == SUPERIORITY:      # the true difference the rule finds at 80 %
        d, margin = simulate(size, n, rng=rng), margin
    elif kind == NON_INFERIORITY:  # arms equal: the margin it establishes at 80 %
        d, margin = simulate(0.0, n, rng=rng), size
    else:                        # arms equal: the equivalence margin it establishes at 80 %
        d, margin = simulate(0.0, n, rng=rng), size
    power = run(kind, margin, d)["holds"].mean()
    assert 0.74 <= power <= 0.90, (kind, size, power)


# --------------------------------------------------------------- pairing, zero variance, one seed

def test_pairing_by_seed_finds_a_consistent_gain_that_an_unpaired_test_misses():
    # the case: +2 points on each of 5 seeds whose networks differ by 5-10 points
    a = {s: v for s, v in enumerate([0.30, 0.35, 0.40, 0.45, 0.50])}
    b = {s: a[s] - 0.02 + e for s, e in enumerate([0.002, -0.003, 0.001, 0.0, -0.001])}
    r = verdict(a, b, SUPERIORITY, 0.0, examples=1000)
    assert r["verdict"] == HOLDS and r["n"] == 5
    welch = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert welch.pvalue > 0.05  # what the old unpaired rule saw: nothing
    # pairing is by seed, not by position
    shuffled = dict(reversed(list(b.items())))
    assert verdict(a, shuffled, SUPERIORITY, 0.0, examples=1000)["verdict"] == HOLDS


def test_zero_variance_never_makes_a_zero_width_interval():
    # the case: identical differences on two seeds, 500 test images each
    r = verdict([0.30, 0.30], [0.29, 0.29], SUPERIORITY, 0.0, examples=500)
    assert r["verdict"] == INCONCLUSIVE
    lo, hi = r["interval"]
    assert hi - lo > 0.05   # the evaluation floor: at least |d|·m images disagree
    # identical differences with no floor (not accuracies): no interval, no verdict
    r = verdict([0.30, 0.30, 0.30], [0.29, 0.29, 0.29])
    assert r["verdict"] == INCONCLUSIVE and r["interval"] is None
    for kind in (SUPERIORITY, NON_INFERIORITY, EQUIVALENCE):  # equal arms, exactly
        assert verdict([0.3, 0.3, 0.3], [0.3, 0.3, 0.3], kind, 0.02, examples=500)["verdict"] == INCONCLUSIVE


def test_zero_variance_studies_keep_the_nominal_rate():
    # 20 test images and accuracies near 0: most differences are exactly 0 or equal
    for kind, margin, truth, base in ((SUPERIORITY, 0.0, 0.0, 0.01), (NON_INFERIORITY, 0.02, -0.02, 0.03)):
        d = simulate(truth, 2, images=20, base=base, seed_sd=0.0, arm_sd=0.0, rng=np.random.default_rng(5))
        assert (np.ptp(d, axis=1) == 0).mean() > 0.3  # many studies have zero variance
        rate = paired_test(d, evaluation_floor(d, 20), kind, margin)["holds"].mean()
        assert rate <= ALPHA[kind] + tolerance(ALPHA[kind]), (kind, rate)


def test_one_seed_is_always_inconclusive():
    d = simulate(0.2, 1)
    for kind in (SUPERIORITY, NON_INFERIORITY, EQUIVALENCE):
        t = run(kind, 0.02, d)
        assert not t["holds"].any() and not t["fails"].any() and np.isnan(t["detectable"]).all()
    r = verdict({0: 0.9}, {0: 0.1}, examples=1000)
    assert r["verdict"] == INCONCLUSIVE and r["interval"] is None
    # seeds in one arm only are not paired
    r = verdict({0: 0.9, 1: 0.8}, {1: 0.1, 2: 0.1}, examples=1000)
    assert r["n"] == 1 and r["unpaired"] == [0, 2] and r["verdict"] == INCONCLUSIVE


def test_each_kind_says_holds_does_not_hold_or_inconclusive_with_what_it_could_detect():
    up = [0.40, 0.45, 0.50, 0.42, 0.47]
    same = [v + e for v, e in zip(up, [0.003, -0.002, 0.001, -0.001, 0.0])]
    down = [v - 0.10 for v in up]
    assert verdict(up, down, SUPERIORITY, 0.0, 1000)["verdict"] == HOLDS
    assert verdict(down, up, SUPERIORITY, 0.0, 1000)["verdict"] == FAILS
    assert verdict(same, up, SUPERIORITY, 0.05, 1000)["verdict"] == FAILS  # not "notably" better
    assert verdict(same, up, NON_INFERIORITY, 0.02, 1000)["verdict"] == HOLDS
    assert verdict(down, up, NON_INFERIORITY, 0.02, 1000)["verdict"] == FAILS
    assert verdict(same, up, EQUIVALENCE, 0.02, 1000)["verdict"] == HOLDS
    assert verdict(down, up, EQUIVALENCE, 0.02, 1000)["verdict"] == FAILS
    noisy = verdict([0.40, 0.30, 0.45], [0.35, 0.38, 0.40], SUPERIORITY, 0.0, 1000)
    assert noisy["verdict"] == INCONCLUSIVE and "detectable at 80% power" in noisy["why"]
    assert noisy["detectable"] > abs(noisy["difference"])
    assert verdict(up, down, EQUIVALENCE, 0.02, 1000)["level"] == pytest.approx(0.90)


# --------------------------------------------------------------- multiplicity

def test_holm_keeps_the_family_wise_error_over_the_counted_claims():
    rng = np.random.default_rng(11)
    claims, studies = 8, 5000
    d = simulate(0.0, 5, studies=studies * claims, rng=rng).reshape(studies, claims, 5)
    p = paired_test(d, evaluation_floor(d, 1000), SUPERIORITY, 0.0)["p"]
    raw_any = (p < ALPHA[SUPERIORITY]).any(1).mean()
    holm_any = np.mean([min(holm(list(row))) < ALPHA[SUPERIORITY] for row in p])
    assert raw_any > 0.12            # without a correction: ~18 % of studies claim something
    assert holm_any <= ALPHA[SUPERIORITY] + 4 * math.sqrt(0.025 * 0.975 / studies)
    assert holm([0.01, 0.04, math.nan, 0.03]) == pytest.approx([0.03, 0.06, math.nan, 0.06], nan_ok=True)


# --------------------------------------------------------------- records and claims

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


def _final(robust, clean=0.5, examples=1000):
    return {"final": {"clean_acc": clean, "pgd_acc": robust + 0.01, "robust_acc": robust,
                      "examples": examples, "robust_examples": examples}}


def test_records_from_run_folders_feed_the_claims(tmp_path):
    dirs = []
    for seed in range(5):
        net = 0.03 * seed  # each seed's random network moves every arm alike
        dirs.append(_fake_run(tmp_path, "search", f"keep_ratio=0.5-seed={seed}", "01_search", seed,
                              {"metrics.json": {**_final(0.30 + net), "config": {"seed": seed, "keep_ratio": 0.5}}}))
        dirs.append(_fake_run(tmp_path, "partner", f"keep_ratio=0.3-seed={seed}", "01_search", seed,
                              {"metrics.json": {**_final(0.10), "config": {"seed": seed, "keep_ratio": 0.3}}}))
        dirs.append(_fake_run(tmp_path, "dense", f"seed={seed}", "01_search", seed,
                              {"metrics.json": {**_final(0.20 + net + 0.002 * (seed % 2)),
                                                "config": {"seed": seed, "task": "dense"}}}))
        for cell, change in (("base", {}), ("nobn", {"end_with_bn": False}), ("p1", {"adaptive_p": 1.0})):
            robust = [0.25, 0.31, 0.28, 0.27, 0.30][seed] if cell == "base" else [0.29, 0.26, 0.30, 0.28, 0.27][seed]
            stopped = {"stopped": {"reason": "collapse"}} if cell == "nobn" and seed == 0 else {}
            dirs.append(_fake_run(tmp_path, "rbrn", f"{cell}-seed={seed}", "01_search", seed,
                                  {"metrics.json": {**_final(robust), **stopped,
                                                    "config": {**RBRN_BASE, **change, "seed": seed}}}))
        dirs.append(_fake_run(tmp_path, "finetune", f"seed={seed}", "02_finetune", seed, {
            "summary.json": {"final": [{"model": "ticket (no training)", **_final(0.30 + net)["final"]}]},
            "finetune/metrics.json": _final(0.40 + net + 0.001 * seed),
            "finetune_reinit/metrics.json": _final(0.30 + net)}))
        dirs.append(_fake_run(tmp_path, "r2s", f"seed={seed}", "04_r2s", seed, {"r2s.json": {
            "n": 500, "clean_acc": 0.5, "member_clean_acc": [0.52, 0.48], "member_whitebox_acc": [0.30, 0.35],
            "fixed_member_mean_acc": 0.40, "switching_acc": 0.33, "adaptive_eot_acc": 0.31 + 0.001 * seed}}))
    dirs.append(_fake_run(tmp_path, "search", "seed=9", "01_search", 9, {}, status="running"))
    records = collect_records(dirs)
    assert len(records) == 40  # 8 runs x 5 seeds; the unfinished run is left out
    results = {r["claim"].key: r for r in judge_claims(records)}
    dense = results["rst-existence-dense"]
    assert dense["verdict"] == HOLDS and dense["n"] == 5
    assert dense["a_values"] == pytest.approx({s: 0.30 + 0.03 * s for s in range(5)})
    assert len(dense["runs"]) == 10
    # runs lists only the runs the arms kept: the p = 1 cells share the stage, not the arms
    last_bn = results["rbrn-last-bn"]["runs"]
    assert len(last_bn) == 10 and not any("p1-" in r for r in last_bn)
    assert results["rbrn-last-bn"]["verdict"] == INCONCLUSIVE
    assert results["rbrn-last-bn"]["beside"]["b"][0] == 1.0  # the collapsed run is counted
    assert results["rst-property-inherit"]["verdict"] == HOLDS
    assert results["rst-property-reinit"]["a_values"][0] == pytest.approx(0.30)  # the reused ticket
    r2s = results["rst-application-r2s"]  # the strongest adaptive attack against the BEST member
    assert r2s["a_values"][0] == pytest.approx(0.31) and r2s["b_values"][0] == pytest.approx(0.35)
    assert r2s["verdict"] == FAILS
    assert r2s["beside"]["difference"] == pytest.approx(0.50 - 0.48)  # clean cost vs the best member
    assert results["rst-application-transfer"]["verdict"] == INCONCLUSIVE  # no transfer runs
    assert "no run" in claims_table([results["rst-application-transfer"]])[0]["a"]
    assert len(results) == len(CLAIMS)
    assert all(r["p_holm"] is None for r in results.values() if not r["claim"].counted)


def test_holm_can_turn_a_lone_holds_into_inconclusive(tmp_path):
    # one marginal claim among several counted ones: significant alone, not after Holm
    a = {s: 0.30 + 0.05 * s for s in range(5)}
    b = {s: a[s] - d for s, d in enumerate([0.01, 0.03, 0.005, 0.025, 0.02])}
    alone = verdict(a, b, SUPERIORITY, 0.0, 1000)
    assert alone["verdict"] == HOLDS and alone["p"] > ALPHA[SUPERIORITY] / 3
    records = [{"run_dir": f"{arm}{s}", "stage": arm, "seed": s, "params": {}, "examples": {"x": 1000},
                "metrics": {"x": v}} for arm, vals in (("a", a), ("b", b)) for s, v in vals.items()]
    claim = Claim("c", "P", "t", Arm("a", "a", "x"), Arm("b", "b", "x"))
    nulls = [Claim(f"n{i}", "P", "t", Arm("b", "b", "x"), Arm("a", "a", "x")) for i in range(3)]
    out = judge_claims(records, [claim, *nulls])
    assert out[0]["verdict"] == INCONCLUSIVE and "Holm" in out[0]["why"]
    shown = [Claim(f"s{i}", "P", "t", Arm("b", "b", "x"), Arm("a", "a", "x"), counted=False) for i in range(3)]
    assert judge_claims(records, [claim, *shown])[0]["verdict"] == HOLDS  # controls are not counted


def test_every_claim_declares_its_kind_and_margin_and_the_controls_are_not_counted():
    keys = [c.key for c in CLAIMS]
    assert len(set(keys)) == len(keys)
    shown = {c.key for c in CLAIMS if not c.counted}
    assert {"check-natural", "check-random-mask", "check-r2s-fixed"} <= shown
    counted = [c for c in CLAIMS if c.counted]
    assert len(counted) >= 8 and {c.kind for c in counted} == {SUPERIORITY, NON_INFERIORITY, EQUIVALENCE}
    assert all(c.margin > 0 for c in counted if c.kind != SUPERIORITY)
    with pytest.raises(ValueError, match="kind"):
        Claim("x", "P", "t", Arm("a", "a", "x"), Arm("b", "b", "x"), kind="better")


# --------------------------------------------------------------- the sweep files that make the runs

STAGES = {"search", "partner", "dense-lr", "dense", "natural", "random-mask", "finetune", "transfer",
          "transfer-control", "r2s", "rtt-dense", "rtt", "rbrn"}
# the transfer control's own network (seed 100 + s: no ticket shared with another pair)
CONTROL_STAGES = {"claims-smoke.yaml": {"control-network"}, "claims-cifar10-cpu.yaml": {"control-network"},
                  "claims-cifar10-gpu.yaml": set()}


def test_every_claim_reads_stages_the_shipped_sweeps_make(tmp_path):
    for name in ("claims-smoke.yaml", "claims-cifar10-cpu.yaml", "claims-cifar10-gpu.yaml"):
        sweep = load_sweep(ROOT / "params/sweeps" / name, output_root=tmp_path, validate=False)
        stages = {c.stage for c in sweep.cells}
        assert stages == STAGES | CONTROL_STAGES[name], name
        for claim in CLAIMS:  # each arm's stage exists and some cell of it matches its `where`
            for arm in (claim.a, claim.b):
                cells = [c for c in sweep.cells if c.stage == arm.stage]
                assert any(all(c.params.get(k) == v for k, v in arm.where.items()) for c in cells), \
                    (name, claim.key, arm.label)


def test_tickets_are_searched_once_and_read_by_the_later_stages(tmp_path):
    sweep = load_sweep(ROOT / "params/sweeps/claims-smoke.yaml", output_root=tmp_path)
    by = {c.label: c for c in sweep.cells}
    search = [c for c in sweep.cells if c.stage == "search"]
    assert len(search) == 2 and len([c for c in sweep.cells if c.stage == "partner"]) == 2  # once each
    fin = by["finetune/seed=1"]
    assert fin.depends_on == ["search/seed=1"]
    assert fin.params["ticket"] == str(by["search/seed=1"].run_dir / "ticket.pt")
    assert fin.params["lr"] == 0.1 and fin.params["tasks"] == ["finetune", "finetune_reinit"]
    same, control = by["transfer/seed=0"], by["transfer-control/seed=0"]
    assert same.params["tickets"] == by["r2s/seed=0"].params["tickets"]
    assert control.params["tickets"][0] == same.params["tickets"][0]
    assert control.params["same_network"] is False and "same_network" not in same.params
    assert control.params["tickets"][1] == str(by["control-network/seed=100"].run_dir / "ticket.pt")
    # no two transfer pairs (either stage, any seed) share a ticket but a seed's own partner
    for a in (c for c in sweep.cells if c.stage in ("transfer", "transfer-control")):
        for b in (c for c in sweep.cells if c.stage in ("transfer", "transfer-control")):
            if a.params["seed"] != b.params["seed"]:
                assert not set(a.params["tickets"]) & set(b.params["tickets"]), (a.label, b.label)
    assert by["rtt/seed=0"].params["pretrained"].endswith("rtt-dense/seed=0/ticket.pt")
    dense = by["dense/seed=0"]
    assert set(dense.depends_on) == {c.label for c in sweep.cells if c.stage == "dense-lr"}
    assert dense.choices["lr"][1] == "robust"
    # a reference to a stage that does not come earlier is refused
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\nstages:\n  - {stage: ft, notebook: 02_finetune, params: params/02_finetune/smoke.yaml,"
                   " set: {ticket: {from_stage: search}}}\n  - {stage: search, notebook: 01_search}\n")
    with pytest.raises(ConfigError, match="not an earlier stage"):
        load_sweep(bad, output_root=tmp_path)


def test_staged_sweep_files_refuse_malformed_stages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {stage: a, notebook: 01_search}\n  - {stage: a, notebook: 01_search}\n")
    with pytest.raises(ConfigError, match="own 'stage' name"):
        load_sweep(bad)
    bad.write_text("notebook: 01_search\nstages:\n  - {stage: a, notebook: 01_search}\n")
    with pytest.raises(ConfigError, match="belong to the stages"):
        load_sweep(bad)


def test_the_pilot_choice_reads_validation_accuracy_only(tmp_path):
    from rst_lib.workbook.sweep_files import choose_from_pilot
    sweep = load_sweep(ROOT / "params/sweeps/claims-smoke.yaml", output_root=tmp_path, validate=False)
    pilot = [c for c in sweep.cells if c.stage == "dense-lr"]
    for c, val, test in zip(pilot, (0.30, 0.20), (0.10, 0.50)):  # the test split would pick the other
        c.run_dir.mkdir(parents=True)
        (c.run_dir / "metrics.json").write_text(json.dumps(
            {"best": {"pgd_acc": val, "split": "val"}, "final": {"pgd_acc": test, "split": "test"}}))
    dense = next(c for c in sweep.cells if c.stage == "dense")
    assert choose_from_pilot(dense, sweep.cells) == {"lr": pilot[0].params["lr"]}


@pytest.mark.slow  # ~30 tiny notebook runs and notebook 08: minutes on 2 cores
def test_claims_smoke_study_commits_its_records_and_08_renders_from_them(tmp_path, monkeypatch):
    """The shipped smoke sweep, run as a committed study: every cell's compact record lands in
    the study folder, a second run skips them all, and 08 renders the same claims from the
    records alone (the run folders deleted, as on a fresh clone)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two cells at once on a shared machine
    out, study = tmp_path / "outputs", tmp_path / "studies" / "claims-smoke"
    sweep = tmp_path / "claims-smoke.yaml"  # the shipped file, its records kept under tmp_path
    sweep.write_text((ROOT / "params/sweeps/claims-smoke.yaml").read_text().replace(
        "params/", f"{ROOT}/params/") + f"study: {study}\n")
    cli = [sys.executable, "-m", "rst_lib.workbook.cli"]
    subprocess.run(cli + ["sweep", str(sweep), "-o", str(out), "--jobs", "2", "--no-progress"],
                   cwd=ROOT, check=True)
    cells = load_sweep(sweep, output_root=out, validate=False).cells
    assert all(c.committed for c in cells)
    # the records keep one bit per image: each seed its own images, both arms of a seed the same
    from rst_lib.data.outcomes import load_outcomes
    s0, s1 = (load_outcomes(study / "search" / f"seed={s}", "autoattack")[0] for s in (0, 1))
    assert np.array_equal(load_outcomes(study / "dense" / "seed=0", "autoattack")[0], s0)
    assert np.array_equal(load_outcomes(study / "finetune" / "seed=0" / "finetune_reinit", "clean")[0][:len(s0)], s0)
    assert not np.array_equal(s0, s1)
    assert not list(study.rglob("last.pt")) and not list(study.rglob("*.ipynb"))  # compact records only
    # a dense net's weights only if a later cell reads them (the pilot is read for its lr only)
    assert not list((study / "dense").rglob("ticket.pt")) and not list((study / "dense-lr").rglob("ticket.pt"))
    assert (study / "rtt-dense" / "seed=0" / "ticket.pt").is_file()  # ... as the RTT's is
    # the RTT's ticket holds its trained weights too; every other file is small
    assert max(f.stat().st_size for f in study.rglob("*") if "rtt" not in f.parent.parent.name) < 150_000
    again = subprocess.run(cli + ["sweep", str(sweep), "-o", str(out), "--no-progress"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout
    assert f"{len(cells)} finished before, 0 to run" in again

    def claims_from(tag):
        run = tmp_path / f"claims-{tag}"
        subprocess.run(cli + ["run", "notebooks/08_paper_claims.ipynb", "-o", str(out), "-p",
                              f"sweep={sweep}", "-p", f"runs_root={out}", "--run-dir", str(run),
                              "--no-progress"], cwd=ROOT, check=True)
        return json.loads((run / "claims.json").read_text())

    first = claims_from("outputs")
    import shutil
    shutil.rmtree(out / "01_search")  # a fresh clone: no run folders, only the records
    shutil.rmtree(out / "02_finetune")
    fresh = claims_from("records")
    assert fresh["finished"] == first["finished"] == len(cells)
    assert [c["key"] for c in fresh["claims"]] == [c.key for c in CLAIMS]
    for a, b in zip(first["claims"], fresh["claims"]):
        assert (a["verdict"], a["a_values"], a["b_values"]) == (b["verdict"], b["a_values"], b["b_values"])
    for c in fresh["claims"]:  # every counted claim was measured on 2 paired seeds and judged
        if c["counted"] == "yes":
            assert c["pairs"] == 2, c["key"]
        assert c["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)
        if c["interval"] is None:  # no interval (one pair, or nothing to bound it): no verdict
            assert c["verdict"] == INCONCLUSIVE, c["key"]
        elif c["verdict"] == HOLDS:  # "holds" only with the interval past the declared margin
            lo, hi = c["interval"]
            margin = c["margin_points"] / 100
            kind = c["kind"].split(",")[0]
            assert (lo > margin if kind == SUPERIORITY else lo > -margin
                    if kind == NON_INFERIORITY else -margin < lo <= hi < margin), c
        assert all(str(study) in r for r in c["runs"])


def test_committed_records_are_skipped_and_read(tmp_path):
    """A cell whose study record says finished is not run again, even without its run folder
    (a fresh clone), and is read from its record; a cell that reads a failed cell fails."""
    from collections import deque
    from rst_lib.workbook.sweeps import SweepResult, next_ready_cell, run_sweep
    from rst_lib.workbook.notebooks import sweep_run_dirs
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text((ROOT / "params/sweeps/claims-smoke.yaml").read_text()
                          + f"study: {tmp_path / 'studies' / 'smoke'}\n")
    sweep = load_sweep(sweep_file, output_root=tmp_path / "out", validate=False)
    assert sweep.study == tmp_path / "studies" / "smoke"
    assert sweep.cells[0].record_dir == sweep.study / "search" / "seed=0"
    fin = next(c for c in sweep.cells if c.stage == "finetune")  # reads the record's ticket
    assert fin.params["ticket"] == str(sweep.study / "search" / "seed=0" / "ticket.pt")
    for c in sweep.cells:
        c.record_dir.mkdir(parents=True)
        (c.record_dir / "run.json").write_text(json.dumps({"status": "finished"}))
    result = run_sweep(sweep_file, output_root=tmp_path / "out", progress=False, log=lambda s: None)
    assert result.ok and not result.finished and len(result.skipped) == len(sweep.cells)
    assert not list((tmp_path / "out").rglob("run.json"))  # nothing ran
    assert sweep_run_dirs(sweep_file, tmp_path / "out") == [c.record_dir for c in sweep.cells]
    # the broken case: a cell whose dependency failed is failed, not run
    pending, failed, said = deque([fin]), {fin.depends_on[0]}, []
    res = SweepResult(sweep)
    assert next_ready_cell(pending, set(), failed, said.append, res, None) is None
    assert res.failed == [fin.name] and "failed" in said[0] and not pending
