"""Batch runs: parameter checks before any kernel, run directories, sweeps (kill and resume)."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rst_lib.workbook import cli
from rst_lib.config import ConfigError
from rst_lib.workbook.runs import RunExists, prepare_run_dir, run_notebook, run_status
from rst_lib.workbook.sweeps import cell_name, load_sweep, run_sweep
from rst_lib.workbook.params import normalize_params, validate_notebook_params


ROOT = Path(__file__).resolve().parents[1]


NB = ROOT / "notebooks"


@pytest.fixture
def one_thread_kernels(monkeypatch):
    # papermill kernels are separate processes: keep them on one thread like this one
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def test_unknown_parameter_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        run_notebook(NB / "03_transferability.ipynb", overrides=["keep_ratio_list=[0.1]"],
                     output_root=tmp_path)
    msg = str(e.value)
    assert "unknown parameter(s) keep_ratio_list" in msg and "valid parameters:" in msg
    for name in ("keep_ratios", "tickets", "transfer_examples", "eps", "seed"):
        assert name in msg
    assert not any(tmp_path.iterdir())  # nothing created, no kernel started


@pytest.mark.parametrize("notebook, override, match", [
    ("01_search", "keep_ratio=abc", "keep_ratio='abc' is invalid"),
    ("01_search", "epochs=1.5", "epochs=1.5 is invalid: expected int"),
    ("01_search", "final_examples=many", "final_examples='many' is invalid: expected int or null"),
    ("03_transferability", "keep_ratios=0.1", "keep_ratios=0.1 is invalid: expected a list"),
    ("03_transferability", "keep_ratios=[0.1, x]", "keep_ratios='x' is invalid"),
    ("04_r2s", "eot_samples=null", "eot_samples=None is invalid"),
    ("05_mask_patterns", "interactive=3", "interactive=3 is invalid: expected true or false"),
    ("02_finetune", "tasks=finetune", "tasks='finetune' is invalid: expected a list"),
    ("06_evaluate", "pgd_steps=[10, 2.5]", "pgd_steps=2.5 is invalid: expected int"),
    ("06_evaluate", "train_attack=fgsm", "train_attack='fgsm' is invalid (did you mean 'fgsm_rs'?): valid choices"),
])
def test_wrong_types_fail_before_any_kernel(tmp_path, notebook, override, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        run_notebook(NB / f"{notebook}.ipynb", overrides=[override], output_root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_none_accepted_where_documented_and_paths_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run1").mkdir()
    ticket = tmp_path / "run1" / "ticket.pt"
    from rst_lib import create_model, save_ticket
    save_ticket(create_model("conv2", 10, 1, image_size=28, width=0.125), ticket)  # a real one
    params = normalize_params(NB / "06_evaluate.ipynb",
                              {"ticket": "run1", "final_examples": None, "eval_dataset": None})
    validate_notebook_params(NB / "06_evaluate.ipynb", params)
    assert params["ticket"] == str(ticket)  # a run directory becomes its ticket.pt
    assert params["progress"] is False  # batch default
    p = normalize_params(NB / "03_transferability.ipynb", {"tickets": "outputs/x/*"})
    assert p["tickets"] == [str(tmp_path / "outputs/x/*")]
    p = normalize_params(NB / "07_compare_runs.ipynb", {}, "/some/root")
    assert p["runs_root"] == "/some/root" and p["progress"] is False
    p = normalize_params(NB / "05_mask_patterns.ipynb", {})
    assert p["interactive"] is False


def test_every_parameter_file_is_valid():
    """params/<notebook>/*.yaml (smoke, cpu-demo, GPU presets) all pass the checks."""
    files = sorted((ROOT / "params").glob("0*/*.yaml"))
    assert len(files) >= 22
    # the presets go to 01_search as they are (sweeps and README use them so)
    files += sorted((ROOT / "params" / "presets").glob("*.yaml"))
    for f in files:
        nb = NB / f"{'01_search' if f.parent.name == 'presets' else f.parent.name}.ipynb"
        assert nb.is_file(), f
        params = normalize_params(nb, yaml.safe_load(f.read_text()))
        if params.get("ticket") and not Path(params["ticket"]).exists():
            del params["ticket"]  # GPU presets name a ticket of a sweep that has not run here
        validate_notebook_params(nb, params)
    for f in sorted((ROOT / "params" / "sweeps").glob("*.yaml")):
        cwd = os.getcwd()
        try:
            os.chdir(ROOT)
            load_sweep(f)
        finally:
            os.chdir(cwd)


def test_prepare_run_dir_refuses_finished_and_foreign_dirs_and_resumes(tmp_path):
    nb = NB / "01_search.ipynb"
    d = tmp_path / "cell"
    assert prepare_run_dir(d, {"a": 1}, nb) == "new"
    assert run_status(d) == "queued"
    (d / "last.pt").write_text("x")
    assert prepare_run_dir(d, {"a": 1}, nb) == "resume" and (d / "last.pt").exists()
    assert prepare_run_dir(d, {"a": 2}, nb) == "restart" and not (d / "last.pt").exists()
    info = json.loads((d / "run.json").read_text())
    info["status"] = "running"
    info.update(pid=99999999, host="elsewhere")
    (d / "run.json").write_text(json.dumps(info))
    assert run_status(d) == "dead"  # killed: may be run again
    info["status"] = "finished"
    (d / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunExists):
        prepare_run_dir(d, {"a": 2}, nb)
    with pytest.raises(RunExists):  # run_notebook refuses before starting a kernel
        run_notebook(nb, overrides=["epochs=1"], output_root=tmp_path, run_dir=d)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a run directory"):
        prepare_run_dir(foreign, {}, nb)


def test_cell_names_are_deterministic():
    assert cell_name({"keep_ratio": 0.1, "seed": 0}) == "keep_ratio=0.1-seed=0"
    assert cell_name({"eps": "8/255", "keep_ratios": [0.05, 0.1]}) == "eps=8_255-keep_ratios=0.05,0.1"
    assert cell_name({}) == "default"


def _sweep(tmp_path, body: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_sweep_expands_grid_and_validates_every_cell_first(tmp_path):
    path = _sweep(tmp_path, {"notebook": "01_search", "params": str(ROOT / "params/01_search/smoke.yaml"),
                             "set": {"epochs": 1}, "grid": {"keep_ratio": [0.1, 0.3], "seed": [0, 1]}})
    sweep = load_sweep(path, output_root=tmp_path / "out")
    assert [c.name for c in sweep.cells] == ["keep_ratio=0.1-seed=0", "keep_ratio=0.1-seed=1",
                                            "keep_ratio=0.3-seed=0", "keep_ratio=0.3-seed=1"]
    assert sweep.cells[0].run_dir == (tmp_path / "out/01_search/sweep/keep_ratio=0.1-seed=0").resolve()
    assert sweep.cells[3].params["seed"] == 1 and sweep.cells[3].params["epochs"] == 1
    assert sweep.cells[3].params["name"] == "sweep-keep_ratio=0.3-seed=1"
    bad = _sweep(tmp_path, {"notebook": "01_search", "grid": {"keep_ratio": [0.1, 2.0]}})
    with pytest.raises(ConfigError, match="cell keep_ratio=2: keep_ratio=2.0 is invalid"):
        run_sweep(bad, output_root=tmp_path / "out2", progress=False)
    bad = _sweep(tmp_path, {"notebook": "01_search", "grid": {"keep_ratioo": [0.1]}})
    with pytest.raises(ConfigError, match="unknown parameter\\(s\\) keep_ratioo"):
        run_sweep(bad, output_root=tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()  # nothing ran
    assert cli.main(["sweep", str(bad), "-o", str(tmp_path / "out2"), "--no-progress"]) == 2


def _wait_for(predicate, timeout, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_sweep_killed_midway_finishes_only_the_missing_cell(tmp_path, one_thread_kernels):
    """The two-cell sweep of params/sweeps/smoke.yaml from one command; kill it after the
    first cell; the re-run executes only the second."""
    out = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "rst_lib.workbook.cli", "sweep", "params/sweeps/smoke.yaml", "-o", str(out),
           "--jobs", "1", "--no-progress"]
    cells = [out / "01_search" / "smoke" / name for name in ("keep_ratio=0.1", "keep_ratio=0.3")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # kill as soon as the second cell has started (its kernel is running)
        assert _wait_for(lambda: run_status(cells[0]) == "finished"
                         and run_status(cells[1]) == "running", 900, proc), proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    first = json.loads((cells[0] / "run.json").read_text())
    assert json.loads((cells[1] / "run.json").read_text())["status"] == "interrupted"

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 finished before, 1 to run" in again.stdout
    assert "started  keep_ratio=0.3" in again.stdout and "started  keep_ratio=0.1" not in again.stdout
    assert json.loads((cells[0] / "run.json").read_text()) == first  # untouched
    second = json.loads((cells[1] / "run.json").read_text())
    assert second["status"] == "finished" and second["cell"] == "keep_ratio=0.3"
    for c in cells:
        assert (c / "report.html").is_file() and (c / "ticket.pt").is_file()
    index = (out / "index.html").read_text()
    assert index.count('class="finished"') == 2 and "01_search/smoke/keep_ratio=0.3/report.html" in index
    # a third run has nothing left to do
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "2 finished before, 0 to run" in done.stdout


@pytest.mark.slow
def test_sweep_records_a_failing_cell_and_keeps_going(tmp_path, one_thread_kernels):
    # 07_compare_runs is the quickest notebook. Its parameters are checked before a kernel
    # starts, so the failing cell needs a value that is valid yet breaks at run time: a
    # folder whose metrics.json has a 'config' that is not a mapping (``cfg.get`` fails).
    good, bad = tmp_path / "runs-good" / "old-run", tmp_path / "runs-bad" / "old-run"
    for folder, config in ((good, {"task": "search", "model": "conv2", "keep_ratio": 0.1}),
                           (bad, "not a mapping")):
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "status": "finished", "config": config,
            "best": {"clean_acc": 0.5, "pgd_acc": 0.2}, "history": []}))
    grid = {"run_dirs": [[str(bad.parent)], [str(good.parent)]]}
    bad_cell, good_cell = (cell_name({"run_dirs": v}) for v in grid["run_dirs"])
    path = _sweep(tmp_path, {"notebook": str(NB / "07_compare_runs.ipynb"), "name": "fails",
                             "grid": grid})
    lines = []
    result = run_sweep(path, jobs=2, output_root=tmp_path / "out", progress=False, log=lines.append)
    assert result.failed == [bad_cell] and result.finished == [good_cell] and not result.ok
    failed = json.loads((tmp_path / "out/07_compare_runs/fails" / bad_cell / "run.json").read_text())
    assert failed["status"] == "failed" and "AttributeError" in failed["error"]
    assert isinstance(failed["failed_cell"], int) and failed["failed_cell_source"] == "import glob"
    assert (tmp_path / "out/07_compare_runs/fails" / bad_cell / "report.html").is_file()
    assert any(line.startswith(f"FAILED   {bad_cell}") and "failed at cell" in line for line in lines)
    index = (tmp_path / "out/index.html").read_text()
    assert 'class="failed"' in index and "AttributeError" in index
    # --skip-failed leaves it; the default retries it (and it fails again: exit code 1)
    assert cli.main(["sweep", str(path), "-o", str(tmp_path / "out"), "--no-progress",
                     "--skip-failed"]) == 1


@pytest.mark.slow
def test_sweep_max_cells_runs_that_many_then_stops_and_resumes(tmp_path, one_thread_kernels, capsys):
    """--max-cells N starts N cells and stops (a study run cell by cell under flock, other
    jobs in between); the same command again runs the next ones; 0 is refused."""
    folders = []
    for i in range(3):  # three quick 07_compare_runs cells, each reading its own run folder
        folder = tmp_path / f"runs-{i}" / "old-run"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "status": "finished", "config": {"task": "search", "model": "conv2", "keep_ratio": 0.1},
            "best": {"clean_acc": 0.5, "pgd_acc": 0.2}, "history": []}))
        folders.append([str(folder.parent)])
    path = _sweep(tmp_path, {"notebook": str(NB / "07_compare_runs.ipynb"), "name": "bycell",
                             "grid": {"run_dirs": folders}})
    out = tmp_path / "out"
    cells = [out / "07_compare_runs" / "bycell" / cell_name({"run_dirs": v}) for v in folders]
    args = ["sweep", str(path), "-o", str(out), "--no-progress", "--max-cells"]
    for done in (1, 2, 3):
        assert cli.main(args + ["1"]) == 0
        printed = capsys.readouterr().out
        assert [run_status(c) for c in cells].count("finished") == done, printed
        assert (f"{3 - done} left" in printed) == (done < 3), printed
    assert cli.main(args + ["5"]) == 0 and "3 finished before, 0 to run" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="max_cells=0"):
        run_sweep(path, output_root=out, progress=False, max_cells=0)


def test_sweeps_take_a_list_of_seeds(tmp_path):
    from rst_lib.errors import ConfigError
    from rst_lib.workbook.sweeps import load_sweep
    from rst_lib.workbook.params import NOTEBOOKS_DIR
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"notebook: {NOTEBOOKS_DIR / '01_search.ipynb'}\ngrid:\n  keep_ratio: [0.1, 0.3]\n"
                     "seeds: [0, 1, 2]\n")
    cells = load_sweep(sweep, output_root=tmp_path / "out").cells
    assert [c.name for c in cells][:3] == ["keep_ratio=0.1-seed=0", "keep_ratio=0.1-seed=1",
                                           "keep_ratio=0.1-seed=2"]
    assert len(cells) == 6 and {c.params["seed"] for c in cells} == {0, 1, 2}
    sweep.write_text(f"notebook: {NOTEBOOKS_DIR / '01_search.ipynb'}\nseeds: 3\n")
    with pytest.raises(ConfigError, match="seeds"):
        load_sweep(sweep)


def test_records_name_paths_in_the_project_relative_to_its_root(tmp_path):
    """run.json and params.yaml name what lies inside the project relative to its root (a
    clone elsewhere reads them the same), what lies outside absolute; a run folder recorded
    either way resumes with the same parameters."""
    from rst_lib.utils.project import resolve_paths
    from rst_lib.workbook.params import ALL_PATH_PARAMS
    d = tmp_path / "cell"
    params = {"ticket": str(ROOT / "studies/s/search/seed=0/ticket.pt"), "data_dir": str(tmp_path / "data"),
              "tickets": [str(ROOT / "outputs/01_search/a/ticket.pt")], "run_dir": str(ROOT / "outputs/x")}
    prepare_run_dir(d, params, NB / "01_search.ipynb", {"sweep_file": str(ROOT / "params/sweeps/s.yaml")})
    recorded = yaml.safe_load((d / "params.yaml").read_text())
    assert recorded == {"ticket": "studies/s/search/seed=0/ticket.pt", "data_dir": str(tmp_path / "data"),
                        "tickets": ["outputs/01_search/a/ticket.pt"], "run_dir": "outputs/x"}
    info = json.loads((d / "run.json").read_text())
    assert info["notebook"] == "notebooks/01_search.ipynb" and info["sweep_file"] == "params/sweeps/s.yaml"
    assert info["params"] == recorded
    assert str(ROOT) not in (d / "run.json").read_text() + (d / "params.yaml").read_text()
    assert resolve_paths(recorded, ALL_PATH_PARAMS) == params  # read back against the root
    assert prepare_run_dir(d, params, NB / "01_search.ipynb") == "resume"
    (d / "params.yaml").write_text(yaml.safe_dump(params))  # recorded before paths were relative
    assert prepare_run_dir(d, params, NB / "01_search.ipynb") == "resume"


def test_relative_paths_in_a_parameter_file_are_from_the_project_root(tmp_path, monkeypatch, capsys):
    """The issue's example: `run 01_search --check -p <project>/params/...` typed in another
    folder refused the file's relative data_dir; a parameter file's relative paths mean the
    same wherever the command runs (from the project root), key=value from where it is typed."""
    from rst_lib.workbook.params import param_file
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "p.yaml"
    f.write_text("data_dir: ../shared/data/cifar10-jpeg\ntickets: [outputs/a, /abs/b]\nticket: null\n")
    assert param_file(f) == {"data_dir": str(ROOT.parent / "shared/data/cifar10-jpeg"), "ticket": None,
                             "tickets": [str(ROOT / "outputs/a"), "/abs/b"]}
    f.write_text("dataset: mnist5k\ndata_dir: notebooks\n")  # exists only from the project root
    assert cli.main(["run", "01_search", "--check", "-p", str(f)]) == 0, capsys.readouterr().err
    assert cli.main(["run", "01_search", "--check", "-p", "data_dir=notebooks"]) == 2  # typed: from here
    assert "data_dir='notebooks' does not exist" in capsys.readouterr().err


def _project_copy(dest: Path) -> Path:
    """What a fresh clone holds of the project for running notebooks: the package, the
    notebooks, the parameter files and an empty outputs/ (no runs, no studies/)."""
    import shutil
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ("rst_lib", "notebooks", "params"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    (dest / "outputs").mkdir()
    shutil.copy(ROOT / "outputs" / "README.md", dest / "outputs")
    return dest


@pytest.mark.slow  # three tiny notebook runs and 08: about a minute on 2 cores
def test_a_study_record_travels_to_a_clone_in_another_folder(tmp_path, one_thread_kernels):
    """A tiny study (a search, and a finetune that reads its ticket) run in one copy of the
    project; its records copied into another copy elsewhere, the first deleted: the second
    lists every cell as finished, 08 renders from the records, and the finetune cell, its
    record removed, re-runs there from the search's record."""
    import shutil
    a, b = _project_copy(tmp_path / "a" / "rst-workbook"), _project_copy(tmp_path / "b" / "clone")
    sweep = "params/sweeps/travel.yaml"
    (a / sweep).write_text(
        "name: travel\nstudy: studies/travel\nseeds: [0]\nset: {autoattack: none}\nstages:\n"
        "  - {stage: search, notebook: 01_search, params: params/01_search/smoke.yaml,\n"
        "     set: {masking_checks: false}}\n"
        "  - {stage: finetune, notebook: 02_finetune, params: params/02_finetune/smoke.yaml,\n"
        "     set: {ticket: {from_stage: search}, tasks: [finetune]}}\n")

    def cli_in(project, *args, check=True):
        env = {**os.environ, "PYTHONPATH": str(project)}  # that copy's rst_lib, kernels too
        res = subprocess.run([sys.executable, "-m", "rst_lib.workbook.cli", *args], cwd=tmp_path,
                             env=env, capture_output=True, text=True)
        assert not check or res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    cli_in(a, "sweep", str(a / sweep), "--no-progress")
    records = a / "studies" / "travel"
    texts = {p: p.read_text() for p in records.rglob("*") if p.suffix in (".json", ".yaml")}
    assert {p.name for p in texts} >= {"run.json", "params.yaml", "metrics.json", "summary.json"}
    assert not [p for p, t in texts.items() if str(a) in t or str(tmp_path) in t]  # nothing names copy a
    fin = yaml.safe_load((records / "finetune" / "seed=0" / "params.yaml").read_text())
    assert fin["ticket"] == "studies/travel/search/seed=0/ticket.pt" and fin["run_dir"].startswith("outputs/")
    shutil.copytree(records, b / "studies" / "travel")
    shutil.copy(a / sweep, b / sweep)
    shutil.rmtree(tmp_path / "a")  # nothing of the first copy is left to read
    status = cli_in(b, "sweep", str(b / sweep), "--status")
    assert status.splitlines()[-1] == "2 finished" and "finetune/seed=0" in status, status
    run = tmp_path / "claims"
    cli_in(b, "run", "08_paper_claims", "-p", f"sweep={b / sweep}", "--run-dir", str(run), "--no-progress")
    claims = json.loads((run / "claims.json").read_text())
    assert claims["finished"] == 2
    shutil.rmtree(b / "studies" / "travel" / "finetune")  # re-run there, reading the search's record
    out = cli_in(b, "sweep", str(b / sweep), "--no-progress")
    assert "1 finished before, 1 to run" in out and "finished finetune/seed=0" in out, out
    again = yaml.safe_load((b / "studies/travel/finetune/seed=0/params.yaml").read_text())
    assert again == fin  # the same record, made in another folder
