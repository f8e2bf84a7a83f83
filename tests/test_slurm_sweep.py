"""A two-cell smoke sweep submitted to a real single-node Slurm (started by
.ci/slurm-up.sh), one cell cancelled mid-run (scancel) and resubmitted by re-running the
sweep, which then resumes it from last.pt. Where Slurm cannot be started, the same test runs
through submitit's local executor and says so (a warning naming the reason)."""
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from rst_lib.errors import ConfigError
from rst_lib.workbook.cluster import (CellJob, SlurmOptions, cancel_job, cell_states)
from rst_lib.workbook.sweeps import load_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def executor():
    """``slurm`` when .ci/slurm-up.sh brings a cluster up, else ``submitit-local``."""
    try:
        r = subprocess.run([str(ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True,
                           timeout=300)
        reason = ((r.stderr + r.stdout).strip().splitlines() or ["no output"])[-1]
        up = r.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        up, reason = False, f"{type(e).__name__}: {e}"
    if up:
        return "slurm"
    warnings.warn(f"Slurm could not be started ({reason}): the sweep test runs with "
                  "submitit's local executor instead", UserWarning)
    print(f"\nSLURM NOT AVAILABLE ({reason}); using submitit's local executor", file=sys.stderr)
    return "submitit-local"


def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "rst_lib.workbook.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _epoch(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


EPOCHS = 12  # long enough to cancel a cell between two epochs


@pytest.mark.slow  # two notebook runs as cluster jobs, one cancelled and resumed: 13 min
# wall at load ~15 on 2 cores (other sessions); mostly torch imports of 5 CLI calls and 3 jobs
def test_smoke_sweep_on_slurm_with_a_cancelled_cell_resubmitted(tmp_path, executor):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "notebook": "01_search", "name": "smoke-cluster",
        "params": str(ROOT / "params" / "01_search" / "smoke.yaml"),
        "set": {"autoattack": "none", "masking_checks": False, "train_examples": 128,
                "eval_examples": 20, "final_examples": 20, "epochs": EPOCHS},
        "grid": {"keep_ratio": [0.1, 0.3]},
        "slurm": {"cpus_per_cell": 1, "time": 30}}))
    out = tmp_path / "outputs"
    common = [str(sweep_file), "-o", str(out)]
    first = _cli("sweep", *common, "--executor", executor)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("submitted ") == 2, first.stdout
    sweep = load_sweep(sweep_file, output_root=out)
    keep, victim = sweep.cells

    # cancel the second cell once it has finished an epoch (mid-run)
    _wait(lambda: _epoch(victim.run_dir) >= 1, 600, "the second cell's first epoch", poll=0.2)
    job = json.loads((victim.run_dir / "job.json").read_text())["job_id"]
    by_name = lambda: {s.cell.name: s for s in cell_states(sweep)}  # noqa: E731
    running = by_name()[victim.name]
    cancel_job(job, executor)
    assert running.state == "running" and running.detail.startswith(f"job {job}; epoch ")
    cancelled = _wait(lambda: by_name()[victim.name].state == "failed" and by_name(), 120,
                      "the cancelled cell to show as failed")
    assert cancelled[victim.name].job_id == job
    assert _epoch(victim.run_dir) < EPOCHS  # stopped mid-run
    status = _cli("sweep", *common, "--status")
    assert any(line.split()[0] == "failed" and victim.name in line
               for line in status.stdout.splitlines()), status.stdout

    # re-running the sweep resubmits only the cancelled cell
    dry = _cli("sweep", *common, "--executor", executor, "--dry-run")
    submit = [ln for ln in dry.stdout.splitlines() if ln.split()[:1] == ["submit"]]
    assert len(submit) == 1 and victim.name in submit[0], dry.stdout
    again = _cli("sweep", *common, "--executor", executor)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("submitted ") == 1 and victim.name in again.stdout, again.stdout
    assert f"(was {job})" in again.stdout

    done = _wait(lambda: all(s.state == "finished" for s in cell_states(sweep)) and True, 600,
                 "both cells to finish", poll=2)
    assert done
    for cell in sweep.cells:
        metrics = json.loads((cell.run_dir / "metrics.json").read_text())
        assert metrics["status"] == "finished"
        assert [h["epoch"] for h in metrics["history"]] == list(range(1, EPOCHS + 1))
        assert (cell.run_dir / "report.html").is_file()
        assert any((cell.run_dir / "tensorboard").iterdir())
        assert (cell.run_dir / "job.out").exists()  # the job's own log, linked from the cell
    starts = [s["epoch"] for s in json.loads((victim.run_dir / "progress.json").read_text())["starts"]]
    assert starts[0] == 0 and starts[-1] >= 1  # the resubmitted job resumed from last.pt
    log = (victim.run_dir / "log.txt").read_text()
    assert log.count("start (job") == 2
    final = _cli("sweep", *common, "--status")
    assert final.stdout.splitlines()[-1] == "2 finished", final.stdout


def test_checkpoint_requeues_the_same_cell():
    """submitit's hook on preemption/timeout: the same call again (the run then resumes)."""
    spec = {"run_dir": "/x", "notebook": "n", "params": {"a": 1}}
    delayed = CellJob().checkpoint(spec)
    assert isinstance(delayed.function, CellJob) and delayed.args == (spec,)


def test_job_options_are_checked_in_one_line():
    with pytest.raises(ConfigError, match="unknown slurm option 'gpu'.*gpus_per_cell"):
        SlurmOptions.from_mapping({"gpu": 1}, "sweep.yaml: slurm")
    with pytest.raises(ConfigError, match="time=0 is invalid"):
        SlurmOptions().merged({"time": 0})
    opts = SlurmOptions.from_mapping({"partition": "gpu", "gpus_per_cell": 1,
                                      "sbatch": ["--qos=high", "#SBATCH --constraint=a100"]}, "f")
    params = opts.merged({"time": 90, "account": None}).executor_parameters()
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 1
    assert params["timeout_min"] == 90 and "slurm_account" not in params
    assert params["slurm_additional_parameters"] == {"qos": "high", "constraint": "a100"}
    with pytest.raises(ConfigError, match="sbatch option 'qos high' is invalid"):
        SlurmOptions(sbatch=["qos high"]).executor_parameters()
