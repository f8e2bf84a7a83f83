"""The papers' presets are the seeds' runs (issue 19). Each expected value below was read in
the upstream file its preset line cites; the networks a preset builds are compared layer by
layer with what the seeds' own code builds, re-derived here from that code (never from this
workbook's); a preset that drifts, a setting without a citation and a RunConfig field that
reaches a preset silently all fail here."""
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from rst_lib import RunConfig, train
from rst_lib.config import EXECUTION_ONLY_FIELDS, load_config
from rst_lib.data.datasets import dataset_shape
from rst_lib.engine.schedules import lr_factor
from rst_lib.engine.tasks import describe_model, run_model_config
from rst_lib.masks import masking
from rst_lib.models import build_model
from rst_lib.workbook import cli
from upstream import seed_folder

ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = ROOT / "params" / "presets"
PRESETS = sorted(PRESET_DIR.glob("*.yaml"))

# --- what each preset resolves to (values read in the seeds' files the presets cite)
RST = dict(model="resnet18", width=1.0, keep_ratio=0.05, adaptive_p=1.0, keep_rule="getsubnet",
           keep_allocation="closed_form", granularity="weight", keep_ratio_schedule="none",
           discard=False, weight_init="signed_constant", scale_fan=False,
           score_init="kaiming_uniform", bn_affine=False, end_with_bn=False, dense_first=False,
           dense_last=False, normalization="rst", batch_size=256, epochs=160, optimizer="sgd",
           lr=0.1, momentum=0.9, weight_decay=5e-4, lr_schedule="cifar_piecewise",
           lr_milestones=[80, 120], lr_step="epoch", warmup_epochs=0, train_attack="pgd",
           eps=8 / 255, eps_warmup_epochs=0, alpha=2 / 255, steps=7, attack_train_mode=True,
           eval_eps=None, eval_steps=20, eval_alpha=2 / 255, eval_restarts=1, eval_early_stop=True,
           val_fraction=0.02, autoattack="standard", precision="fp32", eval_precision="fp32",
           stop_on_collapse=False, pretrained=None)
RBRN = dict(model="resnet34", width=1.0, seed=1234, keep_ratio=0.01, adaptive_p=0.1,
            keep_rule="getsubnet", keep_allocation="rbrn", granularity="weight",
            keep_ratio_schedule="staged", keep_ratio_stages=1, discard=False,
            weight_init="binary", score_init="uniform", score_init_scale=0.01,
            score_fan_mode="none", bn_affine=False, end_with_bn=True, dense_first=False,
            dense_last=False, normalization="rbrn", batch_size=256, epochs=400, optimizer="sgd",
            lr=0.1, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine", lr_step="epoch",
            warmup_epochs=0, train_attack="pgd", eps=8 / 255, eps_warmup_epochs=0, alpha=2 / 255,
            steps=10, attack_train_mode=True, eval_eps=None, eval_steps=10, eval_alpha=2 / 255,
            eval_early_stop=False, val_fraction=0.02, autoattack="standard",
            autoattack_examples=10000, precision="fp32", eval_precision="fp32",
            stop_on_collapse=False, pretrained=None)
EXPECTED = {
    "rst-resnet18-cifar10": RST,
    "rst-preactresnet18-cifar10": {**RST, "model": "preact_resnet18"},
    "rst-resnet18-cifar10-fast": {**RST, "train_attack": "fgsm_rs", "alpha": 10 / 255, "steps": 1},
    "rbrn-resnet34-cifar10": RBRN,
    "rbrn-resnet34-cifar10-fast": {**RBRN, "epochs": 100, "train_attack": "fgsm_carried",
                                   "alpha": 4 / 255, "steps": 1},
    "rbrn-resnet34-cifar10-trades": {**RBRN, "train_attack": "trades", "steps": 10,
                                     "alpha": 2 / 255, "trades_beta": 6.0,
                                     "attack_train_mode": False, "keep_ratio_schedule": "none"},
}
# A citation: an upstream file (path with a known suffix) or a README / paper, or "ours:".
CITATION = re.compile(r"#.*(\.py|\.yaml|\.sh|README|ours:)")


def preset_keys(preset: Path) -> set[str]:
    return set(yaml.safe_load(preset.read_text()))


def silent_fields(preset: Path, fields) -> list[str]:
    """Fields a preset leaves to RunConfig's (CPU demo) defaults although they change what
    is computed: neither written in it nor on EXECUTION_ONLY_FIELDS."""
    return sorted(set(fields) - preset_keys(preset) - set(EXECUTION_ONLY_FIELDS))


def test_every_preset_is_checked():
    assert sorted(p.stem for p in PRESETS) == sorted(EXPECTED)


def test_presets_have_distinct_names_that_are_their_file_names():
    names = [load_config(p).name for p in PRESETS]
    assert names == [p.stem for p in PRESETS]


def test_execution_only_fields_are_real_fields():
    assert set(EXECUTION_ONLY_FIELDS) <= set(RunConfig.field_names())
    # what a run computes is never on that list
    assert not {"width", "eps_warmup_epochs", "stop_on_collapse", "keep_rule", "keep_allocation",
                "lr_step", "normalization", "precision", "seed"} & set(EXECUTION_ONLY_FIELDS)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_no_field_reaches_a_preset_silently(preset):
    assert silent_fields(preset, RunConfig.field_names()) == [], (
        f"{preset.name}: write these (with a citation or 'ours:') or, if they change nothing "
        "that is computed, put them on config.EXECUTION_ONLY_FIELDS")
    # the guard is live: a field added to RunConfig tomorrow is reported
    assert silent_fields(preset, RunConfig.field_names() + ["a_new_field"]) == ["a_new_field"]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_settings_follow_the_seeds_code(preset):
    cfg = load_config(preset)
    for key, value in EXPECTED[preset.stem].items():
        got = getattr(cfg, key)
        if isinstance(value, float):
            assert got == pytest.approx(value), f"{preset.name}: {key}"
        else:
            assert got == value, f"{preset.name}: {key}"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_setting_cites_its_source(preset):
    lines = [line for line in preset.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines
    uncited = [line for line in lines if line.split(":")[0] != "name" and not CITATION.search(line)]
    assert not uncited, f"{preset.name}: settings without an upstream file or 'ours:' {uncited}"


def test_rst_fast_keeps_rsts_fgsm_step_and_rbrn_fast_its_carried_step():
    fast = load_config(PRESET_DIR / "rst-resnet18-cifar10-fast.yaml")
    assert fast.alpha == pytest.approx(1.25 * fast.eps)  # trainers/default.py
    rbrn = load_config(PRESET_DIR / "rbrn-resnet34-cifar10-fast.yaml")
    assert rbrn.alpha == pytest.approx(rbrn.eps / 2)  # step_size 4 at threshold 8


def test_gpu_sweeps_search_with_the_presets_themselves():
    """The GPU sweeps read params/presets/ directly: no copy of a preset can drift."""
    sweeps = [yaml.safe_load(p.read_text()) for p in (ROOT / "params" / "sweeps").glob("r*.yaml")]
    assert sweeps and all(s["params"].startswith("params/presets/") for s in sweeps)
    assert all((ROOT / s["params"]).is_file() for s in sweeps)
    assert not list((ROOT / "params" / "01_search").glob("r*.yaml"))


# --- the seeds' networks, re-derived from their code (not from this workbook's)

def seed_cresnet_shapes(num_blocks: list[int], num_classes: int = 10) -> list[tuple]:
    """The masked convs of cResNet18/34 in module order: RST models/resnet_cifar.py = RBRN
    code/arch/resnet_cifar.py. conv1 3x3 3->64; BasicBlock conv1 (stride s), conv2, and
    shortcut.0 (1x1) when stride != 1 or in_planes != planes; fc = builder.conv1x1(512, classes)."""
    shapes, in_planes = [(64, 3, 3, 3)], 64
    for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
        for s in [stride] + [1] * (blocks - 1):
            shapes += [(planes, in_planes, 3, 3), (planes, planes, 3, 3)]
            if s != 1 or in_planes != planes:
                shapes.append((planes, in_planes, 1, 1))
            in_planes = planes
    return shapes + [(num_classes, 512, 1, 1)]


def getsubnet_kept(k: float, n: int) -> int:
    """GetSubnet (RST utils/conv_type.py, RBRN code/arch/conv_type.py): j = int((1 - k) *
    scores.numel()) lowest |scores| set to 0, the rest to 1."""
    j = int((1 - k) * n)
    return n - j


def rbrn_budget_shares(counts: list[int], keep: float, p: float) -> list[Fraction]:
    """RBRN's per-layer keep ratios (RBRN code/arch/net_utils.py set_model_prune_rate; the
    paper's n ** p weighting), written as a budget split in exact rationals, not as the seed's
    loop is written: the smallest layer first, each layer takes its n ** p share of the budget
    not yet spent (at most all of its weights); the first share is of keep * N, what the
    following ones split is int(keep * N) less the whole weights already taken (the seed's
    float64 code truncates there). Exact arithmetic: the seed's float rounding can move a
    layer by one weight where r * n is a whole number, never more."""
    p = Fraction(p).limit_denominator(1000)  # 0.1 -> 1/10: n ** p stays a float below
    total = sum(counts)
    order = sorted(range(len(counts)), key=lambda i: counts[i])  # stable: ties in module order
    left = Fraction(keep).limit_denominator(10**6) * total
    ratios: dict[int, Fraction] = {}
    for pos, i in enumerate(order):
        weight = Fraction(counts[i] ** float(p))
        rest = sum(Fraction(counts[j] ** float(p)) for j in order[pos:])
        ratios[i] = min(Fraction(1), left * weight / rest / counts[i])
        spent = math.floor(ratios[i] * counts[i])
        left = (math.floor(left) if pos == 0 else left) - spent
    return [ratios[i] for i in range(len(counts))]


def seed_network(preset: str) -> list[tuple[tuple, int]]:
    """(shape, kept) of every masked layer the seed's code builds for the preset's setting."""
    if preset.startswith("rst"):
        # RST: --prune-rate 0.05 for every layer (utils/net_utils.py set_model_prune_rate).
        # rst-preactresnet18: RST has no PreActResNet18 in its code; its convs (kuangliu's
        # PreActResNet18, the one the README names) have the same shapes as cResNet18's.
        shapes = seed_cresnet_shapes([2, 2, 2, 2])
        rates = [0.05] * len(shapes)
    else:  # RBRN cResNet34, --prune-rate 0.01 --pr-scale 0.1 (best_settings_rn34_cifar10_bn.sh)
        shapes = seed_cresnet_shapes([3, 4, 6, 3])
        rates = rbrn_budget_shares([math.prod(s) for s in shapes], 0.01, 0.1)
    return [(s, getsubnet_kept(r, math.prod(s))) for s, r in zip(shapes, rates)]


def truncation_slack(preset: str, layer: int) -> int:
    """1 where the seed's float walk may keep one weight more than the exact split: the RBRN
    layer whose exact ratio r makes (1 - r) n a whole number (int() of a float just below it
    drops one more weight); 0 everywhere else (and always for RST's one ratio)."""
    if not preset.startswith("rbrn"):
        return 0
    shapes = seed_cresnet_shapes([3, 4, 6, 3])
    rates = rbrn_budget_shares([math.prod(s) for s in shapes], 0.01, 0.1)
    return int(rates[layer] < 1 and ((1 - rates[layer]) * math.prod(shapes[layer])).denominator == 1)


def test_rbrn_allocation_gives_the_counts_the_seeds_code_wrote():
    """Anchor: RBRN's own code built ResNet18_001_p1 at --prune-rate 0.1 --pr-scale 0.1 and
    wrote each layer's ratio and GetSubnet's kept count (expected.pt, tests/upstream.py). The
    budget split above gives those counts; the workbook's allocation gives those very doubles;
    a misreading of the rule (c solved once, not again after each layer) does not."""
    expected = torch.load(seed_folder("rbrn-resnet18_001_p1") / "expected.pt", weights_only=True)
    meta, layers = expected["meta"], expected["layers"]
    sizes = [d["numel"] for d in layers]
    seed_kept = [d["kept"] for d in layers]
    assert len(sizes) == 21 and sum(seed_kept) == 11_255 and seed_kept[0] == 162  # stem whole
    derived = rbrn_budget_shares(sizes, meta["prune_rate"], meta["pr_scale"])
    assert [getsubnet_kept(r, n) for r, n in zip(derived, sizes)] == seed_kept
    assert masking.rbrn_keep_ratios(sizes, meta["prune_rate"], meta["pr_scale"]) == \
        [d["prune_rate"] for d in layers]
    # the rule broken: c = keep * N / sum(n ** p) for every layer, capped at 1
    c = meta["prune_rate"] * sum(sizes) / sum(n ** meta["pr_scale"] for n in sizes)
    solved_once = [getsubnet_kept(min(1.0, c * n ** (meta["pr_scale"] - 1)), n) for n in sizes]
    assert solved_once != seed_kept


def test_seed_networks_have_the_seeds_sizes():
    """Totals of the derivation above on the two papers' networks: RST keeps 5 % of each of
    cResNet18's 21 layers; RBRN's cResNet34 (37 layers) keeps its stem whole and 1 % of all
    its weights overall. The exact budget split can end one weight below the seed's float64
    walk (a layer whose r * n is a whole number): the layer test below allows that one."""
    rbrn = seed_network("rbrn-resnet34-cifar10")
    assert len(rbrn) == 37 and sum(math.prod(s) for s, _ in rbrn) == 21_265_088
    assert rbrn[0] == ((64, 3, 3, 3), 1728)
    budget = int(0.01 * 21_265_088)  # what set_model_prune_rate splits
    assert budget <= sum(k for _, k in rbrn) <= budget + len(rbrn)  # GetSubnet rounds up
    rst = seed_network("rst-resnet18-cifar10")
    assert len(rst) == 21 and sum(math.prod(s) for s, _ in rst) == 11_164_352
    assert sum(k for _, k in rst) == sum(math.ceil(Fraction(5, 100) * math.prod(s)) for s, _ in rst)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_builds_the_seeds_network_layer_by_layer(preset):
    described = describe_model(load_config(preset))
    expected = seed_network(preset.stem)
    layers = described["layers"]
    assert len(layers) == len(expected)
    for i, (layer, (shape, kept)) in enumerate(zip(layers, expected)):
        got = tuple(layer["shape"]) + (1,) * (4 - len(layer["shape"]))  # our fc is a Linear
        assert (got, layer["weights"]) == (shape, math.prod(shape)), layer["name"]
        # exact, but where the exact budget split puts (1 - r) n on a whole number: there the
        # seed's float64 walk can truncate one lower, keeping one weight more (and only there)
        assert layer["kept"] - kept in (0, truncation_slack(preset.stem, i)), layer["name"]
    assert described["total_weights"] == sum(math.prod(s) for s, _ in expected)


@pytest.mark.parametrize("name", ["rst-resnet18-cifar10", "rbrn-resnet34-cifar10"])
def test_the_real_network_keeps_what_the_description_says(name):
    """describe_model builds on the meta device; a real build (what a run trains, here at a
    smaller width) keeps exactly as many weights per layer, in its actual masks."""
    cfg = load_config(PRESET_DIR / f"{name}.yaml").replace(width=0.125)
    model = build_model(run_model_config(cfg, dataset_shape("cifar10")))
    real = {n: int(m.sum()) for n, m in masking.weight_masks(model).items()}
    assert real == {d["name"]: d["kept"] for d in describe_model(cfg)["layers"]}


def test_rst_lr_drops_at_epochs_80_and_120_and_is_held_through_each_epoch():
    """RST main.py calls utils/schedulers.py cifar_piecewise once per epoch (iteration=None):
    lr for epoch < 80, x0.1 until 120, x0.01 after, whatever the number of epochs."""
    for preset in ("rst-resnet18-cifar10", "rst-resnet18-cifar10-fast"):
        for epochs in (160, 200):
            cfg = load_config(PRESET_DIR / f"{preset}.yaml", {"epochs": epochs})
            for e in (0, 79, 80, 119, 120, epochs - 1):
                seed = 1.0 if e < 80 else 0.1 if e < 120 else 0.01
                assert [lr_factor(cfg, e + f) for f in (0, 0.5, 0.999)] == pytest.approx([seed] * 3)


def test_rbrn_cosine_lr_is_stepped_once_per_epoch():
    """RBRN code/util/schedulers.py cosine_lr, one stage, no warm-up: epoch e (0-based) trains
    at 0.5 * (1 + cos(pi * e / epochs)) * lr for all its batches."""
    for preset, epochs in (("rbrn-resnet34-cifar10", 400), ("rbrn-resnet34-cifar10-fast", 100)):
        cfg = load_config(PRESET_DIR / f"{preset}.yaml")
        for e in (0, 1, epochs // 2, epochs - 1):
            seed = 0.5 * (1 + math.cos(math.pi * e / epochs))
            assert [lr_factor(cfg, e + f) for f in (0, 0.5, 0.999)] == pytest.approx([seed] * 3)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_normalizes_as_its_seed(preset):
    # RST data/cifar.py Normalize; RBRN code/util/model_parser.py cifar10_normalize
    seed = ({"mean": [0.491, 0.482, 0.447], "std": [0.247, 0.243, 0.262]} if preset.stem.startswith("rst")
            else {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]})
    network = describe_model(load_config(preset))["network"]
    assert {"mean": network["mean"], "std": network["std"]} == seed


def test_model_command_prints_the_network(capsys):
    preset = str(PRESET_DIR / "rbrn-resnet34-cifar10.yaml")
    assert cli.main(["model", "-p", preset, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"config", "layers", "total_weights", "total_kept"}
    assert out["config"]["keep_ratio"] == 0.01 and out["config"]["width"] == 1.0
    assert out["layers"][0] == {"name": "body.conv1", "shape": [64, 3, 3, 3], "weights": 1728,
                                "kept": 1728, "keep_ratio": 1.0}
    assert out["total_weights"] == sum(math.prod(s) for s, _ in seed_network("rbrn-resnet34-cifar10"))
    assert out["total_kept"] == describe_model(load_config(preset))["total_kept"]  # the layer test's
    assert cli.main(["model", "-p", preset, "-p", "keep_ratio=0.05"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^keep_ratio\s+= 0\.05$", text, re.M) and "body.layers.15.conv2" in text
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert total.split()[1] == f"{out['total_weights']:,}"
    assert cli.main(["model", "-p", preset, "-p", "keep_rule=ceil"]) == 2
    assert "keep_rule='ceil' is invalid" in capsys.readouterr().err


def test_model_command_reads_an_imagefolders_classes(tmp_path):
    from PIL import Image
    for split in ("train", "test"):
        for c in ("cat", "dog", "emu"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(tmp_path / split / c / "0.png")
    cfg = RunConfig(dataset="imagefolder", data_dir=str(tmp_path), model="resnet18",
                    width=0.125).validate()
    described = describe_model(cfg)
    assert described["network"]["num_classes"] == 3 and described["network"]["image_size"] == 16
    assert described["layers"][-1]["shape"] == [3, 64]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_run_one_tiny_step_with_their_own_settings(preset, data):
    cfg = load_config(preset)
    # their own settings, on tiny data: MNIST digits padded to 32x32 RGB, 1 batch, 1 epoch
    from torch.utils.data import TensorDataset
    from rst_lib.data.datasets import DataBundle
    x, y = data.train.tensors[0][:16], data.train.tensors[1][:16]
    x = F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    tiny = DataBundle("tiny", TensorDataset(x, y), TensorDataset(x, y), 10, 3, 32,
                      (0.5,) * 3, (0.25,) * 3, [str(i) for i in range(10)])
    small = cfg.replace(epochs=1, batch_size=8, eval_steps=1, width=1 / 16, autoattack="none",
                        keep_ratio_stages=1, val_fraction=0.5)
    result = train(small, None, progress=False, data=tiny)
    assert math.isfinite(result.history[0]["train_loss"])
    assert masking.mask_summary(result.model)["kept"] > 0
    # the run's model normalizes with the seed's constants, not the data's (0.5, 0.25)
    assert result.model.normalize.std.flatten().tolist() == pytest.approx(
        describe_model(cfg)["network"]["std"])
