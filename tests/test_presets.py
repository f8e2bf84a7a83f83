"""The papers' presets follow the seeds' code (issue: faithful presets). Each expected
value below was read in the upstream file its preset line cites; a preset that drifts
from it fails here, and so does a setting without a citation."""
import math
import re
from pathlib import Path

import pytest
import torch.nn.functional as F
import yaml

from rst_lib import RunConfig, train
from rst_lib.masks import masking
from rst_lib.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = ROOT / "params" / "presets"
PRESETS = sorted(PRESET_DIR.glob("*.yaml"))

RST = dict(model="resnet18", keep_ratio=0.05, weight_init="signed_constant", scale_fan=False,
           score_init="kaiming_uniform", bn_affine=False, end_with_bn=False, dense_first=False,
           dense_last=False, batch_size=256, epochs=160, optimizer="sgd", lr=0.1, momentum=0.9,
           weight_decay=5e-4, lr_schedule="cifar_piecewise", train_attack="pgd", eps=8 / 255,
           alpha=2 / 255, steps=7, attack_train_mode=True, eval_steps=20, eval_alpha=2 / 255,
           eval_restarts=1, eval_early_stop=True, val_fraction=0.02, autoattack="standard")
RBRN = dict(model="resnet34", seed=1234, keep_ratio=0.01, adaptive_p=0.1,
            keep_ratio_schedule="staged", keep_ratio_stages=1, weight_init="binary",
            score_init="uniform", score_init_scale=0.01, score_fan_mode="none", bn_affine=False,
            end_with_bn=True, dense_first=False, dense_last=False, batch_size=256, epochs=400,
            optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine",
            train_attack="pgd", eps=8 / 255, alpha=2 / 255, steps=10, attack_train_mode=True,
            eval_steps=10, eval_alpha=2 / 255, eval_early_stop=False, val_fraction=0.02,
            autoattack="standard", autoattack_examples=10000)
EXPECTED = {
    "rst-resnet18-cifar10": RST,
    "rst-preactresnet18-cifar10": {**RST, "model": "preact_resnet18"},
    "rst-resnet18-cifar10-fast": {**{k: v for k, v in RST.items() if k != "steps"},
                                  "train_attack": "fgsm_rs", "alpha": 10 / 255},
    "rbrn-resnet34-cifar10": RBRN,
    "rbrn-resnet34-cifar10-fast": {**{k: v for k, v in RBRN.items() if k != "steps"},
                                   "epochs": 100, "train_attack": "fgsm_carried", "alpha": 4 / 255},
    "rbrn-resnet34-cifar10-trades": {**RBRN, "train_attack": "trades", "steps": 10,
                                     "alpha": 2 / 255, "trades_beta": 6.0,
                                     "attack_train_mode": False, "keep_ratio_schedule": "none"},
}
# A citation: an upstream file (path with a known suffix) or a README / paper, or "ours:".
CITATION = re.compile(r"#.*(\.py|\.yaml|\.sh|README|ours:)")


def test_every_preset_is_checked():
    assert sorted(p.stem for p in PRESETS) == sorted(EXPECTED)


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
