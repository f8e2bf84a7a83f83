"""The seeds' checkpoints in, plain models out (rst_lib.interop; `rst-workbook import/export`).

Ground truth: checkpoints written by the seeds' own code with that code's outputs on them,
read in place (tests/upstream.py says where). Only the cases that read a seed file skip when
it is absent, and not in CI (``CI=true``), where a missing seed file FAILS.
"""
from pathlib import Path
import json
import os
import subprocess
import sys

import pytest
import torch

from rst_lib import RunConfig, load_ticket, train
from rst_lib.analysis.transfer import check_same_network
from rst_lib.interop.seeds import import_checkpoint
from rst_lib.masks import masking
from rst_lib.models.registry import create_model
from rst_lib.models.tickets import save_ticket
from rst_lib.workbook import load_any, resolve_tickets, ticket_label
from rst_lib.workbook.cli import main
from tiny import TINY_EXPORT
from upstream import EXTRAS, seed_folder

REQUIRED = ["rst-conv4", "rbrn-resnet18_001_p1"]


def _cli_params(meta: dict) -> list[str]:
    """-p arguments from the command line the seed's code ran with (expected.pt's meta)."""
    params = ["-p", f"model={meta.get('arch') or meta['model_type']}",
              "-p", f"keep_ratio={meta['prune_rate']!r}"]
    if meta["source"] == "rbrn":
        params += ["-p", f"adaptive_p={meta['pr_scale']!r}"]
        if meta.get("end_with_bn"):
            params += ["-p", "end_with_bn=true"]
    return params


def _getsubnet_mask(scores: torch.Tensor, k: float) -> torch.Tensor:
    """GetSubnet of RST utils/conv_type.py / RBRN code/arch/conv_type.py, on |scores|."""
    flat = scores.abs().flatten()
    _, idx = flat.sort()
    j = int((1 - k) * flat.numel())
    out = torch.zeros_like(flat, dtype=torch.bool)
    out[idx[j:]] = True
    return out.view(scores.shape)


@pytest.mark.parametrize("name", REQUIRED + EXTRAS)
def test_import_reproduces_the_seed_model(name, tmp_path, capsys):
    folder = seed_folder(name)
    expected = torch.load(folder / "expected.pt", weights_only=True)
    meta = expected["meta"]
    source = {"hn": "rst"}.get(meta["source"], meta["source"])  # edge-popup: RST's layout
    out = tmp_path / "ticket"
    rc = main(["import", str(folder / "checkpoint.pth"), "--source", source,
               *_cli_params(meta), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    model = load_ticket(out)
    with torch.no_grad():
        logits = model(expected["images"].float() / 255)  # [0, 1] images: normalization inside
    want = expected["logits"]
    assert torch.equal(logits.argmax(1), want.argmax(1))  # every prediction
    assert (logits - want).abs().max() <= 1e-4 * max(1.0, want.abs().max().item())
    # the seed's layers, keep ratios and kept counts, in its module order
    record = json.loads((out / "import.json").read_text())
    seed_layers = [{**d, "name": d["name"].removeprefix("1.")} for d in expected["layers"]]
    assert [(d["name"], d["numel"], d["prune_rate"], d["kept"]) for d in record["layers"]] == \
           [(d["name"], d["numel"], d["prune_rate"], d["kept"]) for d in seed_layers]
    assert masking.mask_summary(model)["kept"] == sum(d["kept"] for d in expected["layers"])
    # the masks are GetSubnet's on the checkpoint's scores (computed here from its code)
    state = torch.load(folder / "checkpoint.pth", weights_only=True)["state_dict"]
    prefix = "module.1." if source == "rbrn" else "module."
    masks = masking.weight_masks(model)
    for layer, seed in zip(masks, seed_layers):
        seed_mask = _getsubnet_mask(state[f"{prefix}{seed['name']}.scores"], seed["prune_rate"])
        assert torch.equal(masks[layer].flatten(), seed_mask.flatten()), layer


def _refusal(args, tmp_path, capsys) -> str:
    out = tmp_path / "refused"
    assert main([*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert not out.exists(), "a refused command wrote its output folder"
    assert len(err.splitlines()) == 1, err
    return err


def test_import_refuses_what_does_not_fit(tmp_path, capsys):
    ck = str(seed_folder("rbrn-resnet18_001_p1") / "checkpoint.pth")
    rbrn = ["import", ck, "--source", "rbrn", "-p", "keep_ratio=0.1", "-p", "adaptive_p=0.1"]
    err = _refusal(rbrn, tmp_path, capsys)  # last.* keys, no end_with_bn
    assert "last.running_mean" in err and "end_with_bn=true" in err
    err = _refusal(rbrn + ["-p", "end_with_bn=true", "-p", "model=cResNet18"], tmp_path, capsys)
    assert "conv1.weight" in err and "(64, 3, 3, 3)" in err and "(6, 3, 3, 3)" in err
    err = _refusal(rbrn + ["-p", "end_with_bn=true", "-p", "model=ResNet34_001_p1"], tmp_path, capsys)
    assert "lacks" in err and "layer1.2.conv1.weight" in err
    err = _refusal(["import", ck, "--source", "rst", "-p", "keep_ratio=0.1"], tmp_path, capsys)
    assert "--source rbrn" in err
    err = _refusal(["import", ck, "--source", "rbrn", "-p", "keep_ratio=0.1"], tmp_path, capsys)
    assert "adaptive_p" in err
    err = _refusal(["import", str(seed_folder("rbrn-resnet18_001_p1") / "expected.pt"), "--source",
                    "rbrn"], tmp_path, capsys)
    assert "state_dict" in err


def test_import_refuses_files_that_are_no_seed_checkpoint(tmp_path, capsys):
    """Refusals that need no seed file: they run wherever the tests run."""
    readme = tmp_path / "notes.pth"
    readme.write_text("not a checkpoint")
    err = _refusal(["import", str(readme), "--source", "rst"], tmp_path, capsys)
    assert "not a PyTorch checkpoint" in err
    torch.save({"weights": {}}, tmp_path / "no-state.pth")  # a torch file, no state_dict entry
    err = _refusal(["import", str(tmp_path / "no-state.pth"), "--source", "rst"], tmp_path, capsys)
    assert "state_dict" in err
    # RBRN's keys (module.1.: its normalization layer comes first) given as RST's
    torch.save({"state_dict": {"module.1.conv1.weight": torch.zeros(1)}}, tmp_path / "rbrn.pth")
    err = _refusal(["import", str(tmp_path / "rbrn.pth"), "--source", "rst", "-p",
                    "keep_ratio=0.1", "-p", "model=cResNet18"], tmp_path, capsys)
    assert "--source rbrn" in err
    err = _refusal(["import", str(tmp_path / "nowhere.pth"), "--source", "rst"], tmp_path, capsys)
    assert "no checkpoint at" in err


def test_file_name_gives_model_and_keep_ratio(tmp_path, capsys):
    """RST's test_trans.py reads ckpt/{network}_{keep}.pth: such a name is enough."""
    folder = seed_folder("rst-conv4")
    ck = torch.load(folder / "checkpoint.pth", weights_only=True)
    del ck["arch"]
    named = tmp_path / "Conv4_0.5.pth"
    torch.save(ck, named)
    assert main(["import", str(named), "--source", "rst", "-o", str(tmp_path / "t")]) == 0
    record = json.loads((tmp_path / "t" / "import.json").read_text())
    assert record["params"]["model"] == "Conv4" and record["params"]["keep_ratio"] == 0.5
    expected = torch.load(folder / "expected.pt", weights_only=True)
    assert [d["kept"] for d in record["layers"]] == [d["kept"] for d in expected["layers"]]


def test_imported_tickets_work_as_tickets_of_one_network(tmp_path):
    """Two imports of one checkpoint (two keep ratios) pass the one-random-network check of
    transfer / R2S; a checkpoint with one random weight changed does not."""
    ck_path = seed_folder("rst-conv4") / "checkpoint.pth"
    a = import_checkpoint(ck_path, "rst", tmp_path / "a", {"keep_ratio": 0.5})
    b = import_checkpoint(ck_path, "rst", tmp_path / "b", {"keep_ratio": 0.3})
    ck = torch.load(ck_path, weights_only=True)
    ck["state_dict"]["module.convs.2.weight"][0, 0, 0, 0] *= -1
    torch.save(ck, tmp_path / "other.pth")
    c = import_checkpoint(tmp_path / "other.pth", "rst", tmp_path / "c", {"keep_ratio": 0.5})
    paths = resolve_tickets([str(a), str(b)])
    assert [p.parent for p in paths] == [a, b]
    assert ticket_label(paths[0]) == "keep 0.5 (import)"
    models = {p.parent.name: load_ticket(p) for p in paths}
    check_same_network(models, up_to_scale=False)
    with pytest.raises(ValueError, match="same random network"):
        check_same_network({**models, "c": load_ticket(c)}, up_to_scale=False)
    net, info = load_any(a)  # 06_evaluate's loader: the dataset comes from the import
    assert info["config"]["dataset"] == "cifar10" and net.config.norm == "none"


def test_planes_build_rbrn_small_resnets():
    m = create_model("resnet18", 10, 3, keep_ratio=0.1, model_kwargs={"planes": [6, 13, 26, 51]})
    shapes = {n: tuple(masking.raw_weight(l).shape) for n, l in masking.masked_layers(m)}
    # RBRN code/arch/resnet_cifar_small.py ResNet18_001_p1 (seeds' key listing)
    assert shapes["body.conv1"] == (6, 3, 3, 3) and shapes["body.fc"] == (10, 51)
    assert shapes["body.layers.2.shortcut.0"] == (13, 6, 1, 1)
    with pytest.raises(Exception, match="planes"):
        create_model("resnet18", 10, 3, keep_ratio=0.1, model_kwargs={"planes": [6, 13]})


# ------------------------------------------------------------------------------ export


FRESH = """
import sys, torch
d = sys.argv[1]
program = torch.export.load(d + '/model.pt2').module()
x = torch.load(d + '/x.pt')
a = program(x)
program.load_state_dict(torch.load(d + '/state_dict.pt', weights_only=True))
b = program(x)
assert not any(m.startswith('rst_lib') for m in sys.modules), 'rst_lib was imported'
torch.save({'a': a, 'b': b}, d + '/fresh.pt')
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("run")
    train(RunConfig(**TINY_EXPORT).validate(), run_dir, progress=False, data=data)
    return run_dir


@pytest.mark.slow  # a fresh Python importing torch, plus torch.export: ~20 s of CPU
def test_export_loads_without_rst_lib(tiny_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(tiny_run), "-o", str(out), "--no-onnx", "--images", "32"]) == 0
    log = json.loads((out / "export_log.json").read_text())
    assert log["ok"] and log["torch_export"]["ok"] and log["state_dict"]["ok"]
    assert "test images of mnist5k" in log["check_images"]
    assert "ONNX skipped" in log["onnx"]["note"]
    ticket = load_ticket(tiny_run)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    torch.save(x, out / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-I", "-c", FRESH, str(out)], check=True, env=env,
                   cwd=tmp_path, timeout=300)
    fresh = torch.load(out / "fresh.pt", weights_only=True)
    with torch.no_grad():
        want = ticket(x)
    for got in (fresh["a"], fresh["b"]):
        assert torch.equal(got.argmax(1), want.argmax(1))
        assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())
    # the plain state_dict: ordinary layers, pruned weights are zeros, kept ones the ticket's
    state = torch.load(out / "state_dict.pt", weights_only=True)
    assert not any("parametrizations" in k or k.endswith("scores") for k in state)
    for name, mask in masking.weight_masks(ticket).items():
        raw = masking.raw_weight(dict(ticket.named_modules())[name])
        assert torch.equal(state[f"{name}.weight"], torch.where(mask, raw, 0.0))
    # the model card takes the run's numbers
    card = json.loads((out / "model_card.json").read_text())
    final = json.loads((tiny_run / "metrics.json").read_text())["final"]
    assert card["clean_acc"] == final["clean_acc"] and card["eps"] == final["eps"]
    assert card["threat_model"] == "Linf" and card["dataset"] == "mnist5k"
    assert card["kept_weights"] == masking.mask_summary(ticket)["kept"]
    assert card["autoattack_acc"] is None and any("autoattack_acc" in n for n in card["notes"])
    assert 0 < card["bits_per_kept_weight"] < 32


def test_export_refuses_bad_inputs(tiny_run, tmp_path, capsys):
    not_ticket = tmp_path / "metrics.json"
    not_ticket.write_text("{}")
    err = _refusal(["export", str(not_ticket)], tmp_path, capsys)
    assert "JSON" in err
    err = _refusal(["export", str(tmp_path)], tmp_path, capsys)  # a folder without ticket.pt
    assert "ticket.pt" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert main(["export", str(tiny_run), "-o", str(full)]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(os.listdir(full)) == ["keep.txt"]


def test_export_of_an_imported_ticket_says_what_is_unknown(tmp_path):
    ticket = import_checkpoint(seed_folder("rbrn-resnet18_001_p1") / "checkpoint.pth", "rbrn",
                               tmp_path / "t", {"keep_ratio": 0.1, "adaptive_p": 0.1,
                                                "end_with_bn": True})
    from rst_lib.interop import export_ticket
    out = export_ticket(ticket, tmp_path / "e", images=8, onnx=False)
    card = json.loads((out / "model_card.json").read_text())
    assert card["clean_acc"] is None and card["source"]["source"] == "rbrn"
    assert any("imported checkpoint" in n for n in card["notes"])
    assert json.loads((out / "export_log.json").read_text())["ok"]


@pytest.mark.slow  # the ONNX exporter and its NumPy reference runner: ~30 s of CPU
def test_export_writes_checked_onnx(tmp_path):
    import onnxscript  # noqa: F401  a dependency: missing, the test fails (never skips)
    m = create_model("conv2", 10, 1, image_size=12, width=0.125, keep_ratio=0.2, end_with_bn=True)
    save_ticket(m, tmp_path / "t" / "ticket.pt")
    from rst_lib.interop import export_ticket
    out = export_ticket(tmp_path / "t", tmp_path / "e", images=8)
    log = json.loads((out / "export_log.json").read_text())
    assert log["onnx"]["written"] and log["onnx"]["check"]["ok"] and (out / "model.onnx").is_file()


# RobustBench's model_info/cifar10/Linf/*.json fields (e.g. Addepalli2022Efficient_RN18.json,
# which also has "unreliable"; older entries have "footnote")
ROBUSTBENCH_FIELDS = {"link", "name", "authors", "additional_data", "number_forward_passes",
                      "dataset", "venue", "architecture", "eps", "clean_acc", "reported",
                      "autoattack_acc", "footnote"}


def _evaluated_ticket(folder: Path, version="standard", examples=10_000, dataset="cifar10",
                      eps=8 / 255, precision=None, searched=None):
    """A ticket with a metrics.json as a run writes it; ``precision``: the configured
    autoattack_precision (None: a run from before the field), ``searched``: the search
    precision the final evaluation recorded (None: not recorded)."""
    model = create_model("conv2", 10, 3, image_size=32, width=0.125, keep_ratio=0.2)
    save_ticket(model, folder / "ticket.pt")
    final = {"split": "test", "examples": 10_000, "clean_acc": 0.6123, "pgd_acc": 0.41,
             "eps": eps, "threat_model": "linf", "autoattack_acc": 0.3949,
             "autoattack": {"version": version, "examples": examples}}
    if searched:
        final["autoattack"]["search_precision"] = searched
    config = {"name": "rt-conv2", "dataset": dataset}
    if precision:
        config["autoattack_precision"] = precision
    (folder / "metrics.json").write_text(json.dumps({"config": config, "final": final}))
    return model


@pytest.mark.parametrize("precision", [{}, {"precision": "fp32"},
                                       {"precision": "auto", "searched": "fp32"}])
def test_export_writes_a_robustbench_entry_after_standard_autoattack_on_the_whole_split(tmp_path, precision):
    from rst_lib.interop import export_ticket
    model = _evaluated_ticket(tmp_path / "t", **precision)
    out = export_ticket(tmp_path / "t", tmp_path / "e", images=4, onnx=False)
    entry = json.loads((out / "robustbench_entry.json").read_text())
    assert set(entry) == ROBUSTBENCH_FIELDS
    assert entry["eps"] == "8/255" and entry["dataset"] == "cifar10"
    assert (entry["clean_acc"], entry["autoattack_acc"]) == ("61.23", "39.49")
    assert entry["additional_data"] is False and entry["number_forward_passes"] == 1
    assert f"{masking.mask_summary(model)['kept']:,}" in entry["footnote"]
    assert "RobustBench entry written" in (out / "export_log.txt").read_text()
    assert (out / "model_card.json").is_file()


@pytest.mark.parametrize("change,why", [({"version": "fast"}, "AutoAttack standard"),
                                        ({"examples": 1000}, "all 10000"),
                                        ({"dataset": "mnist5k"}, "no mnist5k board"),
                                        ({"precision": "bf16"}, "precision was bf16"),
                                        ({"precision": "auto", "searched": "bf16"}, "precision was bf16"),
                                        ({"precision": "auto"}, "precision was not recorded"),
                                        ({"eps": 4 / 255}, "boards are at linf 8/255"),
                                        ({"dataset": "cifar100", "eps": 0.5}, "boards are at linf 8/255")])
def test_no_robustbench_entry_without_that_evaluation_and_the_log_says_why(tmp_path, change, why):
    from rst_lib.interop.export import robustbench_entry
    model = _evaluated_ticket(tmp_path / "t", **change)
    entry, reason = robustbench_entry(tmp_path / "t" / "ticket.pt", model)
    assert entry is None and why in reason
    if "version" in change or "precision" in change:  # through the export: no file, one line
        from rst_lib.interop import export_ticket
        out = export_ticket(tmp_path / "t", tmp_path / "e", images=4, onnx=False)
        assert not (out / "robustbench_entry.json").exists()
        lines = [l for l in (out / "export_log.txt").read_text().splitlines() if "RobustBench" in l]
        assert len(lines) == 1 and lines[0].startswith("no RobustBench entry:") and why in lines[0]
