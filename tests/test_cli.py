"""The command line (a newcomer's first hour): from any folder, every mistake caught before a
kernel starts with one clear line and exit code 2, no run folder left behind, and run files
that colleagues can read."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rst_lib.workbook import cli


ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rst_lib.workbook.cli"]


def _cli(args, cwd, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("RST_DATA_DIR", None)
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _one_clear_line(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr  # one line, no traceback
    for n in needles:
        assert n in err[0], (n, err[0])
    assert "weights_only=False" not in err[0]
    return err[0]


@pytest.fixture
def elsewhere(tmp_path):
    """A folder outside the project, where a newcomer might stand."""
    d = tmp_path / "somewhere"
    d.mkdir()
    return d


def _no_run_folders(out: Path):
    return not out.exists() or not [p for p in out.rglob("run.json")]


@pytest.mark.slow  # nine CLI processes, each importing torch
def test_mistakes_are_one_line_exit_2_and_leave_nothing(elsewhere, tmp_path):
    out = tmp_path / "out"
    o = ["-o", str(out)]
    bad_yaml = elsewhere / "bad.yaml"
    bad_yaml.write_text("keep_ratio: 0.1\nepochs: 3: 4\n")
    cases = [
        (["run", "09_nothing"] + o, ["unknown notebook '09_nothing'", "00_quickstart"]),
        (["run", "01_serch"] + o, ["did you mean '01_search'"]),
        (["params", "09_nothing"], ["unknown notebook"]),
        (["run", "01_search", "-p", str(bad_yaml)] + o, [f"{bad_yaml}:2:10", "YAML syntax error"]),
        (["run", "01_search", "-p", "keep_ratio", "-p", "0.1"] + o, ["-p keep_ratio=VALUE"]),
        (["run", "01_search", "-p", "keep_ratoi=0.1"] + o, ["keep_ratoi", "did you mean 'keep_ratio'"]),
        (["run", "01_search", "-p", "dataset=cifar10"] + o,
         ["dataset=cifar10", str(elsewhere / "data"), "cifar-10-batches-py"]),
        (["run", "01_search", "-p", "dataset=imagefolder", "-p", f"data_dir={elsewhere}"] + o,
         ["imagefolder", str(elsewhere)]),
        (["sweep", str(bad_yaml)] + o, [str(bad_yaml), "YAML syntax error"]),
    ]
    for args, needles in cases:
        _one_clear_line(_cli(args, elsewhere), *needles)
    assert _no_run_folders(out)


@pytest.mark.slow  # a search, then five CLI processes
def test_bad_tickets_are_told_apart_before_any_kernel(elsewhere, tmp_path, data):
    from rst_lib import RunConfig, train
    out = tmp_path / "out"
    run = tmp_path / "good"
    train(RunConfig(model="conv2", width=0.125, epochs=1, train_examples=64, eval_examples=16,
                    final_examples=16, autoattack="none", eval_steps=1).validate(), run,
          progress=False, data=data)
    good = (run / "ticket.pt").read_bytes()
    files = {"cut.pt": good[: len(good) // 2], "empty.pt": b"", "random.pt": os.urandom(3000),
             "renamed.pt": b'{"status": "finished"}'}
    for name, content in files.items():
        (elsewhere / name).write_bytes(content)
    torch.save({"x": _Evil()}, elsewhere / "unsafe.pt")
    expect = {"cut.pt": "truncated or corrupted", "empty.pt": "is empty", "random.pt": "is not a ticket",
              "renamed.pt": "JSON file", "unsafe.pt": "could run code"}
    for name, needle in expect.items():
        line = _one_clear_line(_cli(["run", "06_evaluate", "-p", f"ticket={name}", "-o", str(out)],
                                    elsewhere), needle, str(elsewhere / name))
        assert "Traceback" not in line
    assert _no_run_folders(out)


def test_index_writes_where_the_runs_are_never_into_the_current_folder(elsewhere, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    proc = _cli(["index", "-o", str(out)], elsewhere)
    assert proc.returncode == 0 and (out / "index.html").is_file()
    assert not (elsewhere / "outputs").exists()


@pytest.mark.slow  # executes notebook 01 through the CLI
def test_a_run_from_another_folder_finds_its_notebook_data_and_paths(elsewhere, tmp_path):
    out = tmp_path / "out"
    proc = _cli(["run", "01_search", "-p", str(ROOT / "params" / "01_search" / "smoke.yaml"),
                 "-p", "masking_checks=false", "-p", "autoattack=none", "-o", "out-here",
                 "--no-progress"], elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((elsewhere / "out-here" / "01_search").iterdir())  # -o is taken from where we stand
    assert len(runs) == 1 and (runs[0] / "report.html").is_file()
    # run files are shareable: the user's umask decides, as for any file they write
    umask = os.umask(0)
    os.umask(umask)
    for name in ("metrics.json", "run.json", "summary.json", "ticket.pt", "last.pt", "report.html"):
        mode = stat.S_IMODE((runs[0] / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))
    assert "Kernel is running over TCP" not in proc.stderr + proc.stdout
    report = (runs[0] / "report.html").read_text()
    assert '<details id="rst-params">' in report and "keep_ratio" in report


def test_load_ticket_accepts_a_run_folder_and_train_runs_appear_in_the_index(tmp_path, data):
    from rst_lib import RunConfig, load_ticket, train
    from rst_lib.workbook.index import run_rows
    run = tmp_path / "outputs" / "mine"
    train(RunConfig(model="conv2", width=0.125, epochs=1, train_examples=64, eval_examples=16,
                    final_examples=16, autoattack="none", eval_steps=1).validate(), run,
          progress=False, data=data)
    assert load_ticket(run).config.name == "conv2"
    rows = run_rows(tmp_path / "outputs")
    assert [r["run"] for r in rows] == ["mine"] and rows[0]["examples"] == 16


class _Evil:
    def __reduce__(self):
        return (print, ("this would run",))


def test_p_takes_several_files_and_overrides_in_order(tmp_path):
    from rst_lib.workbook.cli import _params
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("keep_ratio: 0.1\nepochs: 3\n")
    b.write_text("epochs: 4\n")
    params = _params([str(a), str(b), "epochs=6", "eps=8/255"], {"keep_ratio", "epochs", "eps"})
    assert params == {"keep_ratio": 0.1, "epochs": 6, "eps": "8/255"}
    assert _params([str(a), str(b)], set())["epochs"] == 4  # a later file wins


NB = ROOT / "notebooks"


def test_cli_reports_parameter_errors_and_lists_parameters(capsys, tmp_path):
    assert cli.main(["run", "notebooks/01_search.ipynb", "-p", "keepratio=0.1", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter(s) keepratio" in err and "keep_ratio" in err
    assert cli.main(["params", str(NB / "04_r2s.ipynb")]) == 0
    out = capsys.readouterr().out
    assert "eot_samples" in out and "mode" in out


def test_model_takes_a_notebooks_parameter_file_and_refuses_a_misspelt_name(capsys):
    """`rst-workbook model -p params/01_search/cifar10-cpu.yaml`: the file's notebook-only
    names (masking_examples, ...) do not shape the network and are accepted; a typo is not."""
    for f in sorted((ROOT / "params" / "01_search").glob("*.yaml")):
        assert cli.main(["model", "-p", str(f)]) == 0, f
        assert "total" in capsys.readouterr().out
    assert cli.main(["model", "-p", str(ROOT / "params/01_search/cifar10-cpu.yaml"),
                     "-p", "maskin_examples=3"]) == 2
    assert "did you mean 'masking_examples'" in capsys.readouterr().err
