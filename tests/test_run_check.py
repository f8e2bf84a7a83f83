"""Every shipped parameter file (params/**/*.yaml) through `rst-workbook run --check`'s own
function, in this process: each is resolved against the notebook it is for, checked the way
`run` checks before a kernel starts, its network built on the meta device and its data
located - or refused with a one-line reason that the test confirms is true of this machine.

What "checked" means per file:
* params/<notebook>/*.yaml: against notebooks/<notebook>.ipynb (the folder's name);
  params/quickstart*.yaml against 00_quickstart; params/presets/*.yaml against 01_search
  (the sweeps and the README use them so);
* params/sweeps/*.yaml: expanded by the sweep's own resolution (load_sweep, which checks every
  cell as `sweep` does), then every cell's parameters through the same check as a file's;
* passing means: every parameter valid for the notebook, the network built (notebooks with a
  model), the data located: embedded (mnist5k), present under its folder, or - for the GPU
  presets with `download: true` - absent and said so ("download=true fetches it");
* a refusal passes only when its one-line reason is true here: a ticket named by a GPU file
  that is the run folder of a sweep not run on this machine (the path must not exist), or a
  dataset absent from the folder the message names. Any other refusal fails the test.
"""
import os
from pathlib import Path

import pytest
import yaml

from rst_lib.data.locations import DatasetUnavailable
from rst_lib.errors import ConfigError
from rst_lib.workbook.run_check import check_notebook_run, check_sweep_cell
from rst_lib.workbook.sweep_files import load_sweep

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"


def notebook_for(path: Path) -> Path:
    """The notebook a shipped parameter file is for (see the module docstring)."""
    rel = path.relative_to(ROOT / "params")
    if rel.parts[0].startswith("quickstart"):
        return NB / "00_quickstart.ipynb"
    if rel.parts[0] == "presets":
        return NB / "01_search.ipynb"
    return NB / f"{rel.parts[0]}.ipynb"


def check_file(path: Path, output_root: Path) -> list[str]:
    """What `run --check` / `sweep` resolution says of one file: its lines (a sweep: every
    cell's, prefixed with the cell), or the refusal it raises."""
    if path.parent.name == "sweeps":
        sweep = load_sweep(path, output_root=output_root)
        return [f"{cell.label}: {line}" for cell in sweep.cells
                for line in check_sweep_cell(cell)]
    return check_notebook_run(notebook_for(path), path, output_root=output_root).lines


@pytest.fixture
def at_project_root(monkeypatch):
    """Where the README runs the CLI from; the data default as the CLI sets it there."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RST_DATA_DIR", str(ROOT / "data"))


def _cache_listing() -> list[str]:
    cache = ROOT.parent / "shared" / "data" / "cifar10-jpeg" / ".rst-cache"
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


SHIPPED = sorted((ROOT / "params").rglob("*.yaml"))


def test_every_shipped_parameter_file_is_checked_or_refused_for_a_true_reason(tmp_path, at_project_root):
    assert len(SHIPPED) >= 44 and all(notebook_for(f).is_file() for f in SHIPPED
                                      if f.parent.name != "sweeps")
    cache_before = _cache_listing()
    checked, refused = {}, {}
    for f in SHIPPED:
        name = str(f.relative_to(ROOT / "params"))
        try:
            checked[name] = check_file(f, tmp_path / "outputs")
        except (ConfigError, DatasetUnavailable) as e:
            refused[name] = str(e)
    for name, lines in checked.items():
        if not name.startswith("sweeps/") and notebook_for(ROOT / "params" / name).stem[:2] <= "06":
            # 00-06 load data and build a network: both were located / built
            assert any(line.startswith("data: ") for line in lines), (name, lines)
            assert any(line.startswith("network: ") for line in lines), (name, lines)
        if name.startswith("sweeps/"):  # every cell checked: as many network lines as cells
            cells = {line.split(": ", 1)[0] for line in lines}
            assert len(cells) == sum(line.split(": ", 1)[1].startswith("parameters: ") for line in lines)
        for line in lines:
            if "download=true fetches it" in line:  # absent, and said so: only where it is true
                folder = Path(line.split("not under '")[1].split("'")[0])
                assert not (folder / "cifar-10-batches-py").exists(), line
    for name, reason in refused.items():
        assert len(reason.splitlines()) == 1, (name, reason)
        ticket = (yaml.safe_load((ROOT / "params" / name).read_text()) or {}).get("ticket")
        if ticket and "does not exist" in reason:
            assert not (ROOT / ticket).exists() and str(ROOT / ticket) in reason, (name, reason)
        else:
            pytest.fail(f"params/{name} is refused: {reason}")
    # the GPU files that name tickets of GPU sweeps; refused here, checked where those ran
    assert set(refused) <= {"02_finetune/rst-resnet18-cifar10.yaml", "06_evaluate/rbrn-resnet34-cifar10.yaml",
                            "06_evaluate/rst-resnet18-cifar10.yaml"}, refused
    assert {"quickstart.yaml", "01_search/cpu-demo.yaml", "sweeps/claims-cifar10-cpu.yaml"} <= set(checked)
    cifar = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
    if cifar.is_dir():  # these pass only with the data located; where it is absent, refused above
        assert any("class folders under" in line for line in checked["01_search/cifar10-cpu.yaml"])
    # nothing written: no run folder, no data cache
    assert not (tmp_path / "outputs").exists()
    assert _cache_listing() == cache_before


def test_the_check_refuses_a_broken_file_and_absent_data_in_one_line(tmp_path, at_project_root):
    """The rule broken: a parameter file with a bad value, one naming data that is not there,
    and a sweep with one bad cell are refused by the same function, one line each."""
    bad = tmp_path / "params" / "01_search" / "broken.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("keep_ratio: 1.5\nepochs: 2\n")
    with pytest.raises(ConfigError, match="keep_ratio") as e:
        check_notebook_run(NB / "01_search.ipynb", bad, output_root=tmp_path / "out")
    assert len(str(e.value).splitlines()) == 1
    absent = tmp_path / "absent.yaml"
    absent.write_text(f"dataset: imagefolder\ndata_dir: {tmp_path / 'no-images'}\n")
    with pytest.raises(ConfigError, match="no-images' does not exist") as e:  # no such folder
        check_notebook_run(NB / "01_search.ipynb", absent, output_root=tmp_path / "out")
    assert len(str(e.value).splitlines()) == 1
    (tmp_path / "no-images").mkdir()  # a folder, but no train/ and test/ class folders in it
    with pytest.raises(DatasetUnavailable, match="no-images' must hold train/") as e:
        check_notebook_run(NB / "01_search.ipynb", absent, output_root=tmp_path / "out")
    assert len(str(e.value).splitlines()) == 1
    sweep = tmp_path / "sweeps" / "bad-cell.yaml"
    sweep.parent.mkdir()
    sweep.write_text("notebook: 01_search\ngrid:\n  width: [0.5, -1.0]\n")
    with pytest.raises(ConfigError, match="width=-1"):
        check_file(sweep, tmp_path / "out")
    assert not (tmp_path / "out").exists()
