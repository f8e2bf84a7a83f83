"""The CLI answers at once (issue 27): its light commands and every refusal of a bad
parameter run without importing torch, papermill, nbformat or scipy (seconds of start-up on
a 2-core machine; bench/cli_startup.py times them). One interpreter runs them all in order
and reports which heavy module each command loaded first, so the test names the culprit."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "papermill", "nbformat", "scipy", "matplotlib")

# Runs CLI commands one after the other in a fresh interpreter; prints, as JSON, the heavy
# modules that each command left in sys.modules (those loaded by an earlier command excluded).
PROBE = r"""
import json, sys
from pathlib import Path
HEAVY, commands, work = json.loads(sys.argv[1])
from rst_lib.workbook import cli, working_copy
working_copy.WORK_DIR = Path(work)  # `new` writes its copy here, not into the project
loaded, report = set(), []
for argv in commands:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # --help
        code = e.code
    now = {m.split(".")[0] for m in sys.modules} & set(HEAVY)
    report.append({"argv": argv, "code": code, "heavy": sorted(now - loaded)})
    loaded |= now
print(json.dumps(report))
"""


def heavy_imports(commands: list[list[str]], tmp_path) -> list[dict]:
    """For each command (run in order in one fresh interpreter), its exit code and the
    heavy modules it imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([HEAVY, commands, str(tmp_path / "work")])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def light_commands(tmp_path) -> list[list[str]]:
    out = str(tmp_path / "outputs")
    return [
        ["--help"],
        ["params", "01_search"],
        ["index", "-o", out],
        ["sweep", "params/sweeps/smoke.yaml", "--status", "-o", out],
        ["new", "01_search", "startup-probe"],
        # refusals of a bad parameter: exit code 2, before torch
        ["run", "01_search", "-p", "keep_ratio=abc", "-o", out],
        ["run", "01_search", "-p", "keep_ratoi=0.1", "-o", out],
        ["run", "01_search", "-p", "params/01_search/cpu-demo.yaml", "-p", "train_attack=pgdd", "-o", out],
        ["run", "01_search", "-p", "dataset=cifar10", "-p", f"data_dir={tmp_path / 'no-data'}", "-o", out],
        ["run", "06_evaluate", "-p", "eps_curve=[0.1, 'x']", "-o", out],
        ["new", "01_search", "bad", "-p", "epochs=three"],
        ["model", "-p", "width=wide"],
        ["sweep", "params/sweeps/smoke.yaml", "-p", "epochs=many", "-o", out],
    ]


def test_light_commands_and_refusals_import_no_heavy_module(tmp_path):
    report = heavy_imports(light_commands(tmp_path), tmp_path)
    for row in report:
        refusal = any(a.startswith(("keep_ratio=a", "keep_ratoi", "train_attack=", "data_dir=", "eps_curve",
                                    "epochs=three", "width=wide", "epochs=many")) for a in row["argv"])
        assert row["code"] == (2 if refusal else 0), row
        assert row["heavy"] == [], f"`rst-workbook {' '.join(row['argv'])}` imported {row['heavy']}"
    assert (tmp_path / "work" / "startup-probe.ipynb").is_file()
    assert not (tmp_path / "outputs" / "01_search").exists()  # refused: no run folder


def test_the_probe_sees_a_command_that_imports_torch(tmp_path):
    """The rule broken: `model` builds the network (on the meta device), so it needs torch,
    and `run --check` builds it too; the probe names torch for them and only for them."""
    report = heavy_imports([["params", "01_search"], ["model", "-p", "model=conv2"],
                            ["run", "00_quickstart", "-p", "params/quickstart.yaml", "--check",
                             "-o", str(tmp_path / "out")]], tmp_path)
    assert [r["code"] for r in report] == [0, 0, 0]
    assert report[0]["heavy"] == [] and "torch" in report[1]["heavy"]
    assert "papermill" not in report[2]["heavy"] and not (tmp_path / "out").exists()  # --check writes nothing


def test_parameters_read_without_papermill_are_papermills():
    """The CLI reads a notebook's parameters cell itself (papermill's import is 1.5 s): the
    same names, order, default text and help as papermill's inspect_notebook, every notebook."""
    import papermill
    from rst_lib.workbook.params import parameter_specs
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 9
    for nb in notebooks:
        ours = [(k, s["default"], s["help"]) for k, s in parameter_specs(nb).items()]
        theirs = [(k, p["default"], p.get("help") or "") for k, p in papermill.inspect_notebook(str(nb)).items()]
        assert ours == theirs, nb.name
